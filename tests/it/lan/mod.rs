//! A LAN in a box: network namespaces for the internet, a gateway that runs the
//! `portcullis` binary, and PCs behind it, with a test DNS server the proxy resolves names
//! with ([`crate::support::netns`], [`crate::support::dns`]).

mod dns;

//! Offline subcommands: the command line, `check`, `explain`, `passwd` and `report`.

pub mod cert;
pub mod check;
pub mod cli;
pub mod explain;
pub mod passwd;
pub mod report;
pub mod top;

//! Pure renderers of what people see: the error page, the proxy's own page, the status page,
//! the PAC file, and the small HTML helpers.
//! They build text from plain values; the proxy's data path sends it.

pub mod errorpage;
pub mod html;
pub mod pac;
pub mod status;
pub mod welcome;

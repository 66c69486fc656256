//! Pure renderers of what people see: the error page, the PAC file, the small HTML helpers.
//! They build text from plain values; the proxy's data path sends it.

pub mod errorpage;
pub mod html;
pub mod pac;
pub mod status;

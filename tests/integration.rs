//! Integration tests: one binary (it links OpenCV once), one module per area.

mod distributed;
mod hardening;
mod preview;
mod protocol;
mod run;
mod util;

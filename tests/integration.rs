//! Integration tests: one binary (it links OpenCV once), one module per area.

mod distributed;
mod protocol;
mod run;
mod util;

//! Integration tests: one binary (it links OpenCV once), one module per area.

mod admission;
mod catalogue;
mod clients;
mod distributed;
mod durable;
mod hardening;
mod jobs;
mod layers;
mod live;
mod logs;
mod media;
mod ops;
mod preview;
mod rabbit;
mod resume;
mod run;
mod segments;
mod split;
mod tiles;
mod tls;
mod util;
mod web;

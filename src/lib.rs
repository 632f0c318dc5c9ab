//! vpd: a video frame processing daemon. One binary, several roles; one pipeline.
//!
//! - [`cli`]: the command line (clap); [`config`]: file + env + args → validated configs;
//!   [`docs`]: its completions and man pages.
//! - [`app`]: start-up written once: logging, runtime, signals.
//! - [`filters`]: the filter-chain language, the filters and the presets.
//! - [`media`]: decode, encode and mux through FFmpeg's libraries (the only libav user).
//! - [`pipeline`]: the job driver: dispatch, collect, reorder, write, all bounded.
//! - [`transport`]: the seam between the pipeline and the filter workers.
//! - [`protocol`]: frame tasks and results.
//! - [`metrics`]: per-job counters and latency histograms.
//! - [`progress`]: the only module that draws on the terminal.
//! - [`job`]: one file through the pipeline into another (run and server share it).
//! - [`broker`]: RabbitMQ (the only lapin user): topology, confirmed publishing, consumers.
//! - [`cancel`]: a cancellation signal blocking threads can select on; [`files`]: a file removed
//!   when its guard is dropped.
//! - [`net`]: listening sockets and server addresses; [`http`]: the one HTTP server (dashboard,
//!   `/metrics`, `/healthz`) every serving role uses; [`board`]: job views fed by events, for the
//!   server's and the preview's dashboards.
//! - [`batch`]: a batch's report, for run and client.
//! - [`store`]: the job store (SQLite): every job a server accepted and what became of it.
//! - [`service`]: systemd's readiness, watchdog and stopping notifications.
//! - Roles: [`run`], [`server`], [`worker`], [`client`], [`preview`].

#![warn(missing_docs)]
#![warn(clippy::too_many_lines)]

pub mod app;
pub mod batch;
pub mod board;
pub mod broker;
pub mod cancel;
pub mod cli;
pub mod client;
pub mod config;
pub mod docs;
pub mod files;
pub mod filters;
pub mod http;
pub mod job;
pub mod media;
pub mod metrics;
pub mod net;
pub mod pipeline;
pub mod preview;
pub mod progress;
pub mod protocol;
pub mod run;
pub mod server;
pub mod service;
pub mod split;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod worker;

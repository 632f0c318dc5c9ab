//! `vpd run`: one video through the pipeline in this process, with a pool of filter threads.

use crate::cancel::Stop;
use crate::config::RunConfig;
use crate::metrics::JobSummary;
use crate::pipeline::{JobError, JobOptions};
use crate::progress::ProgressView;
use crate::protocol::wire::TransportEncoding;
use crate::transport::JobContext;
use crate::transport::local::LocalTransport;

/// Processes `cfg.input` into `cfg.output` and reports what it did.
pub fn run(cfg: &RunConfig, stop: Stop) -> Result<JobSummary, JobError> {
    let opened =
        crate::job::open(&cfg.input, &cfg.output, &cfg.chain, &cfg.output_options, Some(&cfg.filter_env.face_cascade))?;
    let info = opened.info();
    let window = cfg.window.unwrap_or_else(|| JobOptions::default_window(cfg.threads, info.frame_bytes()));
    let job = JobContext {
        id: format!("run-{}", std::process::id()),
        chain: cfg.chain.clone(),
        stop,
        encoding: TransportEncoding::Raw,
    };
    let transport = LocalTransport::new(cfg.threads, cfg.filter_env.clone())?;
    let progress = ProgressView::new(info.frame_count, !cfg.quiet);
    let finished = opened.run(&job, &transport, window, &progress);
    progress.finish();
    finished.map(|f| f.summary)
}

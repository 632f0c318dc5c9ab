//! One video file through the pipeline into another: all of `vpd run`, and what the server
//! does with each upload.
//!
//! [`open`] does every check that can fail without decoding (output path, container and codec,
//! face cascade, input readable and non-empty, frame size); [`OpenedJob::run`] runs the
//! pipeline and moves the verified output into place.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::bail;

use crate::filters::{Chain, check_face_cascade};
use crate::metrics::{Buckets, JobSummary};
use crate::pipeline::{DEFAULT_STALL_TIMEOUT, JobOptions, JobReport, Observer, PipelineError, run_job};
use crate::protocol::wire::MAX_FRAME_PIXELS;
use crate::transport::{JobContext, Transport};
use crate::video::{Codec, VideoInfo, VideoSink, VideoSource, check_container, check_output_path};

/// A job whose input decodes and whose output is open.
pub struct OpenedJob {
    input: PathBuf,
    output: PathBuf,
    codec: Codec,
    source: VideoSource,
    sink: VideoSink,
    started: Instant,
}

/// Opens `input` and prepares `output`. `face_cascade` is checked when the chain needs it and
/// the filters run in this process.
pub fn open(
    input: &Path,
    output: &Path,
    chain: &Chain,
    codec: Codec,
    face_cascade: Option<&Path>,
) -> anyhow::Result<OpenedJob> {
    let started = Instant::now();
    // The file really written: the output itself, or what it links to.
    let target = check_output_path(input, output)?;
    check_container(output, codec)?;
    if let (true, Some(cascade)) = (chain.needs_faces(), face_cascade) {
        check_face_cascade(cascade)?;
    }
    let source = VideoSource::open(input)?;
    let info = source.info();
    if info.width as u64 * info.height as u64 > MAX_FRAME_PIXELS {
        bail!("{}: {}x{} frames are over the 8192x8192 limit", input.display(), info.width, info.height);
    }
    let sink = VideoSink::create(&target, codec, info.fps, info.width, info.height)?;
    Ok(OpenedJob { input: input.to_path_buf(), output: output.to_path_buf(), codec, source, sink, started })
}

impl OpenedJob {
    /// The input's size, rate and announced length.
    pub fn info(&self) -> VideoInfo {
        self.source.info()
    }

    /// Runs the pipeline through `transport`, then checks the output and moves it into place.
    pub fn run(
        mut self,
        job: &JobContext,
        transport: &dyn Transport,
        window: NonZeroUsize,
        observer: &dyn Observer,
    ) -> Result<Finished, PipelineError> {
        let info = self.source.info();
        let opts = JobOptions { window, total_hint: info.frame_count, stall_timeout: DEFAULT_STALL_TIMEOUT };
        let report = run_job(job, &mut self.source, &mut self.sink, transport, &opts, observer)?;
        self.sink.finish().map_err(anyhow::Error::from)?;
        let wall = self.started.elapsed().as_secs_f64();
        let summary = summarise(&self.input, &self.output, job, self.codec, &info, &report, wall);
        Ok(Finished { summary, latency: report.stats.latency.buckets() })
    }
}

/// A finished job's report.
#[derive(Debug, Clone)]
pub struct Finished {
    /// What the user sees.
    pub summary: JobSummary,
    /// Per-frame dispatch-to-result latencies, for the Prometheus histogram.
    pub latency: Buckets,
}

fn summarise(
    input: &Path,
    output: &Path,
    job: &JobContext,
    codec: Codec,
    info: &VideoInfo,
    report: &JobReport,
    wall_seconds: f64,
) -> JobSummary {
    let stats = &report.stats;
    JobSummary {
        input: input.display().to_string(),
        output: output.display().to_string(),
        filters: job.chain.to_string(),
        codec: codec.to_string(),
        // Encoders need even dimensions: FFmpeg drops an odd last row or column.
        width: (info.width & !1) as u32,
        height: (info.height & !1) as u32,
        video_fps: info.fps,
        frames: report.frames,
        failed_frames: stats.failed,
        retries: stats.retries,
        duplicates: stats.duplicates,
        wall_seconds,
        fps: report.frames as f64 / wall_seconds.max(f64::EPSILON),
        filter_latency_ms: stats.filter_latency.percentiles(),
        latency_ms: stats.latency.percentiles(),
        workers: stats.per_worker.iter().map(|(id, n)| (id.to_string(), *n)).collect(),
        wire_bytes_sent: report.wire.sent,
        wire_bytes_received: report.wire.received,
    }
}

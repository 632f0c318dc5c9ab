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
use crate::media::{MediaSink, MediaSource, OutputOptions, VideoInfo, check_output, check_output_path};
use crate::metrics::{Buckets, JobSummary};
use crate::pipeline::{DEFAULT_STALL_TIMEOUT, JobError, JobOptions, JobReport, Observer, run_job};
use crate::protocol::wire::MAX_FRAME_PIXELS;
use crate::transport::{JobContext, Transport};

/// A job whose input decodes and whose output is open.
pub struct OpenedJob {
    input: PathBuf,
    output: PathBuf,
    codec: String,
    source: MediaSource,
    sink: MediaSink,
    started: Instant,
}

/// Opens `input` and prepares `output`. `face_cascade` is checked when the chain needs it and
/// the filters run in this process.
pub fn open(
    input: &Path,
    output: &Path,
    chain: &Chain,
    options: &OutputOptions,
    face_cascade: Option<&Path>,
) -> anyhow::Result<OpenedJob> {
    let started = Instant::now();
    // The file really written: the output itself, or what it links to.
    let target = check_output_path(input, output)?;
    check_output(output, options)?;
    if let (true, Some(cascade)) = (chain.needs_faces(), face_cascade) {
        check_face_cascade(cascade)?;
    }
    let source = MediaSource::open(input)?;
    let info = source.info();
    if info.width as u64 * info.height as u64 > MAX_FRAME_PIXELS {
        bail!("{}: {}x{} frames are over the 8192x8192 limit", input.display(), info.width, info.height);
    }
    let sink = MediaSink::create(&source, &target, options)?;
    let codec = options.codec.to_string();
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
    ) -> Result<Finished, JobError> {
        let info = self.source.info();
        let opts = JobOptions { window, total_hint: info.frame_count, stall_timeout: DEFAULT_STALL_TIMEOUT };
        let report = run_job(job, &mut self.source, &mut self.sink, transport, &opts, observer)?;
        let size = self.sink.size();
        self.sink.finish().map_err(anyhow::Error::from)?;
        let wall = self.started.elapsed().as_secs_f64();
        let summary = summarise(&self.input, &self.output, job, &self.codec, &info, size, &report, wall);
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

#[allow(clippy::too_many_arguments)]
fn summarise(
    input: &Path,
    output: &Path,
    job: &JobContext,
    codec: &str,
    info: &VideoInfo,
    (width, height): (u32, u32),
    report: &JobReport,
    wall_seconds: f64,
) -> JobSummary {
    let stats = &report.stats;
    JobSummary {
        input: input.display().to_string(),
        output: output.display().to_string(),
        filters: job.chain.to_string(),
        codec: codec.to_string(),
        // As encoded: a 4:2:0 output of an odd-sized input loses its last row or column.
        width,
        height,
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

/// Gives the memory a finished job freed back to the system (`malloc_trim`): pages of free
/// heap, in every arena. The allocator is tuned not to trim on its own while frames come and go
/// (see `app::tune_process`), so a long-running server calls this after each job; without it,
/// encoder and decoder buffers of past jobs kept the server's RSS growing (BENCHMARKS.md,
/// "Server memory across jobs"). A few milliseconds once per job.
pub fn release_freed_memory() {
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe { libc::malloc_trim(0) };
}

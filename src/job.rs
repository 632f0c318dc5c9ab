//! One video file through the pipeline into another: all of `vpd run`, and what the server
//! does with each upload.
//!
//! [`open`] does every check that can fail without decoding (output path, container and codec,
//! face cascade, input readable and non-empty, frame size); [`OpenedJob::run`] runs the
//! pipeline and moves the verified output into place.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::bail;

use crate::filters::{Chain, FilterEnv};
use crate::media::clips::{ClipSettings, ClipSink, Marks, OnClip};
use crate::media::{
    MediaSink, MediaSource, OnCommit, OutputOptions, SegmentRecord, SegmentSink, VideoInfo, check_output,
    check_output_path, frames_per_segment, join_segments,
};
use crate::metrics::{Buckets, JobSummary};
use crate::pipeline::live::{LiveFeed, LiveSink};
use crate::pipeline::trigger::{RecordOn, Trigger};
use crate::pipeline::{DEFAULT_STALL_TIMEOUT, JobError, JobOptions, JobReport, Observer, Start, run_job};
use crate::protocol::wire::MAX_FRAME_PIXELS;
use crate::transport::{JobContext, Transport};

/// How a job's output is written.
pub enum Writing {
    /// Straight into the output: one encoder, one pass (pipes, and jobs nobody resumes).
    Direct,
    /// In committed segments in `dir` (which exists), then joined: a job that a crash does not
    /// lose. `committed` are the segments already there, from a run that stopped; each new one
    /// goes to `on_commit` (the job's record) as it is committed.
    Segmented {
        /// Where the segments are.
        dir: PathBuf,
        /// Frames per segment (see [`crate::media::frames_per_segment`]); the same on every resume.
        seconds: f64,
        /// Segments already committed, in order from 0.
        committed: Vec<SegmentRecord>,
        /// Told of each segment committed.
        on_commit: OnCommit,
    },
}

// One per job, moved once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Output {
    Direct(MediaSink),
    /// A live job's clips, recorded while its trigger fires.
    Clips(ClipSink),
    Segmented {
        sink: SegmentSink,
        dir: PathBuf,
        /// Committed so far, this run's included.
        segments: Arc<Mutex<Vec<SegmentRecord>>>,
        /// The last segment was committed before: every frame is in a segment already.
        complete: bool,
    },
}

/// A job whose input decodes and whose output is open.
pub struct OpenedJob {
    input: PathBuf,
    output: PathBuf,
    target: PathBuf,
    options: OutputOptions,
    source: MediaSource,
    sink: Output,
    /// Frames already committed by an earlier run, and the frame before the first new one.
    start: Start,
    /// The frames' size after the filters, when they change it.
    size: Option<(u32, u32)>,
    started: Instant,
    live: Option<Live>,
    /// Marks the frames of a live job with `--record-on`.
    trigger: Option<Trigger>,
}

/// Opens `input` and prepares `output`. `face_cascade` is checked when the chain needs it and
/// the filters run in this process.
pub fn open(
    input: &Path,
    output: &Path,
    chain: &Chain,
    options: &OutputOptions,
    face_cascade: Option<&Path>,
    writing: Writing,
    mut live: Option<Live>,
) -> anyhow::Result<OpenedJob> {
    let started = Instant::now();
    // The file really written: the output itself, or what it links to.
    let target = check_output_path(input, output)?;
    check_output(output, options)?;
    if let Some(cascade) = face_cascade {
        chain.check_env(&FilterEnv { face_cascade: cascade.to_path_buf() })?;
    }
    let mut source = match &live {
        Some(_) => MediaSource::open_live(input, Arc::default())?,
        None => MediaSource::open(input)?,
    };
    let info = source.info();
    if u64::from(info.width) * u64::from(info.height) > MAX_FRAME_PIXELS {
        bail!("{}: {}x{} frames are over the 8192x8192 limit", input.display(), info.width, info.height);
    }
    // A chain that resizes frames makes the encoder's size.
    let out = chain.output_size(info.width, info.height);
    let size = (out != (info.width, info.height)).then_some(out);
    let mut trigger = None;
    let record = live.as_mut().and_then(|l| l.record.take());
    let (sink, start) = match writing {
        Writing::Direct if record.is_some() => {
            let Record { on, pre_roll, post_roll, filter_env, on_clip } = record.expect("a recording");
            let marks = Arc::new(Marks::default());
            trigger = Some(Trigger::new(on, &filter_env, marks.clone())?);
            let settings = ClipSettings { pattern: output.to_path_buf(), pre_roll, post_roll };
            (Output::Clips(ClipSink::create(&source, settings, options, size, marks, on_clip)?), Start::default())
        }
        Writing::Direct => (Output::Direct(MediaSink::create(&source, &target, options, size)?), Start::default()),
        Writing::Segmented { dir, seconds, committed, mut on_commit } => {
            let per_segment = frames_per_segment(info.fps, seconds);
            let frames: u64 = committed.iter().map(|r| r.frames).sum();
            let complete = committed.last().is_some_and(|r| r.last);
            let consistent = committed.iter().enumerate().all(|(i, r)| {
                r.number == i as u64
                    && r.first_frame == i as u64 * per_segment
                    && (r.frames == per_segment || i + 1 == committed.len())
                    && (!r.last || i + 1 == committed.len())
            });
            if !consistent {
                bail!(
                    "{}: the committed segments do not fit this job's segment length; start it afresh",
                    dir.display()
                );
            }
            let start = if complete {
                Start { index: frames, previous: None }
            } else {
                let last_pts = committed.last().and_then(|r| r.last_pts);
                let previous = source.skip_committed(frames, last_pts, chain.needs_previous())?;
                Start { index: frames, previous: previous.map(Arc::new) }
            };
            let segments = Arc::new(Mutex::new(committed));
            let record = segments.clone();
            let on_commit: OnCommit = Box::new(move |r| {
                on_commit(r)?;
                record.lock().unwrap_or_else(|p| p.into_inner()).push(*r);
                Ok(())
            });
            std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
            let sink = SegmentSink::create(&source, &dir, &target, options, per_segment, frames, on_commit, size)?;
            (Output::Segmented { sink, dir, segments, complete }, start)
        }
    };
    Ok(OpenedJob {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        target,
        options: options.clone(),
        source,
        sink,
        start,
        size,
        started,
        live,
        trigger,
    })
}

/// A live job: read as it comes until `stop` (the user's Ctrl-C: the job then ends cleanly,
/// its output whole), frames dropped before dispatch when the filters fall behind.
pub struct Live {
    /// Ends the input, not the job: what is in flight is still written.
    pub stop: crate::cancel::Stop,
    /// What the job counts, for its views.
    pub stats: Arc<crate::pipeline::live::LiveStats>,
    /// How long a frame may wait for dispatch while a newer one is there.
    pub max_wait: std::time::Duration,
    /// Clips only while a detector fires, instead of one output (`--record-on`): the output
    /// path is then the clips' `strftime` pattern.
    pub record: Option<Record>,
}

/// What `--record-on` records.
pub struct Record {
    /// The detector.
    pub on: RecordOn,
    /// Kept before the detector first fires.
    pub pre_roll: std::time::Duration,
    /// Kept after it last fires.
    pub post_roll: std::time::Duration,
    /// What the detector needs (the face cascade).
    pub filter_env: FilterEnv,
    /// Told of each clip written.
    pub on_clip: OnClip,
}

impl OpenedJob {
    /// The input's size, rate and announced length.
    pub fn info(&self) -> VideoInfo {
        self.source.info()
    }

    /// Frames an earlier run already committed: where this one starts.
    pub fn resumed_at(&self) -> u64 {
        self.start.index
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
        let resumed = self.start.index;
        let opts = JobOptions {
            window,
            total_hint: info.frame_count.map(|n| n.saturating_sub(resumed)),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            start: self.start.clone(),
        };
        if let Some(live) = self.live.take() {
            let size = self.size.unwrap_or((info.width, info.height));
            let feed = LiveFeed::start(self.source, live.stop, live.stats.clone(), live.max_wait, self.trigger)?;
            let (report, size, clips) = match self.sink {
                Output::Direct(mut sink) => {
                    let report = run_live(job, feed, &mut sink, &live.stats, transport, &opts, observer)?;
                    let size = sink.size().unwrap_or(size);
                    sink.finish().map_err(anyhow::Error::from)?;
                    (report, size, None)
                }
                Output::Clips(mut sink) => {
                    let report = run_live(job, feed, &mut sink, &live.stats, transport, &opts, observer)?;
                    (report, size, Some(sink.finish()?))
                }
                Output::Segmented { .. } => return Err(anyhow::anyhow!("a live job writes directly").into()),
            };
            let wall = self.started.elapsed().as_secs_f64();
            let codec = self.options.codec.to_string();
            let mut summary = summarise(&self.input, &self.output, job, &codec, &info, size, &report, wall);
            summary.live = Some(crate::metrics::LiveSummary { clips, ..live.stats.summary() });
            return Ok(Finished { summary, latency: report.stats.latency.buckets() });
        }
        let (report, size) = match self.sink {
            Output::Clips(_) => return Err(anyhow::anyhow!("clips are of a live job").into()),
            Output::Direct(mut sink) => {
                let report = run_job(job, &mut self.source, &mut sink, transport, &opts, observer)?;
                let size = sink.size().unwrap_or(self.size.unwrap_or((info.width, info.height)));
                sink.finish().map_err(anyhow::Error::from)?;
                (report, size)
            }
            Output::Segmented { mut sink, dir, segments, complete } => {
                let report = if complete {
                    JobReport::default()
                } else {
                    run_job(job, &mut self.source, &mut sink, transport, &opts, observer)?
                };
                let size = sink.size();
                sink.finish()?;
                let segments = segments.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let joining = Instant::now();
                join_segments(&self.source, &dir, &segments, &self.target, &self.options, self.size)
                    .map_err(anyhow::Error::from)?;
                tracing::debug!(
                    segments = segments.len(),
                    ms = joining.elapsed().as_millis() as u64,
                    "segments joined"
                );
                (report, size)
            }
        };
        let wall = self.started.elapsed().as_secs_f64();
        let codec = self.options.codec.to_string();
        let mut summary = summarise(&self.input, &self.output, job, &codec, &info, size, &report, wall);
        if resumed > 0 {
            summary.frames += resumed;
            summary.resumed_at_frame = Some(resumed);
        }
        Ok(Finished { summary, latency: report.stats.latency.buckets() })
    }
}

/// Runs a live job's pipeline from `feed` into `sink`, measuring each frame's latency, and
/// stops the feed's reader.
fn run_live(
    job: &JobContext,
    mut feed: LiveFeed,
    sink: &mut dyn crate::media::FrameSink,
    stats: &Arc<crate::pipeline::live::LiveStats>,
    transport: &dyn Transport,
    opts: &JobOptions,
    observer: &dyn Observer,
) -> Result<JobReport, JobError> {
    run_job(job, &mut feed, &mut LiveSink::new(sink, stats.clone()), transport, opts, observer)
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
pub(crate) fn summarise(
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
        resumed_at_frame: None,
        split: None,
        split_why: None,
        tiles: None,
        live: None,
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

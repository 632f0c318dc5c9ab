//! The job driver shared by `vpd run` and `vpd server`: decode → dispatch → [transport](crate::transport) →
//! collect → reorder → write.
//!
//! ```text
//!  source thread ──tasks──▶ Transport::serve ──results──▶ collector ──in order──▶ writer thread
//!        │                                                  ▲   (reorder buffer)        │
//!        └──── pending frames (index → source frame) ───────┘                           │
//!        ▲                                                                              │
//!        └──────────────────────────── one credit per written frame ◀───────────────────┘
//! ```
//!
//! Memory is bounded by the window: the source takes a credit before decoding each frame and
//! the writer returns it after writing one, so at most `window` frames are anywhere between
//! the two, whatever the length of the video or the order results come back in.
//!
//! The pipeline keeps each outstanding source frame (shared, not copied) so that a frame whose
//! filter failed is written as the original, and so that it can tell a first result from a
//! duplicate.

pub mod live;
pub mod reorder;
pub mod trigger;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use crossbeam_channel::{Receiver, Sender, bounded, select};
use opencv::core::Mat;
use tracing::{debug, info_span, warn};

use crate::cancel::Stop;
use crate::metrics::JobStats;
pub use crate::metrics::Progress;
use crate::protocol::task::{Frame, FrameOutcome, FrameResult, FrameTask};
use crate::transport::{JobContext, Transport, WireBytes};
use reorder::{Push, ReorderBuffer};

pub use crate::media::{FrameSink, FrameSource};

/// Told about the job as it runs.
pub trait Observer: Sync {
    /// Each time a result is collected, from the collector thread; must be quick.
    fn on_progress(&self, progress: &Progress);

    /// Each frame as it is written, in order, from the writer thread; must be quick (sample,
    /// don't copy every frame).
    fn on_frame(&self, _index: u64, _frame: &Mat) {}

    /// The last frame of a job that wrote every frame, after [`Observer::on_frame`] saw it.
    fn on_last_frame(&self, _index: u64, _frame: &Mat) {}

    /// A segment of `frames` frames, ending at frame `last`, committed in segment mode, with a
    /// small JPEG of its last frame (empty when there is none); from the job's checker thread.
    fn on_segment(&self, _last: u64, _frames: u64, _thumbnail: &[u8]) {}
}

/// An observer that ignores everything.
pub struct NoProgress;

impl Observer for NoProgress {
    fn on_progress(&self, _: &Progress) {}
}

/// How one job runs.
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// Most frames in flight between decoding and writing.
    pub window: NonZeroUsize,
    /// The frame count to report progress against, if known.
    pub total_hint: Option<u64>,
    /// How long frames may be outstanding with no result at all before the job fails: the
    /// safety net against a transport that lost a frame (it would otherwise wait forever).
    pub stall_timeout: Duration,
    /// Where a resumed job starts: the index of the source's first frame, and the frame before
    /// it (for `motion`). A fresh job starts at frame 0 with none.
    pub start: Start,
}

/// The first frame a job dispatches.
#[derive(Debug, Clone, Default)]
pub struct Start {
    /// Its index: frames before it are already written.
    pub index: u64,
    /// The source frame before it, when there is one and the chain needs it.
    pub previous: Option<Frame>,
}

/// Default for [`JobOptions::stall_timeout`]: far beyond any one frame's filter time.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Frames decoded ahead of what the transport has taken. Enough to ride out a slow keyframe;
/// few enough that a transport holding frames back (the broker's adaptive window) does not make
/// the source decode the whole window ahead of it: the window bounds frames out and waiting to
/// be written, this bounds frames waiting to go out.
const TASK_LOOKAHEAD: usize = 8;

/// Bytes of frames the default window may hold, so that 4K video with many workers stays in
/// memory bounds: each frame in the window is held at most twice (source and filtered).
const WINDOW_BYTES: usize = 512 << 20;

impl JobOptions {
    /// The default window for `threads` filter threads and frames of `frame_bytes`: enough
    /// frames to keep every thread busy while one slow frame holds up the writer, capped at
    /// 512 MB of frames.
    pub fn default_window(threads: NonZeroUsize, frame_bytes: usize) -> NonZeroUsize {
        let wanted = 2 * threads.get() + 4;
        let affordable = WINDOW_BYTES / frame_bytes.max(1).saturating_mul(2);
        NonZeroUsize::new(wanted.min(affordable).max(2)).expect("at least 2")
    }
}

/// What a finished job did.
#[derive(Debug, Clone, Default)]
pub struct JobReport {
    /// Frames written.
    pub frames: u64,
    /// Counters and latencies.
    pub stats: JobStats,
    /// What the transport moved.
    pub wire: WireBytes,
}

/// Why a job did not finish.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The job was stopped from outside (Ctrl-C, a client's cancel).
    #[error("cancelled")]
    Cancelled,
    /// A stage failed; the error says which and why.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Runs one job to the end and reports what it did.
///
/// The sink is not finished here: the caller decides what to do with a complete output
/// (rename it into place, stream it to a client).
pub fn run_job(
    job: &JobContext,
    source: &mut dyn FrameSource,
    sink: &mut dyn FrameSink,
    transport: &dyn Transport,
    opts: &JobOptions,
    observer: &dyn Observer,
) -> Result<JobReport, JobError> {
    let stop = &job.stop;
    let window = opts.window.get();
    let (credit_tx, credit_rx) = bounded::<()>(window);
    let (task_tx, task_rx) = bounded::<FrameTask>(window.min(TASK_LOOKAHEAD));
    let (result_tx, result_rx) = bounded::<FrameResult>(window);
    let (out_tx, out_rx) = bounded::<OutFrame>(window);
    let pending = Mutex::new(HashMap::with_capacity(window));
    let needs_previous = job.chain.needs_previous();

    // Every stage's log lines say which job they are about, whatever thread they come from.
    let span = info_span!("job", job = %job.id);
    let pending = &pending;
    let (dispatched, served, collected, written) = thread::scope(|s| {
        let spawn = |name: &str| thread::Builder::new().name(name.to_string());
        let source = spawn("vpd-source").spawn_scoped(s, {
            let span = span.clone();
            move || span.in_scope(|| dispatch(source, needs_previous, &opts.start, pending, credit_tx, task_tx, stop))
        });
        let transport = spawn("vpd-transport").spawn_scoped(s, {
            let span = span.clone();
            move || span.in_scope(|| transport.serve(job, task_rx, result_tx))
        });
        let collector = spawn("vpd-collector").spawn_scoped(s, {
            let span = span.clone();
            move || span.in_scope(|| collect(pending, result_rx, out_tx, opts, observer, stop))
        });
        let writer = spawn("vpd-writer").spawn_scoped(s, {
            let span = span.clone();
            move || span.in_scope(|| write(sink, out_rx, credit_rx, observer))
        });
        (join(source), join(transport), join(collector), join(writer))
    });

    match (dispatched, served, collected, written) {
        (Ok(dispatched), Ok(wire), Ok(stats), Ok(written)) if dispatched == written => {
            Ok(JobReport { frames: written, stats, wire })
        }
        (Ok(dispatched), Ok(_), Ok(_), Ok(written)) => {
            Err(JobError::Failed(anyhow!("wrote {written} of {dispatched} frames")))
        }
        // A cancelled job's stages fail in whatever way their peers vanishing makes them.
        _ if stop.is_stopped() => Err(JobError::Cancelled),
        // The writer first: when it fails, every other stage sees its peer vanish.
        (d, t, c, w) => Err(root_cause([w.err(), t.err(), d.err(), c.err()])),
    }
}

/// The first real failure among the stages' halts; echoes (`Stopped`) never win.
fn root_cause(halts: [Option<Halt>; 4]) -> JobError {
    let mut cancelled = false;
    for halt in halts.into_iter().flatten() {
        match halt {
            Halt::Failed(e) => return JobError::Failed(e),
            Halt::Cancelled => cancelled = true,
            Halt::Stopped => {}
        }
    }
    if cancelled { JobError::Cancelled } else { JobError::Failed(anyhow!("a pipeline stage stopped without an error")) }
}

/// Why a stage stopped early.
enum Halt {
    /// Its peer went away: an echo of another stage's halt.
    Stopped,
    /// The job was cancelled.
    Cancelled,
    /// It failed.
    Failed(anyhow::Error),
}

fn join<T, E: Into<Halt>>(handle: std::io::Result<thread::ScopedJoinHandle<'_, Result<T, E>>>) -> Result<T, Halt> {
    match handle {
        Ok(h) => match h.join() {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(Halt::Failed(anyhow!("a pipeline thread panicked"))),
        },
        Err(e) => Err(Halt::Failed(anyhow!(e).context("spawning a pipeline thread"))),
    }
}

impl From<anyhow::Error> for Halt {
    fn from(e: anyhow::Error) -> Self {
        Halt::Failed(e)
    }
}

/// A source frame awaiting its result.
struct Pending {
    frame: Frame,
    dispatched: Instant,
}

/// A frame on its way to the writer.
enum OutFrame {
    Filtered(Mat),
    /// The filter failed: the source frame goes out unchanged.
    Original(Frame),
}

impl OutFrame {
    fn as_mat(&self) -> &Mat {
        match self {
            OutFrame::Filtered(m) => m,
            OutFrame::Original(m) => m,
        }
    }
}

/// Decodes frames and hands them to the transport, one credit each. Returns the frame count.
fn dispatch(
    source: &mut dyn FrameSource,
    needs_previous: bool,
    start: &Start,
    pending: &Mutex<HashMap<u64, Pending>>,
    credits: Sender<()>,
    tasks: Sender<FrameTask>,
    stop: &Stop,
) -> Result<u64, Halt> {
    let mut previous: Option<Frame> = start.previous.clone();
    for index in start.index.. {
        if stop.is_stopped() {
            return Err(Halt::Cancelled);
        }
        select! {
            send(credits, ()) -> sent => sent.map_err(|_| Halt::Stopped)?,
            recv(stop.receiver()) -> _ => return Err(Halt::Cancelled),
        }
        let Some(mat) = source.next_frame()? else {
            debug!(frames = index, "the input ended");
            return Ok(index - start.index);
        };
        let frame = Arc::new(mat);
        // Registered before it is sent, so its result always finds it.
        pending
            .lock()
            .expect("pending lock")
            .insert(index, Pending { frame: frame.clone(), dispatched: Instant::now() });
        let previous = if needs_previous { previous.replace(frame.clone()) } else { None };
        tasks.send(FrameTask { index, frame, previous }).map_err(|_| Halt::Stopped)?;
    }
    unreachable!("a u64 frame counter does not run out")
}

/// Collects results, counts them, and releases frames to the writer in index order.
fn collect(
    pending: &Mutex<HashMap<u64, Pending>>,
    results: Receiver<FrameResult>,
    out: Sender<OutFrame>,
    opts: &JobOptions,
    observer: &dyn Observer,
    stop: &Stop,
) -> Result<JobStats, Halt> {
    let started = Instant::now();
    let mut stats = JobStats::default();
    let mut reorder = ReorderBuffer::starting_at(opts.start.index, opts.window.get());
    loop {
        let result = select! {
            recv(results) -> r => match r {
                Ok(r) => r,
                Err(_) => break,
            },
            recv(stop.receiver()) -> _ => return Err(Halt::Cancelled),
            default(opts.stall_timeout) => {
                let outstanding = pending.lock().expect("pending lock").len();
                if outstanding == 0 {
                    continue; // waiting on the source, not on the workers
                }
                return Err(Halt::Failed(anyhow!(
                    "no result from the workers for {} s with {outstanding} frames outstanding",
                    opts.stall_timeout.as_secs_f64()
                )));
            }
        };
        stats.retries += u64::from(result.retries);
        let Some(p) = pending.lock().expect("pending lock").remove(&result.index) else {
            // Its first result already came (a redelivery or re-dispatch), or it was never sent.
            stats.duplicates += 1;
            continue;
        };
        let failed = matches!(result.outcome, FrameOutcome::Failed(_));
        stats.record(&result.worker, result.filter_time, p.dispatched.elapsed(), failed);
        let frame = match result.outcome {
            FrameOutcome::Processed(m) => OutFrame::Filtered(m),
            FrameOutcome::Failed(reason) => {
                warn!(frame = result.index, worker = %result.worker, %reason, "filter failed; writing the original frame");
                OutFrame::Original(p.frame)
            }
        };
        match reorder.push(result.index, frame) {
            Push::Ready(frames) => {
                for f in frames {
                    out.send(f).map_err(|_| Halt::Stopped)?;
                }
            }
            Push::Held => {}
            // Pending admits each index once and credits keep it inside the window.
            Push::Duplicate | Push::Full(_) => {
                return Err(Halt::Failed(anyhow!("frame {} fell outside the reorder window", result.index)));
            }
        }
        let in_flight = pending.lock().expect("pending lock").len() as u64;
        observer.on_progress(&stats.progress(opts.total_hint, in_flight, started.elapsed()));
    }
    let lost = pending.lock().expect("pending lock").len();
    if lost > 0 || reorder.held() > 0 {
        return Err(Halt::Failed(anyhow!("{lost} frames never came back from the workers")));
    }
    Ok(stats)
}

/// Writes frames in the order they arrive (the collector's order) and returns their credits.
fn write(
    sink: &mut dyn FrameSink,
    frames: Receiver<OutFrame>,
    credits: Receiver<()>,
    observer: &dyn Observer,
) -> Result<u64, Halt> {
    let mut written = 0;
    let mut last = None;
    for frame in frames {
        sink.write(frame.as_mat())?;
        observer.on_frame(written, frame.as_mat());
        written += 1;
        // Kept (not copied) until the next one replaces it, for the observer's last look:
        // one frame beyond the window.
        last = Some(frame);
        // Returns one credit; fails only once the source has finished, which is fine.
        let _ = credits.recv();
    }
    if let Some(frame) = &last {
        observer.on_last_frame(written - 1, frame.as_mat());
    }
    debug!(frames = written, "every frame written");
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use opencv::core::{CV_8UC3, Scalar};
    use opencv::prelude::*;

    use super::*;
    use crate::filters::{FilterEnv, Processor};
    use crate::protocol::task::WorkerId;
    use crate::transport::execute;
    use crate::transport::local::LocalTransport;

    const WINDOW: usize = 6;

    /// Frame `i` is filled with the value `i`, so order and identity show in every pixel.
    fn frame(i: u64) -> Mat {
        Mat::new_rows_cols_with_default(8, 8, CV_8UC3, Scalar::all(i as f64)).unwrap()
    }

    fn value(m: &Mat) -> u64 {
        m.at_2d::<opencv::core::Vec3b>(0, 0).unwrap()[0] as u64
    }

    /// Yields `n` frames, optionally failing at one, and tracks how many are alive downstream.
    struct Source {
        next: u64,
        n: u64,
        fail_at: Option<u64>,
        decoded: Arc<AtomicU64>,
        written: Arc<AtomicU64>,
        max_in_flight: u64,
    }

    impl Source {
        fn new(n: u64, written: &Arc<AtomicU64>) -> Self {
            Source { next: 0, n, fail_at: None, decoded: Arc::default(), written: written.clone(), max_in_flight: 0 }
        }
    }

    impl FrameSource for Source {
        fn next_frame(&mut self) -> anyhow::Result<Option<Mat>> {
            if self.fail_at == Some(self.next) {
                anyhow::bail!("decoder exploded at {}", self.next);
            }
            if self.next == self.n {
                return Ok(None);
            }
            let in_flight = self.decoded.fetch_add(1, Ordering::SeqCst) + 1 - self.written.load(Ordering::SeqCst);
            self.max_in_flight = self.max_in_flight.max(in_flight);
            self.next += 1;
            Ok(Some(frame(self.next - 1)))
        }
    }

    #[derive(Default)]
    struct Sink {
        frames: Vec<Mat>,
        written: Arc<AtomicU64>,
        fail_at: Option<usize>,
    }

    impl FrameSink for Sink {
        fn write(&mut self, frame: &Mat) -> anyhow::Result<()> {
            if self.fail_at == Some(self.frames.len()) {
                anyhow::bail!("disk full");
            }
            self.frames.push(frame.try_clone()?);
            self.written.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// A transport that holds a window of tasks and answers them in reverse order, twice over,
    /// optionally failing one frame and losing another.
    struct Scrambler {
        fail: Option<u64>,
        lose: Option<u64>,
    }

    impl Transport for Scrambler {
        fn serve(
            &self,
            job: &JobContext,
            tasks: Receiver<FrameTask>,
            results: Sender<FrameResult>,
        ) -> anyhow::Result<WireBytes> {
            let mut processor = Processor::new(&job.chain, &FilterEnv::default())?;
            let worker = WorkerId::new("scrambler");
            let mut batch = Vec::new();
            let mut flush = |batch: &mut Vec<FrameTask>| -> bool {
                for task in batch.drain(..).rev() {
                    if Some(task.index) == self.lose {
                        continue;
                    }
                    for _ in 0..2 {
                        let (outcome, filter_time) = if Some(task.index) == self.fail {
                            (FrameOutcome::Failed("injected".into()), Duration::ZERO)
                        } else {
                            execute(&mut processor, &task.frame, task.previous.as_deref())
                        };
                        let r =
                            FrameResult { index: task.index, outcome, filter_time, worker: worker.clone(), retries: 1 };
                        if results.send(r).is_err() {
                            return false;
                        }
                    }
                }
                true
            };
            // Reverses whatever has queued up: a full window, or less when no task is waiting.
            loop {
                let task = match tasks.try_recv() {
                    Ok(task) => task,
                    Err(crossbeam_channel::TryRecvError::Empty) => {
                        if !flush(&mut batch) {
                            return Ok(WireBytes::default());
                        }
                        match tasks.recv() {
                            Ok(task) => task,
                            Err(_) => return Ok(WireBytes::default()),
                        }
                    }
                    Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                };
                batch.push(task);
                if batch.len() == WINDOW && !flush(&mut batch) {
                    return Ok(WireBytes::default());
                }
            }
            flush(&mut batch);
            Ok(WireBytes::default())
        }
    }

    fn job(chain: &str) -> JobContext {
        JobContext {
            id: "test".parse().unwrap(),
            chain: chain.parse().unwrap(),
            stop: Stop::never(),
            encoding: crate::protocol::wire::TransportEncoding::Raw,
        }
    }

    fn opts() -> JobOptions {
        JobOptions {
            window: NonZeroUsize::new(WINDOW).unwrap(),
            total_hint: None,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            start: Start::default(),
        }
    }

    /// Runs `n` identity-filtered frames through `transport`.
    fn run(
        n: u64,
        transport: &dyn Transport,
        tweak: impl FnOnce(&mut Source, &mut Sink),
    ) -> (Result<JobReport, JobError>, Source, Sink) {
        let mut sink = Sink::default();
        let mut source = Source::new(n, &sink.written);
        tweak(&mut source, &mut sink);
        let r = run_job(&job("blur:ksize=1"), &mut source, &mut sink, transport, &opts(), &NoProgress);
        (r, source, sink)
    }

    #[test]
    fn frames_come_out_in_order_despite_scrambled_duplicated_results() {
        let (report, source, sink) = run(50, &Scrambler { fail: None, lose: None }, |_, _| {});
        let report = report.unwrap();
        assert_eq!(report.frames, 50);
        assert_eq!(sink.frames.iter().map(value).collect::<Vec<_>>(), (0..50).collect::<Vec<_>>());
        assert_eq!(report.stats.duplicates, 50, "every second copy is dropped");
        assert_eq!(report.stats.retries, 100, "every result reported one retry, duplicates too");
        assert_eq!(report.stats.done, 50);
        assert!(source.max_in_flight <= WINDOW as u64, "{} frames in flight", source.max_in_flight);
    }

    #[test]
    fn local_pool_keeps_order_and_the_window() {
        let transport = LocalTransport::new(NonZeroUsize::new(4).unwrap(), FilterEnv::default()).unwrap();
        let (report, source, sink) = run(200, &transport, |_, _| {});
        assert_eq!(report.unwrap().stats.per_worker.values().sum::<u64>(), 200);
        assert_eq!(sink.frames.iter().map(value).collect::<Vec<_>>(), (0..200).collect::<Vec<_>>());
        assert!(source.max_in_flight <= WINDOW as u64, "{} frames in flight", source.max_in_flight);
    }

    #[test]
    fn a_failed_frame_is_written_as_the_original_and_counted() {
        // Edges would turn the flat frame black; the failed frame keeps its value.
        let mut sink = Sink::default();
        let mut source = Source::new(20, &sink.written);
        let transport = Scrambler { fail: Some(7), lose: None };
        let report = run_job(&job("edges"), &mut source, &mut sink, &transport, &opts(), &NoProgress).unwrap();
        assert_eq!(report.stats.failed, 1);
        let values: Vec<u64> = sink.frames.iter().map(value).collect();
        assert_eq!(values[7], 7, "the original frame");
        assert!(values.iter().enumerate().all(|(i, v)| i == 7 || *v == 0), "{values:?}");
    }

    #[test]
    fn a_frame_lost_at_the_end_is_an_error_not_a_short_video() {
        let (report, _, sink) = run(20, &Scrambler { fail: None, lose: Some(19) }, |_, _| {});
        let err = report.unwrap_err().to_string();
        assert_eq!(err, "1 frames never came back from the workers");
        assert_eq!(sink.frames.len(), 19);
    }

    #[test]
    fn a_frame_lost_mid_stream_fails_after_the_stall_timeout_instead_of_hanging() {
        let mut sink = Sink::default();
        let mut source = Source::new(100, &sink.written);
        let opts = JobOptions { stall_timeout: Duration::from_millis(200), ..opts() };
        let transport = Scrambler { fail: None, lose: Some(3) };
        let r = run_job(&job("blur:ksize=1"), &mut source, &mut sink, &transport, &opts, &NoProgress);
        let err = r.unwrap_err().to_string();
        assert!(err.starts_with("no result from the workers for 0.2 s with"), "{err}");
        assert_eq!(sink.frames.len(), 3, "frames 0-2 were written before the gap");
    }

    #[test]
    fn the_root_cause_is_reported() {
        let local = LocalTransport::new(NonZeroUsize::new(2).unwrap(), FilterEnv::default()).unwrap();
        let (report, _, _) = run(30, &local, |_, sink| sink.fail_at = Some(10));
        assert_eq!(report.unwrap_err().to_string(), "disk full");
        let (report, _, sink) = run(30, &local, |source, _| source.fail_at = Some(12));
        assert_eq!(report.unwrap_err().to_string(), "decoder exploded at 12");
        assert_eq!(sink.frames.len(), 12, "frames before the failure were still written in order");
    }

    #[test]
    fn a_stop_cancels_the_job() {
        let (mut trigger, stop) = Stop::new();
        trigger.fire();
        let local = LocalTransport::new(NonZeroUsize::new(2).unwrap(), FilterEnv::default()).unwrap();
        let mut sink = Sink::default();
        let mut source = Source::new(1000, &sink.written);
        let job = JobContext { stop, ..job("blur:ksize=1") };
        let r = run_job(&job, &mut source, &mut sink, &local, &opts(), &NoProgress);
        assert!(matches!(r, Err(JobError::Cancelled)), "{r:?}");
        assert!(source.next < 1000);
    }

    #[test]
    fn default_window_is_capped_by_memory() {
        let four = NonZeroUsize::new(4).unwrap();
        assert_eq!(JobOptions::default_window(four, 1280 * 720 * 3).get(), 12);
        // 4K frames: 512 MB / (2 x 24.9 MB) = 10.
        assert_eq!(JobOptions::default_window(NonZeroUsize::new(64).unwrap(), 3840 * 2160 * 3).get(), 10);
        assert_eq!(JobOptions::default_window(four, usize::MAX).get(), 2);
    }
}

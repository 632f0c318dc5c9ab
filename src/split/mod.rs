//! Segment mode: the server cuts the upload into segments of compressed packets, workers
//! decode, filter and encode them ([`work`]), and the server checks each encoded segment,
//! commits it and joins them without re-encoding.
//!
//! ```text
//!  cutter thread ──task bodies──▶ SegmentTransport (RabbitMQ) ──▶ workers
//!   │ side files (audio, …)              │ results, progress
//!   ▼                                    ▼
//!  seg-N.side                      checker thread ── check, commit (any order) ──▶ seg-N.vpdseg
//!                                        │ failed or given up
//!                                        ▼
//!                                  fallback thread: the segment frame by frame (frame tasks)
//! ```
//!
//! Segment *n* is frames `n·L … n·L+L−1`, the segments the job store commits in frame mode, so
//! a job can resume in either mode from what the other committed. A resume sends only the
//! segments not committed. Other streams are read once, by the cutter, into a side file per
//! segment, which the join reads after the segment's video. A task or result too large for one
//! message goes on a RabbitMQ stream of its own, and its message says where.

pub mod work;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use crossbeam_channel::{Receiver, Sender, bounded};
use opencv::core::Mat;
use tracing::{info, warn};

use crate::cancel::Stop;
use crate::filters::Chain;
use crate::job::Finished;
use crate::media::index::VideoIndex;
use crate::media::packets::{Cutter, SegmentEncoder, SegmentFrame, SegmentInput, decode_each};
use crate::media::{
    FrameSink, FrameSource, MediaSource, OnCommit, OutputOptions, SegmentRecord, check_output, check_output_path,
    check_segment_bytes, commit_segment_bytes, frames_per_segment, join_segments,
};
use crate::metrics::{JobStats, WorkerId};
use crate::pipeline::{DEFAULT_STALL_TIMEOUT, JobError, JobOptions, JobReport, NoProgress, Observer, Start, run_job};
use crate::protocol::job::JobId;
use crate::protocol::segment::{
    self, AUTO_MIN_SEGMENTS, SEGMENT_VERSION, SegmentOutcome, SegmentProgress, SegmentResult, SegmentTask, Split,
};
use crate::protocol::wire::MAX_FRAME_PIXELS;
use crate::transport::{JobContext, SegmentLink, SegmentReply, Transport, Verdict, WireBytes};

/// Default for `--max-message`: the largest segment task put on the broker. RabbitMQ 4 refuses
/// messages over 16 MiB by default; half that leaves room for a broker set lower.
pub const DEFAULT_MAX_MESSAGE: usize = 8 << 20;
/// Segment task bodies held on the way to the broker, past those outstanding.
const LOOKAHEAD: usize = 2;
/// Bytes of segment tasks a job keeps outstanding at most (each is kept until its result comes).
const WINDOW_BYTES: usize = 512 << 20;
/// Before any segment has come back, how long one may go unheard of.
const FIRST_DEADLINE: Duration = Duration::from_secs(120);
/// The shortest deadline, however quick segments are.
const MIN_DEADLINE: Duration = Duration::from_secs(10);

/// How a job will run, and why.
pub enum Plan {
    /// Frame by frame.
    Frames {
        /// Why not segments.
        why: String,
    },
    /// In segments of packets.
    Segments {
        /// The video's packets.
        index: VideoIndex,
        /// Why segments.
        why: String,
    },
}

impl Plan {
    /// The split it stands for.
    pub fn split(&self) -> Split {
        match self {
            Plan::Frames { .. } => Split::Frames,
            Plan::Segments { .. } => Split::Segments,
        }
    }

    /// Why.
    pub fn why(&self) -> &str {
        match self {
            Plan::Frames { why } | Plan::Segments { why, .. } => why,
        }
    }
}

/// Decides how the job on `input` runs when `asked`, at `per_segment` frames a segment;
/// `remote` says whether its filters run on workers (segments need them). Segment mode needs a
/// video whose packets can be cut ([`VideoIndex::unusable`]); `auto` also wants at least
/// [`AUTO_MIN_SEGMENTS`] segments.
pub fn plan(asked: Split, input: &Path, per_segment: u64, remote: bool) -> Plan {
    if asked == Split::Frames {
        return Plan::Frames { why: "--split frames".into() };
    }
    if !remote {
        return Plan::Frames { why: "the filters run in the server's own threads, not on workers".into() };
    }
    let index = match VideoIndex::build(input) {
        Ok(index) => index,
        Err(e) => return Plan::Frames { why: format!("the video's packets cannot be read: {e}") },
    };
    if let Some(why) = index.unusable() {
        return Plan::Frames { why: format!("the video cannot be cut as packets: {why}") };
    }
    let segments = index.frames().div_ceil(per_segment.max(1));
    if asked == Split::Auto && segments < AUTO_MIN_SEGMENTS {
        return Plan::Frames {
            why: format!("auto: {segments} segment(s) of {per_segment} frames, fewer than {AUTO_MIN_SEGMENTS}"),
        };
    }
    let why = match asked {
        Split::Segments => format!("--split segments: {segments} segments of {per_segment} frames"),
        _ => format!("auto: {segments} segments of {per_segment} frames"),
    };
    Plan::Segments { index, why }
}

/// A job opened for segment mode.
pub struct SegmentJob {
    parts: Parts,
    output: PathBuf,
    source: MediaSource,
    on_commit: OnCommit,
    why: String,
    started: Instant,
}

/// What every thread of a segment job reads.
struct Parts {
    input: PathBuf,
    target: PathBuf,
    options: OutputOptions,
    container: String,
    index: VideoIndex,
    fps: f64,
    per_segment: u64,
    size: Option<(u32, u32)>,
    dir: PathBuf,
    committed: BTreeMap<u64, SegmentRecord>,
    max_message: usize,
}

/// Where a segment job's segments go and what it was told before.
pub struct SegmentPlace {
    /// The job's segment directory.
    pub dir: PathBuf,
    /// Seconds of video per segment.
    pub seconds: f64,
    /// Segments committed before, in any order.
    pub committed: Vec<SegmentRecord>,
    /// Told of each segment committed.
    pub on_commit: OnCommit,
}

/// Opens `input` for segment mode with `index` (from [`plan`], whose reason is `why`), to be
/// written to `output` in `container` with `options`; task and result bodies over `max_message`
/// bytes go by reference (see [`crate::transport::SegmentLink::max_message`]).
#[allow(clippy::too_many_arguments)]
pub fn open(
    input: &Path,
    output: &Path,
    chain: &Chain,
    options: &OutputOptions,
    container: &str,
    (index, why): (VideoIndex, String),
    place: SegmentPlace,
    max_message: usize,
) -> anyhow::Result<SegmentJob> {
    let started = Instant::now();
    let target = check_output_path(input, output)?;
    check_output(output, options)?;
    let source = MediaSource::open(input)?;
    let info = source.info();
    if u64::from(info.width) * u64::from(info.height) > MAX_FRAME_PIXELS {
        bail!("{}: {}x{} frames are over the 8192x8192 limit", input.display(), info.width, info.height);
    }
    let out = chain.output_size(info.width, info.height);
    let size = (out != (info.width, info.height)).then_some(out);
    let per_segment = frames_per_segment(info.fps, place.seconds);
    let frames = index.frames();
    let count = frames.div_ceil(per_segment);
    let mut committed = BTreeMap::new();
    for r in place.committed {
        let expected = per_segment.min(frames.saturating_sub(r.number * per_segment));
        if r.number >= count || r.first_frame != r.number * per_segment || r.frames != expected {
            bail!(
                "{}: the committed segments do not fit this job's segment length; start it afresh",
                place.dir.display()
            );
        }
        committed.insert(r.number, r);
    }
    std::fs::create_dir_all(&place.dir).with_context(|| format!("cannot create {}", place.dir.display()))?;
    let parts = Parts {
        input: input.to_path_buf(),
        target,
        options: options.clone(),
        container: container.to_string(),
        index,
        fps: info.fps,
        per_segment,
        size,
        dir: place.dir,
        committed,
        max_message,
    };
    Ok(SegmentJob { parts, output: output.to_path_buf(), source, on_commit: place.on_commit, why, started })
}

/// What the threads of a segment job share.
struct Shared<'a> {
    job: &'a Parts,
    ctx: &'a JobContext,
    count: u64,
    state: Mutex<State>,
    /// Signalled when a pending segment goes: the cutter may have room for the next.
    freed: std::sync::Condvar,
    observer: &'a dyn Observer,
    /// Frames this run works on.
    remaining: u64,
}

/// The job's moving parts, under one lock.
struct State {
    /// Segments dispatched and not committed.
    pending: HashMap<u64, Pending>,
    /// Committed, this run's included.
    committed: BTreeMap<u64, SegmentRecord>,
    on_commit: OnCommit,
    stats: JobStats,
    /// The longest time from a segment's dispatch to its result.
    longest: Duration,
    fallback: WireBytes,
}

impl State {
    fn empty() -> Self {
        State {
            pending: HashMap::new(),
            committed: BTreeMap::new(),
            on_commit: Box::new(|_| Ok(())),
            stats: JobStats::default(),
            longest: Duration::ZERO,
            fallback: WireBytes::default(),
        }
    }
}

/// A segment sent and not yet committed.
struct Pending {
    input: SegmentInput,
    /// Its task's size.
    bytes: usize,
    dispatched: Instant,
    /// Frames its worker says it has done.
    done: u64,
}

impl SegmentJob {
    /// Frames committed before this run.
    pub fn resumed_at(&self) -> u64 {
        self.parts.committed.values().map(|r| r.frames).sum()
    }

    /// The input's size, rate and length.
    pub fn info(&self) -> crate::media::VideoInfo {
        crate::media::VideoInfo { frame_count: Some(self.parts.index.frames()), ..self.source.info() }
    }

    /// Runs the job's missing segments through `transport`'s segment side (and a segment that
    /// fails there through its frame side), then joins them into the output.
    pub fn run(
        mut self,
        ctx: &JobContext,
        transport: &dyn Transport,
        observer: &dyn Observer,
    ) -> Result<Finished, JobError> {
        let segments = transport.segments().ok_or_else(|| anyhow!("this server's transport cannot carry segments"))?;
        let count = self.parts.index.frames().div_ceil(self.parts.per_segment);
        let resumed = self.resumed_at();
        if resumed > 0 {
            info!(
                segments = self.parts.committed.len(),
                frames = resumed,
                "resuming: sending only the missing segments"
            );
        }
        let on_commit = std::mem::replace(&mut self.on_commit, Box::new(|_| Ok(())));
        let state = State { committed: self.parts.committed.clone(), on_commit, ..State::empty() };
        let shared = Shared {
            job: &self.parts,
            ctx,
            count,
            state: Mutex::new(state),
            freed: std::sync::Condvar::new(),
            observer,
            remaining: self.parts.index.frames() - resumed,
        };
        let (handle, stop) = Stop::new();
        let handle = Mutex::new(handle);
        let fire = || handle.lock().unwrap_or_else(|p| p.into_inner()).fire();
        let local = JobContext { stop, ..ctx.clone() };
        let (task_tx, task_rx) = tokio::sync::mpsc::channel::<(u64, Vec<u8>)>(LOOKAHEAD);
        let (reply_tx, reply_rx) = bounded::<SegmentReply>(16);
        let (verdict_tx, verdict_rx) = tokio::sync::mpsc::unbounded_channel::<Verdict>();
        // Bounded: segments waiting for the fallback are not counted as pending.
        let (fallback_tx, fallback_rx) = bounded::<SegmentInput>(2);
        let (ended_tx, ended_rx) = bounded::<()>(0);
        let redispatch_after = || shared.deadline();
        let span = tracing::Span::current();
        let (shared, local, span) = (&shared, &local, &span);
        let (cut, served, checked, fell_back) = std::thread::scope(|s| {
            // The job's own stop, fired by its cancel or by a failing stage: every thread of it
            // then ends.
            let watcher = s.spawn(|| {
                crossbeam_channel::select! {
                    recv(ctx.stop.receiver()) -> _ => fire(),
                    recv(ended_rx) -> _ => {}
                }
            });
            let cut_fallback = fallback_tx.clone();
            let cut = s.spawn(move || span.in_scope(|| shared.cut(local, task_tx, &cut_fallback)));
            let link = SegmentLink {
                tasks: task_rx,
                replies: reply_tx,
                verdicts: verdict_rx,
                redispatch_after: &redispatch_after,
                result_limit: self.max_result(),
                window: (WINDOW_BYTES / self.parts.max_message.max(1)).max(2),
                max_message: self.parts.max_message,
            };
            let served = s.spawn(move || span.in_scope(|| segments.serve_segments(local, link)));
            let checked = s.spawn(move || span.in_scope(|| shared.check(reply_rx, verdict_tx, fallback_tx)));
            let fell_back = s.spawn(move || span.in_scope(|| shared.fallback(local, transport, fallback_rx)));
            fn join<T>(h: std::thread::ScopedJoinHandle<'_, anyhow::Result<T>>) -> anyhow::Result<T> {
                h.join().unwrap_or_else(|_| Err(anyhow!("a segment thread panicked")))
            }
            // A stage that fails stops the others.
            let cut = join(cut);
            if cut.is_err() {
                fire();
            }
            let checked = join(checked);
            if checked.is_err() {
                fire();
            }
            let served = join(served);
            let fell_back = join(fell_back);
            drop(ended_tx);
            let _ = watcher.join();
            (cut, served, checked, fell_back)
        });
        if ctx.stop.is_stopped() {
            return Err(JobError::Cancelled);
        }
        let wire = served?;
        cut?;
        checked?;
        fell_back?;
        let state = std::mem::replace(&mut *shared.lock(), State::empty());
        self.join(ctx, state, wire, (resumed, count))
    }

    /// Joins the committed segments into the output, once every one is there; the summary.
    fn join(
        &self,
        ctx: &JobContext,
        state: State,
        wire: WireBytes,
        (resumed, count): (u64, u64),
    ) -> Result<Finished, JobError> {
        let records: Vec<SegmentRecord> = state.committed.values().copied().collect();
        if records.len() as u64 != count || records.iter().enumerate().any(|(i, r)| r.number != i as u64) {
            return Err(JobError::Failed(anyhow!(
                "{} of {count} segments never came back from the workers",
                count - records.len() as u64
            )));
        }
        let joining = Instant::now();
        join_segments(
            &self.source,
            &self.parts.dir,
            &records,
            &self.parts.target,
            &self.parts.options,
            self.parts.size,
        )
        .map_err(anyhow::Error::from)?;
        tracing::debug!(segments = records.len(), ms = joining.elapsed().as_millis() as u64, "segments joined");
        let frames = records.iter().map(|r| r.frames).sum::<u64>() - resumed;
        let wire =
            WireBytes { sent: wire.sent + state.fallback.sent, received: wire.received + state.fallback.received };
        let report = JobReport { frames, stats: state.stats, wire };
        let info = self.source.info();
        let size = self.parts.size.unwrap_or((info.width, info.height));
        let codec = self.parts.options.codec.to_string();
        let wall = self.started.elapsed().as_secs_f64();
        let mut summary =
            crate::job::summarise(&self.parts.input, &self.output, ctx, &codec, &info, size, &report, wall);
        if resumed > 0 {
            summary.frames += resumed;
            summary.resumed_at_frame = Some(resumed);
        }
        summary.split = Some(Split::Segments.to_string());
        summary.split_why = Some(self.why.clone());
        Ok(Finished { summary, latency: report.stats.latency.buckets() })
    }

    /// The largest result body worth reading: every frame raw, with room for headers.
    fn max_result(&self) -> usize {
        let info = self.source.info();
        let (w, h) = self.parts.size.unwrap_or((info.width, info.height));
        let raw = (u64::from(w) * u64::from(h) * 3).saturating_mul(self.parts.per_segment) + (4 << 20);
        usize::try_from(raw).unwrap_or(usize::MAX).min(1 << 30)
    }
}

impl Shared<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long a segment may go unheard of: three times the slowest segment so far.
    fn deadline(&self) -> Duration {
        let longest = self.lock().longest;
        if longest.is_zero() { FIRST_DEADLINE } else { (longest * 3).clamp(MIN_DEADLINE, Duration::from_secs(3600)) }
    }

    /// Cuts the input, sends each missing segment on, and writes the side files.
    fn cut(
        &self,
        ctx: &JobContext,
        tasks: tokio::sync::mpsc::Sender<(u64, Vec<u8>)>,
        fallback: &Sender<SegmentInput>,
    ) -> anyhow::Result<()> {
        let job = self.job;
        let fps = job.fps;
        let chain = &ctx.chain;
        let mut cutter = Cutter::open(&job.input, job.index.clone(), job.per_segment, chain.needs_previous(), fps)?
            .with_side_files(&job.dir);
        while let Some(input) = cutter.next_segment()? {
            if ctx.stop.is_stopped() {
                return Ok(());
            }
            let number = input.number;
            if job.committed.contains_key(&number) {
                continue;
            }
            let task = SegmentTask {
                version: SEGMENT_VERSION,
                job: ctx.id.to_string(),
                chain: chain.clone(),
                output: job.options.clone(),
                container: job.container.clone(),
                size: job.size,
                max_message: job.max_message as u64,
                input,
            };
            let body = segment::encode(&task);
            let pending = Pending { input: task.input, bytes: body.len(), dispatched: Instant::now(), done: 0 };
            if body.len() > segment::MAX_TASK_BYTES {
                warn!(
                    segment = number,
                    mib = format!("{:.1}", body.len() as f64 / (1 << 20) as f64),
                    "the segment is over what a worker reads; it goes frame by frame"
                );
                fallback.send(pending.input).map_err(|_| anyhow!("the fallback stopped"))?;
                continue;
            }
            // Pending segments are kept whole (for the fallback): at most WINDOW_BYTES of them.
            let mut state = self.lock();
            while !state.pending.is_empty()
                && state.pending.values().map(|p| p.bytes).sum::<usize>() + pending.bytes > WINDOW_BYTES
            {
                if ctx.stop.is_stopped() {
                    return Ok(());
                }
                state = self.freed.wait_timeout(state, Duration::from_millis(200)).unwrap_or_else(|p| p.into_inner()).0;
            }
            state.pending.insert(number, pending);
            drop(state);
            if tasks.blocking_send((number, body)).is_err() {
                return Ok(()); // the session ended; it or the job's stop says why
            }
        }
        drop(tasks);
        cutter.finish()?;
        Ok(())
    }

    /// Reads replies: progress goes to the observer; a good result is committed; a failed or
    /// given-up segment goes to the fallback.
    fn check(
        &self,
        replies: Receiver<SegmentReply>,
        verdicts: tokio::sync::mpsc::UnboundedSender<Verdict>,
        fallback: Sender<SegmentInput>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        for reply in replies {
            match reply {
                SegmentReply::Progress(number, body) => {
                    if let Ok(p) = segment::decode::<SegmentProgress>(&body, 4096)
                        && p.job == self.ctx.id.as_str()
                        && p.number == number
                        && let Some(pending) = self.lock().pending.get_mut(&number)
                    {
                        pending.done = p.done.min(pending.input.frames.len() as u64);
                    }
                }
                SegmentReply::GaveUp(number) => {
                    let gone = self.lock().pending.remove(&number);
                    self.freed.notify_all();
                    if let Some(p) = gone {
                        warn!(segment = number, "no worker finished the segment; doing it frame by frame");
                        fallback.send(p.input).map_err(|_| anyhow!("the fallback stopped"))?;
                    }
                }
                SegmentReply::Result(number, body) => {
                    let verdict = self.on_result(number, &body, &fallback)?;
                    let _ = verdicts.send(verdict);
                }
            }
            self.report(started);
        }
        Ok(())
    }

    /// Tells the observer where the job stands, with the frames workers are into.
    fn report(&self, started: Instant) {
        let state = self.lock();
        let partial: u64 = state.pending.values().map(|p| p.done).sum();
        let in_flight: u64 = state.pending.values().map(|p| p.input.frames.len() as u64).sum::<u64>() - partial;
        let mut p = state.stats.progress(Some(self.remaining), in_flight, started.elapsed());
        p.done += partial;
        drop(state);
        self.observer.on_progress(&p);
    }

    /// Checks and commits one result; the verdict for the transport.
    fn on_result(&self, number: u64, body: &[u8], fallback: &Sender<SegmentInput>) -> anyhow::Result<Verdict> {
        let result = match segment::decode::<SegmentResult>(body, usize::MAX) {
            Ok(r) if r.job == self.ctx.id.as_str() && r.number == number => r,
            Ok(_) => {
                warn!(segment = number, "a result for another segment under this one's id");
                return Ok(Verdict::Bad(number));
            }
            Err(e) => {
                warn!(segment = number, error = %e, "an unreadable segment result; sending the segment again");
                return Ok(Verdict::Bad(number));
            }
        };
        let mut state = self.lock();
        state.stats.retries += u64::from(result.retries);
        let Some(pending) = state.pending.get(&number) else {
            state.stats.duplicates += 1;
            return Ok(Verdict::Settled(number));
        };
        let (file, frames, filter_us, thumbnail) = match result.outcome {
            SegmentOutcome::Encoded { file, frames, filter_us, thumbnail } => (file, frames, filter_us, thumbnail),
            SegmentOutcome::Failed(reason) => {
                warn!(segment = number, worker = %result.worker, %reason, "the segment failed on a worker; doing it frame by frame");
                let p = state.pending.remove(&number).expect("looked up above");
                drop(state);
                self.freed.notify_all();
                fallback.send(p.input).map_err(|_| anyhow!("the fallback stopped"))?;
                return Ok(Verdict::Settled(number));
            }
        };
        let (expected, latency) = (pending.input.frames.clone(), pending.dispatched.elapsed());
        // The file is parsed without the lock: progress and the cutter do not wait for it.
        drop(state);
        let checked = match check_segment_bytes(&file, &expected) {
            Ok(_) if frames != expected.len() as u64 => Err("a wrong frame count".to_string()),
            other => other.map(|_| ()),
        };
        if let Err(why) = checked {
            warn!(segment = number, worker = %result.worker, %why, "a bad segment; sending it again");
            return Ok(Verdict::Bad(number));
        }
        let first_frame = self.commit(number, &file, &expected)?;
        let mut state = self.lock();
        state.longest = state.longest.max(latency);
        let worker = WorkerId::new(result.worker);
        let per_frame = Duration::from_micros(filter_us / frames.max(1));
        for _ in 0..frames {
            state.stats.record(&worker, per_frame, latency, false);
        }
        drop(state);
        self.observer.on_segment((first_frame + frames).saturating_sub(1), frames, &thumbnail);
        Ok(Verdict::Settled(number))
    }

    /// Commits segment `number`, checked, whose frames have timestamps `frames`: its file in
    /// place, its record in the job's, no longer pending. Returns its first frame's index.
    fn commit(&self, number: u64, file: &[u8], frames: &[i64]) -> anyhow::Result<u64> {
        let bytes = commit_segment_bytes(&self.job.dir, number, file)?;
        let first_frame = number * self.job.per_segment;
        let record = SegmentRecord {
            number,
            first_frame,
            frames: frames.len() as u64,
            last_pts: frames.last().copied(),
            bytes,
            last: number + 1 == self.count,
        };
        let mut state = self.lock();
        (state.on_commit)(&record)?;
        state.pending.remove(&number);
        state.committed.insert(number, record);
        drop(state);
        self.freed.notify_all();
        Ok(first_frame)
    }

    /// Does each segment it is given frame by frame through the transport's frame side, where a
    /// frame that fails alone is written as it was, and commits it.
    fn fallback(
        &self,
        ctx: &JobContext,
        transport: &dyn Transport,
        inputs: Receiver<SegmentInput>,
    ) -> anyhow::Result<()> {
        for input in inputs {
            if ctx.stop.is_stopped() {
                return Ok(());
            }
            let number = input.number;
            let (file, report) = self.frame_by_frame(ctx, transport, &input)?;
            check_segment_bytes(&file, &input.frames)
                .map_err(|why| anyhow!("segment {number} frame by frame: {why}"))?;
            self.commit(number, &file, &input.frames)?;
            let failed = report.stats.failed;
            let mut state = self.lock();
            state.stats.merge(report.stats);
            state.fallback.sent += report.wire.sent;
            state.fallback.received += report.wire.received;
            drop(state);
            info!(segment = number, failed, "segment done frame by frame");
        }
        Ok(())
    }

    /// Segment `input` through frame tasks, as a job of its own (`JOB-sN`, so that its replies
    /// have their own queue), encoded here.
    fn frame_by_frame(
        &self,
        ctx: &JobContext,
        transport: &dyn Transport,
        input: &SegmentInput,
    ) -> anyhow::Result<(Vec<u8>, JobReport)> {
        let job = self.job;
        let id: JobId = format!("{}-s{}", ctx.id, input.number).parse().map_err(|e: String| anyhow!(e))?;
        let sub = JobContext { id, ..ctx.clone() };
        let shown = job.target.clone();
        let mut sink = EncoderSink(Some(SegmentEncoder::open(input, &shown, &job.options, job.size)?));
        let (frame_tx, frame_rx) = bounded::<SegmentFrame>(4);
        std::thread::scope(|s| {
            let decoder = s.spawn({
                let shown = &shown;
                move || decode_each(input, shown, |f| frame_tx.send(f).map_err(|_| anyhow!("stopped")))
            });
            let mut source = ChannelSource { frames: frame_rx, peeked: None };
            let previous = source.previous();
            let opts = JobOptions {
                window: NonZeroUsize::new(8).expect("8 > 0"),
                total_hint: Some(input.frames.len() as u64),
                stall_timeout: DEFAULT_STALL_TIMEOUT,
                start: Start { index: input.number * job.per_segment, previous: previous.map(std::sync::Arc::new) },
            };
            let report = run_job(&sub, &mut source, &mut sink, transport, &opts, &NoProgress);
            drop(source);
            let decoded = decoder.join().unwrap_or_else(|_| Err(anyhow!("the segment decoder panicked")));
            let report = report.map_err(|e| anyhow!("segment {} frame by frame: {e:#}", input.number))?;
            decoded?;
            let file = sink.0.take().expect("finished once").finish()?;
            Ok((file, report))
        })
    }
}

/// The frames of a segment from its decoder thread.
struct ChannelSource {
    frames: Receiver<SegmentFrame>,
    peeked: Option<Mat>,
}

impl ChannelSource {
    /// The frame before the segment's first, where the decoder gives one first.
    fn previous(&mut self) -> Option<Mat> {
        match self.frames.recv().ok()? {
            SegmentFrame::Previous(m) => Some(m),
            SegmentFrame::Frame(_, m) => {
                self.peeked = Some(m);
                None
            }
        }
    }
}

impl FrameSource for ChannelSource {
    fn next_frame(&mut self) -> anyhow::Result<Option<Mat>> {
        if let Some(m) = self.peeked.take() {
            return Ok(Some(m));
        }
        Ok(match self.frames.recv() {
            Ok(SegmentFrame::Frame(_, m)) => Some(m),
            Ok(SegmentFrame::Previous(_)) => bail!("a segment's previous frame came after its first"),
            Err(_) => None,
        })
    }
}

/// A segment's encoder as the pipeline's sink.
struct EncoderSink(Option<SegmentEncoder>);

impl FrameSink for EncoderSink {
    fn write(&mut self, frame: &Mat) -> anyhow::Result<()> {
        self.0.as_mut().ok_or_else(|| anyhow!("the segment is finished"))?.write(frame)?;
        Ok(())
    }
}

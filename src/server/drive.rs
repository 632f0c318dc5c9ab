//! A job's driver: waits for a job slot, opens the upload with the segments the store records
//! as committed (none at first), runs the pipeline, and records each segment as it commits.
//! A pause stops the pipeline (nothing in flight, the slot given back) and a resume opens it
//! again from its committed segments, like a restarted server does for every job that was
//! queued, running or paused when the last one stopped. A shutdown stops drivers without
//! recording an end: the next start resumes them.

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, warn};

use super::jobs::{End, LiveJob, Status};
use super::observer::JobObserver;
use super::refusal::Scrub;
use super::shared::Shared;
use crate::cancel::Stop;
use crate::filters::tiles::Tiles;
use crate::job::{Finished, OpenedJob, Writing};
use crate::media::live::pipe_url;
use crate::media::relay::RELAY_FORMAT;
use crate::media::{OutputOptions, SegmentRecord, VideoInfo, frames_per_segment, segment_path};
use crate::pipeline::live::LiveStats;
use crate::pipeline::{JobError, Observer, Progress};
use crate::protocol::event::JobEvent;
use crate::protocol::job::{JobId, JobSpec, JobState};
use crate::protocol::message::ErrorCode;
use crate::protocol::segment::Split;
use crate::split::{self, Plan, SegmentJob, SegmentPlace};
use crate::transport::tiled::tiling;
use crate::transport::{JobContext, Transport};

/// Starts driving the job `spec`, whose upload is in place; `paused` holds it until it
/// is resumed. Returns it.
pub(super) fn launch(shared: &Arc<Shared>, id: JobId, spec: JobSpec, paused: bool) -> Arc<LiveJob> {
    start(shared, id, spec, paused, None)
}

/// Starts driving the live job `spec`, whose stream comes and goes through `relay`.
pub(super) fn launch_live(shared: &Arc<Shared>, id: JobId, spec: JobSpec, relay: Relay) -> Arc<LiveJob> {
    start(shared, id, spec, false, Some(relay))
}

fn start(shared: &Arc<Shared>, id: JobId, spec: JobSpec, paused: bool, relay: Option<Relay>) -> Arc<LiveJob> {
    let state = if paused { JobState::Paused } else { JobState::Queued };
    let status = Status { state, video: None, progress: Progress::default(), end: None };
    let job = Arc::new(LiveJob {
        client: spec.client.clone(),
        status: watch::Sender::new(status),
        cancel: CancellationToken::new(),
        pause: watch::Sender::new(paused),
        streaming: relay.is_some(),
    });
    let span = tracing::info_span!("drive", job = %id);
    let driven = Driven { id: id.clone(), spec, relay: std::sync::Mutex::new(relay) };
    let driver = drive(shared.clone(), job.clone(), driven).instrument(span);
    shared.jobs.start(&id, job.clone(), driver);
    job
}

/// A live job's two pipes, which its connection feeds and drains (see
/// [`crate::media::relay`]), and its counts.
pub(super) struct Relay {
    /// The read end of the pipe its client's stream is written into.
    pub(super) input: OwnedFd,
    /// The write end of the pipe its result is read from. Closed once the job's output is
    /// (the job ended, or never opened): its connection then has the whole result.
    pub(super) output: OwnedFd,
    /// What the live feed counts: drops, input losses, latency.
    pub(super) stats: Arc<LiveStats>,
    /// How long a frame may wait for dispatch while a newer one is there.
    pub(super) max_wait: Duration,
}

/// Drives one job to its end (or to the server's shutdown), then records how it ended.
pub(super) async fn drive(shared: Arc<Shared>, job: Arc<LiveJob>, driven: Driven) {
    let end = drive_to_end(&shared, &job, &driven).await;
    // A relay never opened (a job cancelled while queued) ends its connection's stream here.
    let Driven { id, spec, relay } = driven;
    drop(relay);
    // What its charts showed, kept with its record so that history draws them again.
    let charts = shared.board.charts(id.as_str());
    let recorded = {
        let (end, id) = (end.clone(), id.clone());
        shared
            .off(move |s| {
                if let (Some(charts), false) = (&charts, matches!(end, End::Interrupted)) {
                    s.store.set_charts(&id, charts)?;
                }
                match &end {
                    End::Done(summary) => {
                        let result = s.jobs.result_of(&id, &spec.container);
                        let output_bytes = std::fs::metadata(result).map_or(0, |m| m.len());
                        s.store.finished(&id, summary, output_bytes)?;
                        let _ = std::fs::remove_dir_all(s.jobs.segments_of(&id));
                        s.store.drop_segments(&id)
                    }
                    End::Failed(_, message) => s.store.transition(&id, JobState::Failed, Some(message)),
                    End::Cancelled => s.store.transition(&id, JobState::Cancelled, None),
                    End::Interrupted => Ok(()),
                }
            })
            .await
    };
    if let Err(e) = recorded {
        warn!(error = %format!("{e:#}"), "cannot record the job's end in the job store");
    }
    // The record first, then the live entry: a connection that finds no live job finds its end
    // in the store.
    job.status.send_modify(|s| s.end = Some(end));
    shared.jobs.forget(&id);
    let _ = shared
        .off(|s| {
            s.jobs.expire(&s.store);
            Ok(())
        })
        .await;
}

/// The driver's loop: wait for a slot (or a resume), run, and again after a pause.
pub(super) async fn drive_to_end(shared: &Arc<Shared>, job: &LiveJob, driven: &Driven) -> End {
    let id = &driven.id;
    let shutdown = shared.shutdown.clone();
    let mut pause = job.pause.subscribe();
    let pause = &mut pause;
    loop {
        // Paused: no slot, nothing in flight, until resumed or cancelled.
        if *pause.borrow_and_update() {
            set_state(shared, job, id, JobState::Paused).await;
            tokio::select! {
                _ = until(pause, false) => {}
                _ = job.cancel.cancelled() => return cancelled(shared, id).await,
                _ = shutdown.cancelled() => return End::Interrupted,
            }
        }
        set_state(shared, job, id, JobState::Queued).await;
        shared.publish(JobEvent::Queued { job: id.clone(), filters: driven.spec.chain.to_string() }).await;
        let slot = tokio::select! {
            slot = shared.job_slots.acquire() => match slot {
                Ok(slot) => slot,
                Err(_) => return End::Interrupted,
            },
            _ = until(pause, true) => continue,
            _ = job.cancel.cancelled() => return cancelled(shared, id).await,
            _ = shutdown.cancelled() => return End::Interrupted,
        };
        set_state(shared, job, id, JobState::Running).await;
        let outcome = run_once(shared, job, driven, pause).await;
        drop(slot);
        match outcome {
            Ok(finished) => return finished,
            Err(Stopped::Paused) => {
                info!("paused: frames after the last committed segment are done again on resume");
                continue;
            }
            Err(Stopped::Cancelled) if shutdown.is_cancelled() => return End::Interrupted,
            Err(Stopped::Cancelled) => return cancelled(shared, id).await,
        }
    }
}

/// A cancelled job's end, announced: workers drop its remaining tasks, dashboards show it.
pub(super) async fn cancelled(shared: &Shared, id: &JobId) -> End {
    shared.publish(JobEvent::Cancelled { job: id.clone() }).await;
    End::Cancelled
}

/// Returns once the pause flag is `value`.
pub(super) async fn until(pause: &mut watch::Receiver<bool>, value: bool) {
    let _ = pause.wait_for(|p| *p == value).await;
}

/// Moves the job to `state`, in its status and in the store.
pub(super) async fn set_state(shared: &Arc<Shared>, job: &LiveJob, id: &JobId, state: JobState) {
    job.status.send_if_modified(|s| {
        let changed = s.state != state;
        s.state = state;
        changed
    });
    let id = id.clone();
    let recorded = shared
        .off(move |s| {
            // A resumed job's record may already say so (running when the server died).
            if s.store.get(&id)?.map(|r| r.state) != Some(state) {
                s.store.transition(&id, state, None)?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = recorded {
        warn!(error = %format!("{e:#}"), "cannot record a state in the job store");
    }
}

/// Why a run stopped early.
pub(super) enum Stopped {
    Paused,
    Cancelled,
}

/// The job a driver runs: its id and spec, and what the server made of them.
pub(super) struct Driven {
    /// Its id.
    pub(super) id: JobId,
    /// What it is.
    pub(super) spec: JobSpec,
    /// A live job's pipes, until its run takes them.
    pub(super) relay: std::sync::Mutex<Option<Relay>>,
}

/// Opens the job from its committed segments and runs it until it ends or is paused.
pub(super) async fn run_once(
    shared: &Arc<Shared>,
    job: &LiveJob,
    driven: &Driven,
    pause: &mut watch::Receiver<bool>,
) -> Result<End, Stopped> {
    let Driven { id, spec, .. } = driven;
    let jobs = &shared.jobs;
    // A live job reads and writes its connection's pipes, held until its run ends.
    let relay = driven.relay.lock().unwrap_or_else(|p| p.into_inner()).take();
    if spec.live.is_some() && relay.is_none() {
        return Ok(End::Failed(ErrorCode::Internal, "a live job's stream runs once".into()));
    }
    let (input, result) = match &relay {
        Some(r) => (pipe_url(r.input.as_raw_fd()), pipe_url(r.output.as_raw_fd())),
        None => (jobs.input_of(id, &spec.input_name), jobs.result_of(id, &spec.container)),
    };
    let scrub = Scrub::new(jobs.dir(), &input, &spec.input_name, &result);
    let live = relay.as_ref().map(|r| crate::job::Live {
        stop: Stop::never(),
        stats: r.stats.clone(),
        max_wait: r.max_wait,
        record: None,
    });
    let opened = match open(shared, driven, (&input, &result), live).await {
        Ok(opened) => opened,
        Err((code, e)) => return Ok(End::Failed(code, scrub.text(&format!("{e:#}")))),
    };
    let info = opened.info();
    let resumed = opened.resumed_at();
    if resumed > 0 {
        info!(frame = resumed, "resuming after the committed segments");
    }
    job.status.send_modify(|s| {
        s.video = Some(info);
        s.progress = Progress { done: resumed, total: info.frame_count, ..Progress::default() };
    });
    // Events and metrics count the frames this process works on: what remains.
    let remaining = VideoInfo { frame_count: info.frame_count.map(|n| n.saturating_sub(resumed)), ..info };
    let filters = spec.chain.to_string();
    shared.publish(JobEvent::Started { job: id.clone(), filters, video: remaining }).await;
    let stats = relay.as_ref().map(|r| r.stats.clone());
    let run = Run { shared, job, id, resumed, total: info.frame_count, live: stats };
    let (outcome, paused, progress, thumbnails) = run.follow(opened, spec, pause).await;
    let mut thumbnails = thumbnails;
    let Finished { mut summary, latency } = match outcome {
        Ok(Ok(finished)) => finished,
        Ok(Err(JobError::Cancelled)) if paused && !job.cancel.is_cancelled() && !shared.shutdown.is_cancelled() => {
            // Nothing of it is in flight any more: the dashboards say so.
            let mut p = progress;
            p.in_flight = 0;
            shared.publish(JobEvent::Progress { job: id.clone(), progress: p.clone() }).await;
            shared.publish(JobEvent::Paused { job: id.clone() }).await;
            job.status.send_modify(|s| s.progress = run.whole(p));
            return Err(Stopped::Paused);
        }
        Ok(Err(JobError::Cancelled)) => return Err(Stopped::Cancelled),
        Ok(Err(JobError::Failed(e))) => {
            let message = scrub.text(&format!("{e:#}"));
            shared.publish(JobEvent::Failed { job: id.clone(), error: message.clone() }).await;
            // A truncation shows only once the input is decoded to its end: still the input's fault.
            let input =
                e.chain().any(|c| c.downcast_ref::<crate::media::MediaError>().is_some_and(|m| m.is_bad_input()));
            return Ok(End::Failed(if input { ErrorCode::BadInput } else { ErrorCode::JobFailed }, message));
        }
        Err(e) => return Ok(End::Failed(ErrorCode::Internal, scrub.text(&e.to_string()))),
    };
    // The record names the client's file, never the server's paths.
    summary.input = spec.input_name.clone();
    summary.output = result.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    while let Ok((index, jpeg)) = thumbnails.try_recv() {
        shared.publish(JobEvent::Frame { job: id.clone(), index, jpeg }).await;
    }
    let mut last = summary.progress();
    last.done = last.done.saturating_sub(resumed);
    last.total = remaining.frame_count;
    shared.publish(JobEvent::Progress { job: id.clone(), progress: last }).await;
    shared.publish(JobEvent::Done { job: id.clone(), summary: Box::new(summary.clone()), latency }).await;
    job.status.send_modify(|s| s.progress = summary.progress());
    info!(frames = summary.frames, fps = format!("{:.1}", summary.fps), "job done");
    drop(relay);
    Ok(End::Done(Box::new(summary)))
}

/// A job opened to run: frame by frame (and why not in segments), or in segments.
pub(super) enum Opened {
    Frames(Box<OpenedJob>, String),
    Segments(Box<SegmentJob>),
}

impl Opened {
    fn info(&self) -> VideoInfo {
        match self {
            Opened::Frames(j, _) => j.info(),
            Opened::Segments(j) => j.info(),
        }
    }

    fn resumed_at(&self) -> u64 {
        match self {
            Opened::Frames(j, _) => j.resumed_at(),
            Opened::Segments(j) => j.resumed_at(),
        }
    }

    /// Runs the job; in frame mode, frames go out in tiles of at most `max_tile_bytes` each as
    /// `tiles` says (by default those of 4K and more), where the chain allows it.
    fn run(
        self,
        ctx: &JobContext,
        transport: &dyn Transport,
        (window, (tiles, max_tile_bytes), env): (std::num::NonZeroUsize, (Tiles, u64), &crate::filters::FilterEnv),
        observer: &dyn Observer,
    ) -> Result<Finished, JobError> {
        match self {
            Opened::Frames(job, why) => {
                let info = job.info();
                let size = (info.width, info.height);
                let lossless = ctx.encoding.is_lossless();
                let tiling = tiling(transport, tiles, &ctx.chain, (size, max_tile_bytes), lossless, env);
                match (&tiling.summary, tiling.why_not()) {
                    (_, Some(why)) => info!(why, "large frames, not cut into tiles"),
                    (Some(how), None) => info!(tiles = %how, "frames go out in tiles"),
                    (None, None) => {}
                }
                let mut finished = job.run(ctx, tiling.transport(transport), window, observer)?;
                finished.summary.split = Some(Split::Frames.to_string());
                finished.summary.split_why = Some(why);
                finished.summary.tiles = tiling.summary;
                Ok(finished)
            }
            Opened::Segments(job) => job.run(ctx, transport, observer),
        }
    }
}

/// Opens the job's upload and output (off the runtime's threads), in segment mode or frame
/// mode as its split and its video say, with the segments the store records as committed and
/// whose files are there (in frame mode, those in order from 0).
async fn open(
    shared: &Arc<Shared>,
    Driven { id, spec, .. }: &Driven,
    (input, result): (&Path, &Path),
    live: Option<crate::job::Live>,
) -> Result<Opened, (ErrorCode, anyhow::Error)> {
    if let Some(live) = live {
        // A stream as it comes: frame by frame, written straight into the relay.
        let options = OutputOptions { format: Some(RELAY_FORMAT.into()), ..spec.output.clone() };
        let (chain, cascade) = (spec.chain.clone(), shared.local_face_cascade.clone());
        let (input, result) = (input.to_path_buf(), result.to_path_buf());
        let span = tracing::Span::current();
        return tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                let writing = Writing::Direct;
                crate::job::open(&input, &result, &chain, &options, cascade.as_deref(), writing, Some(live))
                    .map(|j| Opened::Frames(Box::new(j), "a live stream goes frame by frame".into()))
            })
        })
        .await
        .map_err(|e| (ErrorCode::Internal, anyhow::anyhow!("{e}")))?
        .map_err(|e| (ErrorCode::BadInput, e));
    }
    let dir = shared.jobs.segments_of(id);
    let committed: Vec<SegmentRecord> = {
        let (shared, id, dir) = (shared.clone(), id.clone(), dir.clone());
        tokio::task::spawn_blocking(move || {
            let all = shared.store.segments(&id)?;
            Ok::<_, anyhow::Error>(all.into_iter().filter(|r| segment_path(&dir, r.number).is_file()).collect())
        })
        .await
        .map_err(|e| (ErrorCode::Internal, anyhow::anyhow!("{e}")))?
        .map_err(|e| (ErrorCode::Internal, e))?
    };
    let on_commit = {
        let (shared, id) = (shared.clone(), id.clone());
        Box::new(move |r: &SegmentRecord| shared.store.commit_segment(&id, r))
    };
    let seconds = shared.jobs.segment_seconds();
    let asked = if spec.split == Split::Auto { shared.split } else { spec.split };
    let remote = shared.transport.segments().is_some();
    let max_message = shared.max_message;
    let cascade = shared.local_face_cascade.clone();
    let spec = spec.clone();
    let (input, result) = (input.to_path_buf(), result.to_path_buf());
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            let fps = crate::media::MediaSource::rate_of(&input)?;
            let plan = split::plan(asked, &input, frames_per_segment(fps, seconds), remote);
            info!(split = %plan.split(), why = plan.why(), "split");
            match plan {
                Plan::Segments { index, why } => {
                    let place = SegmentPlace { dir, seconds, committed, on_commit };
                    let (chain, options, container) = (&spec.chain, &spec.output, &spec.container);
                    split::open(&input, &result, chain, options, container, (index, why), place, max_message)
                        .map(|j| Opened::Segments(Box::new(j)))
                }
                Plan::Frames { why } => {
                    // Frame mode resumes after the committed segments in order from 0.
                    let committed = committed
                        .into_iter()
                        .enumerate()
                        .take_while(|(i, r)| r.number == *i as u64)
                        .map(|(_, r)| r)
                        .collect();
                    let writing = Writing::Segmented { dir, seconds, committed, on_commit };
                    crate::job::open(&input, &result, &spec.chain, &spec.output, cascade.as_deref(), writing, None)
                        .map(|j| Opened::Frames(Box::new(j), why))
                }
            }
        })
    })
    .await
    .map_err(|e| (ErrorCode::Internal, anyhow::anyhow!("{e}")))?
    .map_err(|e| (ErrorCode::BadInput, e))
}

/// A run of an opened job, as its driver follows it.
struct Run<'a> {
    shared: &'a Arc<Shared>,
    job: &'a LiveJob,
    id: &'a JobId,
    /// Frames committed before this run.
    resumed: u64,
    /// Frames the whole video has.
    total: Option<u64>,
    /// A live job's counts, which its progress carries.
    live: Option<Arc<LiveStats>>,
}

/// What a run ended with, whether it was paused, its last progress and the thumbnails not yet
/// published.
type Followed = (Result<Result<Finished, JobError>, tokio::task::JoinError>, bool, Progress, Thumbnails);

/// Thumbnails from a job's observer: the frame's index and its JPEG.
type Thumbnails = mpsc::Receiver<(u64, Vec<u8>)>;

impl Run<'_> {
    /// `p`, this run's numbers, in whole-job terms: frames committed before count as done.
    fn whole(&self, p: Progress) -> Progress {
        Progress { done: p.done + self.resumed, total: self.total, ..p }
    }

    /// Runs the pipeline on its threads and passes on its progress and thumbnails until it
    /// ends; a pause, a cancel or the server's shutdown stops it.
    async fn follow(&self, opened: Opened, spec: &JobSpec, pause: &mut watch::Receiver<bool>) -> Followed {
        let (shared, job, id) = (self.shared, self.job, self.id);
        let info = opened.info();
        let job_token = CancellationToken::new();
        let ctx = JobContext {
            id: id.clone(),
            chain: spec.chain.clone(),
            stop: Stop::on_cancel(job_token.clone(), &tokio::runtime::Handle::current()),
            encoding: spec.transport,
        };
        let window = (shared.window(info.frame_bytes()), (shared.tiles, shared.max_message as u64));
        // The face cascade of this host, for steps run here on tiles' joined frames.
        let env = shared
            .local_face_cascade
            .clone()
            .map(|face_cascade| crate::filters::FilterEnv { face_cascade })
            .unwrap_or_default();
        let remaining = info.frame_count.map(|n| n.saturating_sub(self.resumed));
        let (progress_tx, mut progress_rx) = watch::channel(Progress { total: remaining, ..Progress::default() });
        let (thumb_tx, mut thumb_rx) = mpsc::channel(3);
        let observer = JobObserver::new(progress_tx, thumb_tx, shared.clients.pace(&spec.client));
        let transport = shared.transport.clone();
        let span = tracing::Span::current();
        let first_frame = Instant::now();
        let mut running = tokio::task::spawn_blocking(move || {
            span.in_scope(|| opened.run(&ctx, &*transport, (window.0, window.1, &env), &observer))
        });
        let (mut first, mut paused) = (true, false);
        let outcome = loop {
            tokio::select! {
                finished = &mut running => break finished,
                changed = progress_rx.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let mut p = progress_rx.borrow_and_update().clone();
                    p.live = self.live.as_ref().map(|s| Box::new(s.summary()));
                    if first && p.done > 0 {
                        first = false;
                        info!(frame = self.resumed, ms = first_frame.elapsed().as_millis() as u64, "first new frame");
                    }
                    job.status.send_modify(|s| s.progress = self.whole(p.clone()));
                    shared.publish(JobEvent::Progress { job: id.clone(), progress: p }).await;
                }
                Some((index, jpeg)) = thumb_rx.recv() => {
                    shared.publish(JobEvent::Frame { job: id.clone(), index, jpeg }).await;
                }
                _ = until(pause, true), if !paused => {
                    paused = true;
                    job_token.cancel();
                }
                // Once each: a cancelled token stays ready, and a branch that is always ready would
                // spin this task without ever yielding its worker thread (and the timers it drives)
                // while the pipeline winds down.
                _ = job.cancel.cancelled(), if !job_token.is_cancelled() => job_token.cancel(),
                _ = shared.shutdown.cancelled(), if !job_token.is_cancelled() => job_token.cancel(),
            }
        };
        job_token.cancel(); // ends the stop's waiting task
        // The job's frames, encoder and decoder are gone: their memory goes back to the system.
        let _ = tokio::task::spawn_blocking(crate::job::release_freed_memory).await;
        let last = progress_rx.borrow().clone();
        (outcome, paused, last, thumb_rx)
    }
}

//! The server's jobs: each accepted job is a task of the server's, not of the connection that
//! submitted it. Connections attach to a job to follow it; a job goes on when they end.
//!
//! ```text
//!  state_dir/jobs/ID/input.EXT      the upload, whole (moved here from the work directory)
//!  state_dir/jobs/ID/segments/      committed segments while it runs (each also in the store)
//!  state_dir/jobs/ID/result.EXT     the joined result, kept for --keep-results
//! ```
//!
//! A job's driver waits for a job slot, opens the upload with the segments the store records
//! as committed (none at first), runs the pipeline, and records each segment as it commits.
//! A pause stops the pipeline (nothing in flight, the slot given back) and a resume opens it
//! again from its committed segments, like a restarted server does for every job that was
//! queued, running or paused when the last one stopped. A shutdown stops drivers without
//! recording an end: the next start resumes them.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opencv::core::Mat;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, info, warn};

use super::Shared;
use super::session::Scrub;
use crate::cancel::Stop;
use crate::filters::Chain;
use crate::job::{Finished, Writing};
use crate::media::{OutputOptions, SegmentRecord, segment_path};
use crate::metrics::JobSummary;
use crate::pipeline::{JobError, Observer, Progress};
use crate::protocol::event::JobEvent;
use crate::protocol::jobs::{JobRecord, JobState};
use crate::protocol::message::ErrorCode;
use crate::protocol::wire::TransportEncoding;
use crate::transport::JobContext;

/// Shortest time between two progress messages or events of a job.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Shortest time between two thumbnails of a job.
const THUMBNAIL_INTERVAL: Duration = Duration::from_millis(400);
/// Thumbnails are at most this wide.
const THUMBNAIL_WIDTH: i32 = 320;
/// JPEG quality of thumbnails.
const THUMBNAIL_QUALITY: i32 = 75;
/// How often kept results are checked against `--keep-results` and `--max-stored`.
pub const JANITOR_INTERVAL: Duration = Duration::from_secs(60);

/// The video a running job reads, in whole-job terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Video {
    /// Frames the container announces.
    pub frames: Option<u64>,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// Frame rate.
    pub fps: f64,
}

/// How a job ended.
#[derive(Debug, Clone)]
pub enum End {
    /// Its result is in its directory.
    Done(Box<JobSummary>),
    /// It failed: the code and the message for its client.
    Failed(ErrorCode, String),
    /// Cancelled, by a client or `vpd jobs cancel`.
    Cancelled,
    /// The server is shutting down; the job resumes when it starts again.
    Interrupted,
}

/// Where a live job stands, as attached connections see it.
#[derive(Debug, Clone)]
pub struct Status {
    /// Queued, running or paused (the last state it had, once it ended).
    pub state: JobState,
    /// Its video, once opened.
    pub video: Option<Video>,
    /// Its numbers, in whole-job terms (frames committed before a resume count as done).
    pub progress: Progress,
    /// Set once it ended.
    pub end: Option<End>,
}

/// A job the server is running, queued or holding paused.
pub struct LiveJob {
    client: String,
    status: watch::Sender<Status>,
    cancel: CancellationToken,
    pause: watch::Sender<bool>,
}

impl LiveJob {
    /// Follows the job's status.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Where it stands now.
    pub fn state(&self) -> JobState {
        self.status.borrow().state
    }

    /// Cancels it.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Pauses it (`true`) or lets it go on (`false`).
    pub fn set_paused(&self, paused: bool) {
        self.pause.send_replace(paused);
    }
}

/// What a job is: enough to open it again after a restart.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Its id.
    pub id: String,
    /// The client it is counted against (its name in the tokens file).
    pub client: String,
    /// The input's name, as the client gave it.
    pub input_name: String,
    /// The filters.
    pub chain: Chain,
    /// How the result is encoded.
    pub output: OutputOptions,
    /// How frames travel to workers.
    pub transport: TransportEncoding,
    /// The result's container.
    pub container: String,
}

impl Spec {
    /// The spec a record describes.
    pub fn of(record: &JobRecord) -> anyhow::Result<Spec> {
        let chain = record.chain.parse().map_err(|e| anyhow::anyhow!("the recorded filter chain: {e}"))?;
        let output = serde_json::from_value(record.output_options.clone())
            .map_err(|e| anyhow::anyhow!("the recorded output options: {e}"))?;
        let transport = if record.transport.is_empty() { "auto" } else { record.transport.as_str() };
        let transport = transport.parse().map_err(|e| anyhow::anyhow!("the recorded transport: {e}"))?;
        Ok(Spec {
            id: record.id.clone(),
            // Recorded as `NAME (SOFTWARE)`.
            client: record.client.split(" (").next().unwrap_or_default().to_string(),
            input_name: record.input_name.clone(),
            chain,
            output,
            transport,
            container: record.container.clone(),
        })
    }
}

/// The jobs of one state directory: the live ones, and the files of all of them.
pub struct Jobs {
    dir: PathBuf,
    live: Mutex<HashMap<String, Arc<LiveJob>>>,
    /// Connections following or downloading a job, by id: their files are not removed.
    pins: Mutex<HashMap<String, usize>>,
    segment_seconds: f64,
    keep_results: Duration,
    max_stored: u64,
    tracker: TaskTracker,
    /// Held while the server runs: two servers never drive the same jobs.
    _lock: File,
}

/// Keeps a job's files while a connection uses them.
pub struct Pin<'a> {
    jobs: &'a Jobs,
    id: String,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut pins = self.jobs.pins.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = pins.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.id);
            }
        }
    }
}

impl Jobs {
    /// The jobs under `state_dir/jobs`, locked for this process.
    pub fn open(
        state_dir: &Path,
        segment_seconds: f64,
        keep_results: Duration,
        max_stored: u64,
    ) -> anyhow::Result<Jobs> {
        let dir = state_dir.join("jobs");
        std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        let lock = super::workdir::lock(&dir, ("state directory", state_dir, "--state-dir"))?;
        Ok(Jobs {
            dir,
            live: Mutex::default(),
            pins: Mutex::default(),
            segment_seconds,
            keep_results,
            max_stored,
            tracker: TaskTracker::new(),
            _lock: lock,
        })
    }

    /// The directory every job's own directory is in: where uploads grow.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of job `id`.
    pub fn dir_of(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Where job `id`'s upload grows until it is whole: in its directory, so that it outlives
    /// the connection and the process, for its client to resume.
    pub fn partial_of(&self, id: &str) -> PathBuf {
        self.dir_of(id).join("upload.partial")
    }

    /// How much of [`Jobs::partial_of`] is on disk for sure (fsynced): a decimal byte count.
    pub fn synced_of(&self, id: &str) -> PathBuf {
        self.dir_of(id).join("upload.synced")
    }

    /// Where job `id`'s upload is kept.
    pub fn input_of(&self, id: &str, input_name: &str) -> PathBuf {
        self.dir_of(id).join(format!("input{}", extension_of(input_name)))
    }

    /// Where job `id`'s result is kept.
    pub fn result_of(&self, id: &str, container: &str) -> PathBuf {
        self.dir_of(id).join(format!("result.{container}"))
    }

    fn segments_of(&self, id: &str) -> PathBuf {
        self.dir_of(id).join("segments")
    }

    /// The live job `id`.
    pub fn get(&self, id: &str) -> Option<Arc<LiveJob>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Live jobs: queued, running and paused.
    pub fn live_count(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Jobs queued, running or paused of the client called `name`.
    pub fn live_count_of(&self, name: &str) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|j| j.client == name).count()
    }

    /// Keeps job `id`'s files while the pin lives.
    pub fn pin(&self, id: &str) -> Pin<'_> {
        *self.pins.lock().unwrap_or_else(|p| p.into_inner()).entry(id.to_string()).or_default() += 1;
        Pin { jobs: self, id: id.to_string() }
    }

    /// Waits for every driver to stop (after a shutdown).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Bytes the kept jobs take on disk.
    fn stored_bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir).map_or(0, |dir| dir.flatten().map(|e| disk_usage(&e.path())).sum())
    }

    /// Removes the files of ended jobs past `--keep-results`, then the oldest others while
    /// the jobs take more than `--max-stored`, and records each removal. Files a connection
    /// is reading are skipped until it is done.
    pub fn expire(&self, store: &crate::store::Store) {
        let kept = match store.kept() {
            Ok(kept) => kept,
            Err(e) => return warn!(error = %format!("{e:#}"), "cannot list kept results"),
        };
        let now = now_ms();
        let keep_ms = self.keep_results.as_millis() as i64;
        let mut stored = None;
        for (id, ended_ms) in kept {
            if self.pins.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&id) {
                continue;
            }
            let expired = now.saturating_sub(ended_ms) >= keep_ms;
            let over = !expired && *stored.get_or_insert_with(|| self.stored_bytes()) > self.max_stored;
            if !(expired || over) {
                continue;
            }
            let dir = self.dir_of(&id);
            let freed = disk_usage(&dir);
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!(job = %id, error = %e, "cannot remove a kept result");
                continue;
            }
            if let Some(s) = stored.as_mut() {
                *s = s.saturating_sub(freed);
            }
            info!(job = %id, bytes = freed, why = if expired { "--keep-results" } else { "--max-stored" }, "result removed");
            if let Err(e) = store.removed(&id) {
                warn!(job = %id, error = %format!("{e:#}"), "cannot record a removed result");
            }
        }
    }

    /// Starts driving the job `spec`, whose upload is in place; `paused` holds it until it
    /// is resumed. Returns it.
    pub fn launch(shared: &Arc<Shared>, spec: Spec, paused: bool) -> Arc<LiveJob> {
        let state = if paused { JobState::Paused } else { JobState::Queued };
        let status = Status { state, video: None, progress: Progress::default(), end: None };
        let job = Arc::new(LiveJob {
            client: spec.client.clone(),
            status: watch::Sender::new(status),
            cancel: CancellationToken::new(),
            pause: watch::Sender::new(paused),
        });
        let jobs = &shared.jobs;
        jobs.live.lock().unwrap_or_else(|p| p.into_inner()).insert(spec.id.clone(), job.clone());
        let span = tracing::info_span!("drive", job = %spec.id);
        jobs.tracker.spawn(drive(shared.clone(), job.clone(), spec).instrument(span));
        job
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Bytes of the files under `path`.
fn disk_usage(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path).map_or(0, |d| d.flatten().map(|e| disk_usage(&e.path())).sum()),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// `.mp4` from `clip.mp4`: the upload keeps its extension as a container hint for FFmpeg.
pub fn extension_of(name: &str) -> String {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .filter(|e| !e.is_empty() && e.len() <= 8 && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(|e| format!(".{}", e.to_ascii_lowercase()))
        .unwrap_or_default()
}

/// Drives one job to its end (or to the server's shutdown), then records how it ended.
async fn drive(shared: Arc<Shared>, job: Arc<LiveJob>, spec: Spec) {
    let id = spec.id.clone();
    let end = drive_to_end(&shared, &job, &spec).await;
    let recorded = match &end {
        End::Done(summary) => {
            let output_bytes = std::fs::metadata(shared.jobs.result_of(&id, &spec.container)).map_or(0, |m| m.len());
            shared.store.finished(&id, summary, output_bytes)
        }
        End::Failed(_, message) => shared.store.transition(&id, JobState::Failed, Some(message)),
        End::Cancelled => shared.store.transition(&id, JobState::Cancelled, None),
        End::Interrupted => Ok(()),
    };
    if let Err(e) = recorded {
        warn!(error = %format!("{e:#}"), "cannot record the job's end in the job store");
    }
    if matches!(end, End::Done(_)) {
        let _ = std::fs::remove_dir_all(shared.jobs.segments_of(&id));
        let _ = shared.store.drop_segments(&id);
    }
    // The record first, then the live entry: a connection that finds no live job finds its end
    // in the store.
    job.status.send_modify(|s| s.end = Some(end));
    shared.jobs.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    let _ = tokio::task::spawn_blocking(move || shared.jobs.expire(&shared.store)).await;
}

/// The driver's loop: wait for a slot (or a resume), run, and again after a pause.
async fn drive_to_end(shared: &Arc<Shared>, job: &LiveJob, spec: &Spec) -> End {
    let id = &spec.id;
    let shutdown = shared.shutdown.clone();
    let mut pause = job.pause.subscribe();
    let pause = &mut pause;
    loop {
        // Paused: no slot, nothing in flight, until resumed or cancelled.
        if *pause.borrow_and_update() {
            set_state(shared, job, id, JobState::Paused);
            tokio::select! {
                _ = until(pause, false) => {}
                _ = job.cancel.cancelled() => return cancelled(shared, id).await,
                _ = shutdown.cancelled() => return End::Interrupted,
            }
        }
        set_state(shared, job, id, JobState::Queued);
        let slot = tokio::select! {
            slot = shared.job_slots.acquire() => match slot {
                Ok(slot) => slot,
                Err(_) => return End::Interrupted,
            },
            _ = until(pause, true) => continue,
            _ = job.cancel.cancelled() => return cancelled(shared, id).await,
            _ = shutdown.cancelled() => return End::Interrupted,
        };
        set_state(shared, job, id, JobState::Running);
        let outcome = run_once(shared, job, spec, pause).await;
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
async fn cancelled(shared: &Shared, id: &str) -> End {
    shared.publish(JobEvent::Cancelled { job: id.to_string() }).await;
    End::Cancelled
}

/// Returns once the pause flag is `value`.
async fn until(pause: &mut watch::Receiver<bool>, value: bool) {
    let _ = pause.wait_for(|p| *p == value).await;
}

/// Moves the job to `state`, in its status and in the store.
fn set_state(shared: &Shared, job: &LiveJob, id: &str, state: JobState) {
    let mut changed = false;
    job.status.send_if_modified(|s| {
        changed = s.state != state;
        s.state = state;
        changed
    });
    // A resumed job's record may already say so (running when the server died).
    let recorded = shared.store.get(id).ok().flatten().map(|r| r.state);
    if recorded != Some(state)
        && let Err(e) = shared.store.transition(id, state, None)
    {
        warn!(error = %format!("{e:#}"), "cannot record a state in the job store");
    }
}

/// Why a run stopped early.
enum Stopped {
    Paused,
    Cancelled,
}

/// Opens the job from its committed segments and runs it until it ends or is paused.
async fn run_once(
    shared: &Arc<Shared>,
    job: &LiveJob,
    spec: &Spec,
    pause: &mut watch::Receiver<bool>,
) -> Result<End, Stopped> {
    let id = spec.id.clone();
    let jobs = &shared.jobs;
    let (input, result, dir) =
        (jobs.input_of(&id, &spec.input_name), jobs.result_of(&id, &spec.container), jobs.segments_of(&id));
    let scrub = Scrub::new(&jobs.dir, &input, &spec.input_name, &result);
    let failed = |code: ErrorCode, e: &anyhow::Error| Ok(End::Failed(code, scrub.text(&format!("{e:#}"))));
    // Committed segments whose files are there, in order from 0.
    let committed: Vec<SegmentRecord> = match shared.store.segments(&id) {
        Ok(all) => all
            .into_iter()
            .enumerate()
            .take_while(|(i, r)| r.number == *i as u64 && segment_path(&dir, r.number).is_file())
            .map(|(_, r)| r)
            .collect(),
        Err(e) => return failed(ErrorCode::Internal, &e),
    };
    let on_commit = {
        let (shared, id) = (shared.clone(), id.clone());
        Box::new(move |r: &SegmentRecord| shared.store.commit_segment(&id, r))
    };
    let writing = Writing::Segmented { dir, seconds: jobs.segment_seconds, committed, on_commit };
    let cascade = shared.local_face_cascade.clone();
    let (chain, options) = (spec.chain.clone(), spec.output.clone());
    let span = tracing::Span::current();
    let opened = {
        let (input, result) = (input.clone(), result.clone());
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| crate::job::open(&input, &result, &chain, &options, cascade.as_deref(), writing))
        })
        .await
    };
    let opened = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return failed(ErrorCode::BadInput, &e),
        Err(e) => return failed(ErrorCode::Internal, &anyhow::anyhow!("{e}")),
    };
    let info = opened.info();
    let resumed = opened.resumed_at();
    if resumed > 0 {
        info!(frame = resumed, "resuming after the committed segments");
    }
    let video = Video { frames: info.frame_count, width: info.width as u32, height: info.height as u32, fps: info.fps };
    job.status.send_modify(|s| {
        s.video = Some(video);
        s.progress = Progress { done: resumed, total: info.frame_count, ..Progress::default() };
    });
    // Events and metrics count the frames this process works on: what remains.
    let remaining = info.frame_count.map(|n| n.saturating_sub(resumed));
    shared
        .publish(JobEvent::Started {
            job: id.clone(),
            filters: spec.chain.to_string(),
            frames: remaining,
            width: video.width,
            height: video.height,
            fps: video.fps,
        })
        .await;

    let job_token = CancellationToken::new();
    let ctx = JobContext {
        id: id.clone(),
        chain: spec.chain.clone(),
        stop: Stop::on_cancel(job_token.clone(), &tokio::runtime::Handle::current()),
        encoding: spec.transport,
    };
    let window = shared.window(info.frame_bytes());
    let (progress_tx, mut progress_rx) = watch::channel(Progress { total: remaining, ..Progress::default() });
    let (thumb_tx, mut thumb_rx) = mpsc::channel(3);
    let observer = JobObserver::new(progress_tx, thumb_tx, shared.clients.pace(&spec.client));
    let transport = shared.transport.clone();
    let span = tracing::Span::current();
    let first_frame = Instant::now();
    let mut running =
        tokio::task::spawn_blocking(move || span.in_scope(|| opened.run(&ctx, &*transport, window, &observer)));
    let mut first = true;
    let mut paused = false;
    let outcome = loop {
        tokio::select! {
            finished = &mut running => break finished,
            changed = progress_rx.changed() => {
                if changed.is_err() {
                    continue;
                }
                let p = progress_rx.borrow_and_update().clone();
                if first && p.done > 0 {
                    first = false;
                    info!(frame = resumed, ms = first_frame.elapsed().as_millis() as u64, "first new frame");
                }
                job.status.send_modify(|s| {
                    s.progress = Progress { done: p.done + resumed, total: info.frame_count, ..p.clone() };
                });
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
    let Finished { mut summary, latency } = match outcome {
        Ok(Ok(finished)) => finished,
        Ok(Err(JobError::Cancelled)) if paused && !job.cancel.is_cancelled() && !shared.shutdown.is_cancelled() => {
            // Nothing of it is in flight any more: the dashboards say so.
            let mut p = progress_rx.borrow().clone();
            p.in_flight = 0;
            shared.publish(JobEvent::Progress { job: id.clone(), progress: p.clone() }).await;
            shared.publish(JobEvent::Paused { job: id.clone() }).await;
            job.status.send_modify(|s| s.progress = Progress { done: p.done + resumed, total: info.frame_count, ..p });
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
        Err(e) => return failed(ErrorCode::Internal, &anyhow::anyhow!("{e}")),
    };
    // The record names the client's file, never the server's paths.
    summary.input = spec.input_name.clone();
    summary.output = result.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    while let Ok((index, jpeg)) = thumb_rx.try_recv() {
        shared.publish(JobEvent::Frame { job: id.clone(), index, jpeg }).await;
    }
    let mut last = summary.progress();
    last.done = last.done.saturating_sub(resumed);
    last.total = remaining;
    shared.publish(JobEvent::Progress { job: id.clone(), progress: last }).await;
    shared.publish(JobEvent::Done { job: id.clone(), summary: Box::new(summary.clone()), latency }).await;
    job.status.send_modify(|s| s.progress = summary.progress());
    info!(frames = summary.frames, fps = format!("{:.1}", summary.fps), "job done");
    Ok(End::Done(Box::new(summary)))
}

/// Passes the pipeline's progress and a thumbnail now and then to the driver. Called from
/// pipeline threads: keeps only the latest progress, drops thumbnails nobody took yet.
struct JobObserver {
    progress: watch::Sender<Progress>,
    thumbnails: mpsc::Sender<(u64, Vec<u8>)>,
    /// The index of the last thumbnail made.
    last_index: Mutex<Option<u64>>,
    last_progress: Mutex<Option<Instant>>,
    last_thumbnail: Mutex<Option<Instant>>,
    /// The client's frames-per-second limit, shared with its other jobs.
    pace: Option<Arc<super::clients::Pace>>,
}

impl JobObserver {
    fn new(
        progress: watch::Sender<Progress>,
        thumbnails: mpsc::Sender<(u64, Vec<u8>)>,
        pace: Option<Arc<super::clients::Pace>>,
    ) -> Self {
        let (last_progress, last_thumbnail, last_index) = (Mutex::new(None), Mutex::new(None), Mutex::new(None));
        JobObserver { progress, thumbnails, last_index, last_progress, last_thumbnail, pace }
    }

    fn send_thumbnail(&self, index: u64, frame: &Mat) {
        match thumbnail(frame) {
            Ok(jpeg) => {
                if self.thumbnails.try_send((index, jpeg)).is_ok() {
                    *self.last_index.lock().unwrap_or_else(|p| p.into_inner()) = Some(index);
                }
            }
            Err(e) => warn!(error = %e, "cannot make a thumbnail"),
        }
    }
}

/// Whether `interval` has passed since `last`; if so, `last` becomes now.
fn due(last: &Mutex<Option<Instant>>, interval: Duration) -> bool {
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_some_and(|t| t.elapsed() < interval) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

impl Observer for JobObserver {
    fn on_progress(&self, p: &Progress) {
        if due(&self.last_progress, PROGRESS_INTERVAL) {
            self.progress.send_replace(p.clone());
        }
    }

    fn on_frame(&self, index: u64, frame: &Mat) {
        // A client over its frames per second waits here, on the writer thread: the window
        // fills and the dispatch of its frames waits with it; other clients' jobs go on.
        if let Some(pace) = &self.pace {
            std::thread::sleep(pace.next_slot());
        }
        // One slot stays free for the last frame's.
        if self.thumbnails.capacity() > 1 && due(&self.last_thumbnail, THUMBNAIL_INTERVAL) {
            self.send_thumbnail(index, frame);
        }
    }

    fn on_last_frame(&self, index: u64, frame: &Mat) {
        // The dashboard of a finished job shows its last frame.
        if *self.last_index.lock().unwrap_or_else(|p| p.into_inner()) != Some(index) {
            self.send_thumbnail(index, frame);
        }
    }
}

/// `frame` scaled down to at most [`THUMBNAIL_WIDTH`] pixels wide, as a JPEG.
fn thumbnail(frame: &Mat) -> opencv::Result<Vec<u8>> {
    use opencv::core::{Size, Vector};
    use opencv::imgcodecs::{IMWRITE_JPEG_QUALITY, imencode};
    use opencv::imgproc::{INTER_AREA, resize};
    use opencv::prelude::*;

    let (w, h) = (frame.cols().max(1), frame.rows().max(1));
    let mut small = Mat::default();
    let scaled = if w > THUMBNAIL_WIDTH {
        let height = (i64::from(h) * i64::from(THUMBNAIL_WIDTH) / i64::from(w)).max(1) as i32;
        resize(frame, &mut small, Size::new(THUMBNAIL_WIDTH, height), 0.0, 0.0, INTER_AREA)?;
        &small
    } else {
        frame
    };
    let mut jpeg = Vector::<u8>::new();
    imencode(".jpg", scaled, &mut jpeg, &Vector::from_slice(&[IMWRITE_JPEG_QUALITY, THUMBNAIL_QUALITY]))?;
    Ok(jpeg.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_are_small_jpegs_of_the_same_aspect() {
        use opencv::core::{CV_8UC3, Scalar};
        use opencv::prelude::*;
        let frame = Mat::new_rows_cols_with_default(720, 1280, CV_8UC3, Scalar::new(10.0, 200.0, 30.0, 0.0)).unwrap();
        let jpeg = thumbnail(&frame).unwrap();
        assert_eq!(&jpeg[..3], &[0xff, 0xd8, 0xff]);
        let back =
            opencv::imgcodecs::imdecode(&opencv::core::Vector::from_slice(&jpeg), opencv::imgcodecs::IMREAD_COLOR)
                .unwrap();
        assert_eq!((back.cols(), back.rows()), (320, 180));
    }

    #[test]
    fn rate_limits_let_one_through_per_interval() {
        let last = Mutex::new(None);
        assert!(due(&last, Duration::from_secs(60)));
        assert!(!due(&last, Duration::from_secs(60)), "the second within the interval waits");
        assert!(due(&last, Duration::ZERO));
    }

    #[test]
    fn uploads_keep_a_short_alphanumeric_extension() {
        assert_eq!(extension_of("clip.MP4"), ".mp4");
        assert_eq!(extension_of("clip"), "");
        assert_eq!(extension_of("a.b/c d"), "");
        assert_eq!(extension_of("x.toolongextension"), "");
    }
}

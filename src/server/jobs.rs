//! The server's jobs: each accepted job is a task of the server's, not of the connection that
//! submitted it. Connections attach to a job to follow it; a job goes on when they end.
//!
//! ```text
//!  state_dir/jobs/ID/input.EXT      the upload, whole (moved here from the work directory)
//!  state_dir/jobs/ID/segments/      committed segments while it runs (each also in the store)
//!  state_dir/jobs/ID/result.EXT     the joined result, kept for --keep-results
//! ```
//!
//! This module keeps the register of live jobs and every job's files; the `drive` module runs
//! them, the `control` module changes them, the `follow` module reports them to clients.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::media::VideoInfo;
use crate::metrics::JobSummary;
use crate::pipeline::Progress;
use crate::protocol::job::{JobId, JobState};
use crate::protocol::message::ErrorCode;

/// How often kept results are checked against `--keep-results` and `--max-stored`.
pub const JANITOR_INTERVAL: Duration = Duration::from_secs(60);

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
    pub video: Option<VideoInfo>,
    /// Its numbers, in whole-job terms (frames committed before a resume count as done).
    pub progress: Progress,
    /// Set once it ended.
    pub end: Option<End>,
}

/// A job the server is running, queued or holding paused.
pub struct LiveJob {
    /// The client it is counted against.
    pub(super) client: String,
    /// Its status, sent by its driver.
    pub(super) status: watch::Sender<Status>,
    /// Fires when it is cancelled.
    pub(super) cancel: CancellationToken,
    /// Whether it is held paused.
    pub(super) pause: watch::Sender<bool>,
    /// A live stream relayed over its client's connection: it cannot pause (its stream would
    /// not wait) nor resume after its server stops.
    pub(super) streaming: bool,
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

/// The jobs of one state directory: the live ones, and the files of all of them.
pub struct Jobs {
    dir: PathBuf,
    live: Mutex<HashMap<JobId, Arc<LiveJob>>>,
    /// Connections following or downloading a job, by id: their files are not removed.
    pins: Mutex<HashMap<JobId, usize>>,
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
    id: JobId,
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
    pub fn dir_of(&self, id: &JobId) -> PathBuf {
        self.dir.join(id.as_str())
    }

    /// Where job `id`'s upload grows until it is whole: in its directory, so that it outlives
    /// the connection and the process, for its client to resume.
    pub fn partial_of(&self, id: &JobId) -> PathBuf {
        self.dir_of(id).join("upload.partial")
    }

    /// How much of [`Jobs::partial_of`] is on disk for sure (fsynced): a decimal byte count.
    pub fn synced_of(&self, id: &JobId) -> PathBuf {
        self.dir_of(id).join("upload.synced")
    }

    /// Where job `id`'s upload is kept.
    pub fn input_of(&self, id: &JobId, input_name: &str) -> PathBuf {
        self.dir_of(id).join(format!("input{}", extension_of(input_name)))
    }

    /// Where job `id`'s result is kept.
    pub fn result_of(&self, id: &JobId, container: &str) -> PathBuf {
        self.dir_of(id).join(format!("result.{container}"))
    }

    /// The live job `id`.
    pub fn get(&self, id: &JobId) -> Option<Arc<LiveJob>> {
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
    pub fn pin(&self, id: &JobId) -> Pin<'_> {
        *self.pins.lock().unwrap_or_else(|p| p.into_inner()).entry(id.clone()).or_default() += 1;
        Pin { jobs: self, id: id.clone() }
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

    /// Adds `job`, driven by `driver`, to the live jobs: it leaves them when the driver ends.
    pub(super) fn start(
        &self,
        id: &JobId,
        job: Arc<LiveJob>,
        driver: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), job);
        self.tracker.spawn(driver);
    }

    /// Removes job `id` from the live jobs (its driver ended).
    pub(super) fn forget(&self, id: &JobId) {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Job `id`'s committed segments.
    pub(super) fn segments_of(&self, id: &JobId) -> PathBuf {
        self.dir_of(id).join("segments")
    }

    /// Seconds of video per committed segment.
    pub(super) fn segment_seconds(&self) -> f64 {
        self.segment_seconds
    }
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Bytes of the files under `path`.
pub(super) fn disk_usage(path: &Path) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_keep_a_short_alphanumeric_extension() {
        assert_eq!(extension_of("clip.MP4"), ".mp4");
        assert_eq!(extension_of("clip"), "");
        assert_eq!(extension_of("a.b/c d"), "");
        assert_eq!(extension_of("x.toolongextension"), "");
    }
}

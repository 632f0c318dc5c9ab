//! The dashboard's state, built from job events: what `/jobs`, `/events` and `/metrics` show.
//!
//! Events come from RabbitMQ (`vpd preview`) or straight from a server's jobs (`vpd server
//! --preview`). Every change is broadcast to the open event streams. Memory is bounded: the
//! board keeps the last [`MAX_JOBS`] jobs; counters remember the ones it let go, so they never
//! go down.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::media::VideoInfo;
use crate::metrics::exposition::{Exposition, Kind};
use crate::metrics::{Buckets, Charts, DURATION_BOUNDS, JobSummary, LATENCY_BOUNDS, Progress};
use crate::protocol::event::JobEvent;
use crate::protocol::job::{JobId, JobRecord, JobState};

/// How often a board's feeder reads the task queue's depth (server and preview alike).
pub const QUEUE_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Jobs kept; the oldest finished one goes first.
pub const MAX_JOBS: usize = 256;
/// A worker counts as seen for this long after its last frame.
const WORKER_SEEN_FOR: Duration = Duration::from_secs(300);
/// Updates buffered per event stream; a stream that falls further behind gets a fresh snapshot.
const UPDATES_BUFFERED: usize = 256;

/// One worker's share of a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WorkerView {
    /// Frames it processed.
    pub frames: u64,
    /// Its current frames per second (over the whole job once it is done).
    pub fps: f64,
}

/// A job as the dashboard and `/jobs` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobView {
    /// The job's id.
    pub id: JobId,
    /// Where it stands.
    pub status: JobState,
    /// The filter chain (empty when the board joined after the job started).
    pub filters: String,
    /// The job's numbers: the latest progress snapshot, or the summary's once it is done.
    pub progress: Progress,
    /// Done as a share of the frames, 0–100 (100 once done).
    pub percent: f64,
    /// Current frames per second (the whole job's once it is done).
    pub fps: f64,
    /// Seconds left at the current speed, when it can be told.
    pub eta_seconds: Option<f64>,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// The video's frame rate.
    pub video_fps: f64,
    /// Per worker: its frames and its speed.
    pub workers: BTreeMap<String, WorkerView>,
    /// Index of the latest thumbnail, if any (`/jobs/{id}/frame.jpg`).
    pub frame_index: Option<u64>,
    /// The job's report, once it is done: the numbers the client printed.
    pub summary: Option<JobSummary>,
    /// Why it failed.
    pub error: Option<String>,
}

/// The broker link as the board knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Link {
    /// Whether the events come in (`None`: no broker involved).
    pub broker_connected: Option<bool>,
    /// Messages waiting in the task queue, when known.
    pub queue_depth: Option<u32>,
}

/// A change, as event streams send it.
#[derive(Debug, Clone)]
pub enum Update {
    /// A job changed.
    Job(Box<JobView>),
    /// A job has a new thumbnail.
    Frame {
        /// The job.
        job: JobId,
        /// The frame's index.
        index: u64,
    },
    /// The broker link changed.
    Link(Link),
}

struct Entry {
    view: JobView,
    thumbnail: Option<Vec<u8>>,
    /// The last progress snapshot, to measure speed between two of them.
    last: Option<Progress>,
    /// When the job's last event came.
    heard: Instant,
    /// Its throughput samples (the rest of its charts is in its view).
    samples: Charts,
    /// Whether /metrics counts it: false for a job from the job store, which an earlier
    /// process counted.
    counted: bool,
}

#[derive(Default)]
struct Totals {
    done: u64,
    failed: u64,
    retries: u64,
    /// Live jobs' frames read, dropped to keep up, and input losses.
    live: [u64; 3],
}

impl Totals {
    /// Adds a job's counts, which it no longer holds.
    fn retire(&mut self, p: &Progress) {
        self.done += p.done;
        self.failed += p.failed;
        self.retries += p.retries;
        for (total, n) in self.live.iter_mut().zip(live_counts(p)) {
            *total += n;
        }
    }
}

/// A live job's frames read, dropped and input losses (none for another job).
fn live_counts(p: &Progress) -> [u64; 3] {
    p.live.as_ref().map_or([0; 3], |l| [l.read, l.dropped, l.reconnects])
}

struct State {
    jobs: HashMap<JobId, Entry>,
    order: VecDeque<JobId>,
    /// Counters of jobs no longer kept.
    retired: Totals,
    outcomes: [u64; 3],
    latency: Buckets,
    durations: Buckets,
    workers_seen: HashMap<String, Instant>,
    link: Link,
}

/// The dashboard's state.
pub struct Board {
    state: Mutex<State>,
    updates: broadcast::Sender<Update>,
}

impl Default for Board {
    fn default() -> Self {
        Board::new()
    }
}

impl Board {
    /// An empty board.
    pub fn new() -> Self {
        Board {
            state: Mutex::new(State {
                jobs: HashMap::new(),
                order: VecDeque::new(),
                retired: Totals::default(),
                outcomes: [0; 3],
                latency: Buckets::empty(LATENCY_BOUNDS),
                durations: Buckets::empty(DURATION_BOUNDS),
                workers_seen: HashMap::new(),
                link: Link::default(),
            }),
            updates: broadcast::channel(UPDATES_BUFFERED).0,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep serving it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Folds an event in and tells the streams.
    pub fn apply(&self, event: &JobEvent) {
        let update = self.state().apply(event);
        // No subscriber is fine: nobody is watching.
        let _ = self.updates.send(update);
    }

    /// Records the state of the broker link.
    pub fn set_link(&self, link: Link) {
        let changed = {
            let mut s = self.state();
            let changed = s.link != link;
            s.link = link;
            changed
        };
        if changed {
            let _ = self.updates.send(Update::Link(link));
        }
    }

    /// Marks failed the running jobs with no event for `silence`: their server is gone (a
    /// live job is never silent for long: a server fails a job whose frames get no result for
    /// [`crate::pipeline::DEFAULT_STALL_TIMEOUT`], and says so).
    pub fn expire_silent(&self, silence: Duration) {
        let updates: Vec<Update> = {
            let mut s = self.state();
            let silent: Vec<JobId> = s
                .jobs
                .iter()
                .filter(|(_, e)| e.view.status == JobState::Running && e.heard.elapsed() >= silence)
                .map(|(id, _)| id.clone())
                .collect();
            let error = format!("no news of the job for {} s: its server stopped", silence.as_secs());
            silent.iter().map(|id| s.apply(&JobEvent::Failed { job: id.clone(), error: error.clone() })).collect()
        };
        for update in updates {
            let _ = self.updates.send(update);
        }
    }

    /// The broker link.
    pub fn link(&self) -> Link {
        self.state().link
    }

    /// Every job, newest first.
    pub fn jobs(&self) -> Vec<JobView> {
        let s = self.state();
        s.order.iter().rev().filter_map(|id| s.jobs.get(id)).map(|e| e.view.clone()).collect()
    }

    /// Shows jobs from the job store, newest first (a restarted server's history): their views
    /// only, behind the jobs this process saw; the counters of `/metrics` stay this process's.
    pub fn remember(&self, records: &[JobRecord]) {
        let mut s = self.state();
        for r in records {
            if s.jobs.contains_key(&r.id) {
                continue;
            }
            let view = JobView::from_record(r);
            s.order.push_front(r.id.clone());
            s.jobs.insert(
                r.id.clone(),
                Entry {
                    view,
                    thumbnail: None,
                    last: None,
                    heard: Instant::now(),
                    samples: Charts::default(),
                    counted: false,
                },
            );
            s.evict();
        }
    }

    /// One job.
    pub fn job(&self, id: &str) -> Option<JobView> {
        self.state().jobs.get(id).map(|e| e.view.clone())
    }

    /// What job `id`'s charts show now: its throughput samples, latency bars and frames per
    /// worker.
    pub fn charts(&self, id: &str) -> Option<Charts> {
        let s = self.state();
        let e = s.jobs.get(id)?;
        Some(Charts {
            throughput: e.samples.throughput.clone(),
            latency: e.view.progress.latency.clone(),
            latency_bounds: LATENCY_BOUNDS.to_vec(),
            workers: e.view.workers.iter().map(|(w, v)| (w.clone(), v.frames)).collect(),
        })
    }

    /// A job's latest thumbnail (JPEG).
    pub fn thumbnail(&self, id: &str) -> Option<Vec<u8>> {
        self.state().jobs.get(id).and_then(|e| e.thumbnail.clone())
    }

    /// A stream of changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.updates.subscribe()
    }

    /// `/metrics`, in the Prometheus text format.
    pub fn metrics(&self) -> String {
        let s = self.state();
        let running: Vec<&JobView> =
            s.jobs.values().map(|e| &e.view).filter(|v| v.status == JobState::Running).collect();
        let sum = |f: fn(&JobView) -> u64| s.jobs.values().filter(|e| e.counted).map(|e| f(&e.view)).sum::<u64>();
        let mut e = Exposition::new();
        e.single(
            Kind::Counter,
            "vpd_frames_processed_total",
            "Frames processed (filtered or written unchanged after a failure).",
            (s.retired.done + sum(|v| v.progress.done)) as f64,
        );
        e.single(
            Kind::Counter,
            "vpd_frames_failed_total",
            "Frames written unchanged because their filters failed.",
            (s.retired.failed + sum(|v| v.progress.failed)) as f64,
        );
        e.single(
            Kind::Counter,
            "vpd_frames_retried_total",
            "Redeliveries, re-dispatches and retries of frames.",
            (s.retired.retries + sum(|v| v.progress.retries)) as f64,
        );
        let [done, failed, cancelled] = s.outcomes;
        e.labelled(
            Kind::Counter,
            "vpd_jobs_total",
            "Jobs finished, by outcome.",
            "outcome",
            &[("done", done as f64), ("failed", failed as f64), ("cancelled", cancelled as f64)],
        );
        e.histogram(
            "vpd_frame_latency_seconds",
            "Per-frame time from dispatch to result, of finished jobs.",
            LATENCY_BOUNDS,
            &s.latency,
        );
        e.histogram("vpd_job_duration_seconds", "Wall time of finished jobs.", DURATION_BOUNDS, &s.durations);
        e.single(Kind::Gauge, "vpd_jobs_running", "Jobs running.", running.len() as f64);
        e.single(
            Kind::Gauge,
            "vpd_frames_in_flight",
            "Frames dispatched and not yet back, over running jobs.",
            running.iter().map(|v| v.progress.in_flight).sum::<u64>() as f64,
        );
        let live = |i: usize| {
            s.retired.live[i]
                + s.jobs.values().filter(|e| e.counted).map(|e| live_counts(&e.view.progress)[i]).sum::<u64>()
        };
        e.single(Kind::Counter, "vpd_live_frames_read_total", "Frames read from live inputs.", live(0) as f64);
        e.single(
            Kind::Counter,
            "vpd_live_frames_dropped_total",
            "Frames of live inputs dropped before dispatch to keep their latency bounded.",
            live(1) as f64,
        );
        e.single(
            Kind::Counter,
            "vpd_live_input_losses_total",
            "Times a live input was lost and opened again.",
            live(2) as f64,
        );
        let running_live: Vec<(&str, &crate::metrics::LiveSummary)> = s
            .jobs
            .iter()
            .filter(|(_, e)| e.view.status == JobState::Running)
            .filter_map(|(id, e)| Some((id.as_str(), e.view.progress.live.as_deref()?)))
            .collect();
        for (name, quantile, pick) in [
            ("vpd_live_latency_p50_seconds", "median", (|p: &crate::metrics::Percentiles| p.p50) as fn(&_) -> f64),
            ("vpd_live_latency_p99_seconds", "99th percentile", |p| p.p99),
        ] {
            let samples: Vec<(&str, f64)> =
                running_live.iter().map(|(id, l)| (*id, pick(&l.latency_ms) / 1e3)).collect();
            let help =
                format!("Running live jobs' {quantile} latency, from a packet read to its frame's packet written.");
            e.labelled(Kind::Gauge, name, &help, "job", &samples);
        }
        let seen = s.workers_seen.values().filter(|t| t.elapsed() < WORKER_SEEN_FOR).count();
        e.single(Kind::Gauge, "vpd_workers_seen", "Workers that processed a frame in the last 5 minutes.", seen as f64);
        if let Some(depth) = s.link.queue_depth {
            e.single(
                Kind::Gauge,
                "vpd_tasks_queue_depth",
                "Frame tasks waiting in the RabbitMQ task queue.",
                f64::from(depth),
            );
        }
        if let Some(up) = s.link.broker_connected {
            e.single(
                Kind::Gauge,
                "vpd_broker_connected",
                "1 while the events connection to RabbitMQ is up.",
                f64::from(u8::from(up)),
            );
        }
        e.finish()
    }
}

impl State {
    fn entry(&mut self, id: &JobId) -> &mut Entry {
        if !self.jobs.contains_key(id) {
            self.order.push_back(id.clone());
            let entry = Entry {
                view: JobView::new(id),
                thumbnail: None,
                last: None,
                heard: Instant::now(),
                samples: Charts::default(),
                counted: true,
            };
            self.jobs.insert(id.clone(), entry);
            self.evict();
        }
        self.jobs.get_mut(id).expect("inserted above")
    }

    /// Drops the oldest finished jobs beyond [`MAX_JOBS`], keeping their counts.
    fn evict(&mut self) {
        while self.jobs.len() > MAX_JOBS {
            let Some(pos) =
                self.order.iter().position(|id| self.jobs.get(id).is_some_and(|e| e.view.status.is_final()))
            else {
                return; // all running: keep them
            };
            let id = self.order.remove(pos).expect("position just found");
            if let Some(e) = self.jobs.remove(&id).filter(|e| e.counted) {
                self.retired.retire(&e.view.progress);
            }
        }
    }

    fn apply(&mut self, event: &JobEvent) -> Update {
        let id = event.job().clone();
        let e = self.entry(&id);
        e.heard = Instant::now();
        if e.view.status.is_final() && !matches!(event, JobEvent::Started { .. } | JobEvent::Frame { .. }) {
            // A job ends once: a late snapshot, a repeated end, or the real end of a job
            // this board had given up on changes nothing and is not counted again.
            return Update::Job(Box::new(e.view.clone()));
        }
        match event {
            JobEvent::Queued { filters, .. } => {
                let v = &mut self.entry(&id).view;
                v.status = JobState::Queued;
                v.progress.in_flight = 0;
                (v.fps, v.eta_seconds) = (0.0, None);
                if v.filters.is_empty() {
                    v.filters = filters.clone();
                }
            }
            JobEvent::Started { filters, video, .. } => self.started(&id, filters, video),
            JobEvent::Progress { progress, .. } => self.progressed(&id, progress),
            JobEvent::Frame { index, jpeg, .. } => {
                let e = self.entry(&id);
                e.thumbnail = Some(jpeg.clone());
                e.view.frame_index = Some(*index);
                return Update::Frame { job: id, index: *index };
            }
            JobEvent::Done { summary, latency, .. } => self.done(&id, summary, latency),
            JobEvent::Failed { error, .. } => {
                self.outcomes[1] += 1;
                let v = &mut self.entry(&id).view;
                v.status = JobState::Failed;
                v.error = Some(error.clone());
                v.progress.in_flight = 0;
                v.eta_seconds = None;
            }
            JobEvent::Cancelled { .. } => {
                self.outcomes[2] += 1;
                let v = &mut self.entry(&id).view;
                v.status = JobState::Cancelled;
                v.progress.in_flight = 0;
                v.eta_seconds = None;
            }
            JobEvent::Paused { .. } => {
                let v = &mut self.entry(&id).view;
                v.status = JobState::Paused;
                v.progress.in_flight = 0;
                v.fps = 0.0;
                v.eta_seconds = None;
            }
        }
        let view = self.jobs.get(&id).map(|e| e.view.clone()).unwrap_or_else(|| JobView::new(&id));
        Update::Job(Box::new(view))
    }

    /// Job `id` (re)started on `video`.
    fn started(&mut self, id: &JobId, filters: &str, video: &VideoInfo) {
        let e = self.entry(id);
        // A job started again (resumed after a pause) keeps what it did before in the
        // counters; one this process resumes from the store is counted from here.
        let before = std::mem::replace(&mut e.counted, true).then(|| e.view.progress.clone());
        if let Some(p) = before {
            self.retired.retire(&p);
        }
        let e = self.entry(id);
        e.view = JobView {
            filters: filters.to_string(),
            progress: Progress { total: video.frame_count, ..Progress::default() },
            width: video.width,
            height: video.height,
            video_fps: video.fps,
            ..JobView::new(id)
        };
        e.thumbnail = None;
        e.last = None;
        // The charts show this run: a resumed job's times start again from 0.
        e.samples = Charts::default();
    }

    /// Job `id`'s numbers now: its speed and each worker's from the last snapshot.
    fn progressed(&mut self, id: &JobId, p: &Progress) {
        let now = Instant::now();
        for w in p.workers.keys() {
            self.workers_seen.insert(w.to_string(), now);
        }
        let e = self.entry(id);
        let v = &mut e.view;
        // Snapshots may overtake each other on the way: done never goes back.
        let done = v.progress.done.max(p.done);
        let total = p.total.or(v.progress.total);
        v.progress = Progress { done, total, ..p.clone() };
        if let Some(last) = &e.last {
            let dt = p.elapsed_ms.saturating_sub(last.elapsed_ms) as f64 / 1000.0;
            if dt >= 0.05 {
                v.fps = smooth(v.fps, p.done.saturating_sub(last.done) as f64 / dt);
                for (w, n) in &p.workers {
                    let before = last.workers.get(w).copied().unwrap_or(0);
                    let wv = v.workers.entry(w.to_string()).or_default();
                    wv.fps = smooth(wv.fps, n.saturating_sub(before) as f64 / dt);
                }
            }
        }
        for (w, n) in &p.workers {
            v.workers.entry(w.to_string()).or_default().frames = *n;
        }
        if p.latency.is_empty() {
            // A snapshot without latencies (an older sender's) keeps the bars known so far.
            v.progress.latency = std::mem::take(&mut e.samples.latency);
        }
        e.samples.latency = v.progress.latency.clone();
        if e.last.as_ref().is_none_or(|l| p.elapsed_ms > l.elapsed_ms) && v.fps > 0.0 {
            e.samples.sample(p.elapsed_ms as f64 / 1000.0, v.fps);
        }
        v.percent = percent(done, total);
        v.eta_seconds = match (total, v.fps > 0.0) {
            (Some(total), true) => Some(total.saturating_sub(done) as f64 / v.fps),
            _ => None,
        };
        e.last = Some(p.clone());
    }

    /// Job `id` finished with `summary`.
    fn done(&mut self, id: &JobId, summary: &JobSummary, latency: &Buckets) {
        self.outcomes[0] += 1;
        self.latency.add(latency);
        self.durations.observe(DURATION_BOUNDS, summary.wall_seconds);
        let now = Instant::now();
        for w in summary.workers.keys() {
            self.workers_seen.insert(w.clone(), now);
        }
        let e = self.entry(id);
        e.samples.latency = latency.bars();
        let v = &mut e.view;
        v.status = JobState::Done;
        // A job resumed from committed segments: this run processed what came after
        // them, in the same terms as its Started and Progress events.
        let resumed = summary.resumed_at_frame.unwrap_or(0);
        v.progress = summary.progress();
        v.progress.latency = latency.bars();
        v.progress.done = v.progress.done.saturating_sub(resumed);
        v.progress.total = v.progress.total.map(|t| t.saturating_sub(resumed));
        v.percent = 100.0;
        v.fps = summary.fps;
        v.eta_seconds = None;
        v.workers = summary
            .workers
            .iter()
            .map(|(w, n)| {
                (w.clone(), WorkerView { frames: *n, fps: *n as f64 / summary.wall_seconds.max(f64::EPSILON) })
            })
            .collect();
        if v.filters.is_empty() {
            v.filters = summary.filters.clone();
        }
        v.summary = Some(summary.clone());
    }
}

impl JobView {
    /// A job as the job store recorded it.
    fn from_record(r: &JobRecord) -> Self {
        // A job the store has as running is resumed by the server that remembers it (its
        // events follow), or shown failed by a preview once its server stays silent.
        let status = r.state;
        let progress = r.summary.as_ref().map(JobSummary::progress).unwrap_or_default();
        JobView {
            status,
            filters: r.spec.chain.to_string(),
            percent: if status == JobState::Done { 100.0 } else { percent(progress.done, progress.total) },
            fps: r.summary.as_ref().map_or(0.0, |s| s.fps),
            width: r.summary.as_ref().map_or(0, |s| s.width),
            height: r.summary.as_ref().map_or(0, |s| s.height),
            video_fps: r.summary.as_ref().map_or(0.0, |s| s.video_fps),
            progress,
            summary: r.summary.clone(),
            error: r.error.clone(),
            ..JobView::new(&r.id)
        }
    }

    fn new(id: &JobId) -> Self {
        JobView {
            id: id.clone(),
            status: JobState::Running,
            filters: String::new(),
            progress: Progress::default(),
            percent: 0.0,
            fps: 0.0,
            eta_seconds: None,
            width: 0,
            height: 0,
            video_fps: 0.0,
            workers: BTreeMap::new(),
            frame_index: None,
            summary: None,
            error: None,
        }
    }
}

/// An exponential moving average that starts at the first sample.
fn smooth(previous: f64, sample: f64) -> f64 {
    if previous == 0.0 { sample } else { 0.6 * previous + 0.4 * sample }
}

fn percent(done: u64, total: Option<u64>) -> f64 {
    match total {
        Some(t) if t > 0 => (100.0 * done as f64 / t as f64).min(100.0),
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::WorkerId;

    fn progress(done: u64, elapsed_ms: u64, workers: &[(&str, u64)]) -> JobEvent {
        JobEvent::Progress {
            job: "j".parse().unwrap(),
            progress: Progress {
                done,
                total: Some(100),
                elapsed_ms,
                retries: 1,
                in_flight: 4,
                workers: workers.iter().map(|(w, n)| (WorkerId::new(*w), *n)).collect(),
                ..Default::default()
            },
        }
    }

    fn summary(frames: u64) -> JobSummary {
        serde_json::from_value(serde_json::json!({
            "input": "i", "output": "o", "filters": "edges", "codec": "mp4v", "width": 64, "height": 48,
            "video_fps": 25.0, "frames": frames, "failed_frames": 1, "retries": 2, "duplicates": 0,
            "wall_seconds": 4.0, "fps": frames as f64 / 4.0,
            "filter_latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0},
            "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0},
            "workers": {"a": frames - 10, "b": 10}, "wire_bytes_sent": 0, "wire_bytes_received": 0
        }))
        .unwrap()
    }

    #[test]
    fn failed_and_cancelled_jobs_end_and_are_counted_by_outcome() {
        let b = Board::new();
        let started = |job: &str| JobEvent::Started {
            job: job.parse().unwrap(),
            filters: "edges".into(),
            video: VideoInfo { frame_count: Some(100), width: 64, height: 48, fps: 25.0 },
        };
        b.apply(&started("j1"));
        b.apply(&started("j2"));
        b.apply(&progress(10, 500, &[("a", 10)]));
        // `j`, first heard of by its progress (a preview started mid-job), runs too.
        assert!(b.metrics().lines().any(|l| l == "vpd_jobs_running 3"));
        assert!(b.metrics().lines().any(|l| l == "vpd_frames_in_flight 4"));
        b.apply(&JobEvent::Failed { job: "j1".parse().unwrap(), error: "in.mp4: truncated".into() });
        b.apply(&JobEvent::Cancelled { job: "j2".parse().unwrap() });
        let (j1, j2) = (b.job("j1").unwrap(), b.job("j2").unwrap());
        assert_eq!((j1.status, j1.error.as_deref()), (JobState::Failed, Some("in.mp4: truncated")));
        assert_eq!((j2.status, j2.eta_seconds), (JobState::Cancelled, None));
        let m = b.metrics();
        for line in [
            "vpd_jobs_total{outcome=\"done\"} 0",
            "vpd_jobs_total{outcome=\"failed\"} 1",
            "vpd_jobs_total{outcome=\"cancelled\"} 1",
        ] {
            assert!(m.lines().any(|l| l == line), "{line} in\n{m}");
        }
        // A progress snapshot that arrives after the end changes nothing.
        b.apply(&JobEvent::Progress {
            job: "j1".parse().unwrap(),
            progress: Progress { done: 50, ..Default::default() },
        });
        assert_eq!(b.job("j1").unwrap(), j1);
    }

    #[test]
    fn silent_running_jobs_expire_as_failed() {
        let b = Board::new();
        b.apply(&progress(10, 500, &[("a", 10)]));
        b.expire_silent(Duration::from_secs(60));
        assert_eq!(b.job("j").unwrap().status, JobState::Running, "heard of just now");
        let mut updates = b.subscribe();
        b.expire_silent(Duration::ZERO);
        let j = b.job("j").unwrap();
        assert_eq!(j.status, JobState::Failed);
        assert!(j.error.unwrap().contains("its server stopped"));
        assert!(matches!(updates.try_recv(), Ok(Update::Job(v)) if v.status == JobState::Failed), "streams hear it");
        assert!(b.metrics().lines().any(|l| l == "vpd_jobs_running 0"));
        // Should the job end after all, it is not counted twice.
        b.apply(&JobEvent::Done {
            job: "j".parse().unwrap(),
            summary: Box::new(summary(100)),
            latency: Buckets::empty(LATENCY_BOUNDS),
        });
        let m = b.metrics();
        for line in ["vpd_jobs_total{outcome=\"done\"} 0", "vpd_jobs_total{outcome=\"failed\"} 1"] {
            assert!(m.lines().any(|l| l == line), "{line} in\n{m}");
        }
    }

    #[test]
    fn a_paused_job_stays_live_and_its_counts_survive_a_restart_of_its_pipeline() {
        let b = Board::new();
        let started = || JobEvent::Started {
            job: "j".parse().unwrap(),
            filters: "edges".into(),
            video: VideoInfo { frame_count: Some(100), width: 64, height: 48, fps: 25.0 },
        };
        let progress = |done| JobEvent::Progress {
            job: "j".parse().unwrap(),
            progress: Progress { done, total: Some(100), in_flight: 3, ..Progress::default() },
        };
        b.apply(&started());
        b.apply(&progress(40));
        b.apply(&JobEvent::Paused { job: "j".parse().unwrap() });
        let v = b.job("j").unwrap();
        assert_eq!((v.status, v.progress.in_flight), (JobState::Paused, 0));
        // Resumed: it waits for a job slot, shown queued, not running; then its pipeline starts
        // again from its committed frames, and what it did before stays counted.
        b.apply(&JobEvent::Queued { job: "j".parse().unwrap(), filters: "edges".into() });
        let v = b.job("j").unwrap();
        assert_eq!((v.status, v.progress.done, v.fps), (JobState::Queued, 40, 0.0));
        assert!(b.metrics().lines().any(|l| l == "vpd_jobs_running 0"), "{}", b.metrics());
        b.apply(&started());
        assert_eq!(b.job("j").unwrap().status, JobState::Running);
        b.apply(&progress(10));
        assert!(b.metrics().lines().any(|l| l == "vpd_frames_processed_total 50"), "{}", b.metrics());
        // A paused job can be cancelled.
        b.apply(&JobEvent::Paused { job: "j".parse().unwrap() });
        b.apply(&JobEvent::Cancelled { job: "j".parse().unwrap() });
        assert_eq!(b.job("j").unwrap().status, JobState::Cancelled);
    }

    #[test]
    fn progress_gives_speed_eta_and_per_worker_rates() {
        let b = Board::new();
        b.apply(&JobEvent::Started {
            job: "j".parse().unwrap(),
            filters: "edges".into(),
            video: VideoInfo { frame_count: Some(100), width: 64, height: 48, fps: 25.0 },
        });
        b.apply(&progress(10, 1000, &[("a", 6), ("b", 4)]));
        b.apply(&progress(30, 2000, &[("a", 18), ("b", 12)]));
        let v = b.job("j").unwrap();
        assert_eq!((v.progress.done, v.percent, v.progress.in_flight, v.progress.retries), (30, 30.0, 4, 1));
        assert!((v.fps - 20.0).abs() < 1e-9, "20 frames in a second: {}", v.fps);
        assert!((v.eta_seconds.unwrap() - 3.5).abs() < 1e-9, "70 frames left at 20 fps");
        assert!((v.workers["a"].fps - 12.0).abs() < 1e-9 && v.workers["b"].frames == 12);
    }

    #[test]
    fn done_takes_the_summary_and_metrics_agree_with_it() {
        let b = Board::new();
        b.apply(&progress(50, 1000, &[("a", 50)]));
        let mut latency = Buckets::empty(LATENCY_BOUNDS);
        latency.observe(LATENCY_BOUNDS, 0.02);
        b.apply(&JobEvent::Done { job: "j".parse().unwrap(), summary: Box::new(summary(100)), latency });
        let v = b.job("j").unwrap();
        assert_eq!(
            (v.status, v.progress.done, v.progress.failed, v.progress.retries, v.percent),
            (JobState::Done, 100, 1, 2, 100.0)
        );
        assert_eq!(v.filters, "edges", "known from the summary even without a started event");
        let m = b.metrics();
        for line in [
            "vpd_frames_processed_total 100",
            "vpd_frames_failed_total 1",
            "vpd_frames_retried_total 2",
            "vpd_jobs_total{outcome=\"done\"} 1",
            "vpd_jobs_running 0",
            "vpd_frame_latency_seconds_bucket{le=\"0.025\"} 1",
            "vpd_job_duration_seconds_bucket{le=\"5\"} 1",
            "vpd_workers_seen 2",
        ] {
            assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
        }
        // A progress snapshot arriving late does not undo the end.
        b.apply(&progress(60, 1500, &[]));
        assert_eq!(b.job("j").unwrap().progress.done, 100);
    }

    #[test]
    fn memory_is_bounded_and_counters_never_go_down() {
        let b = Board::new();
        for i in 0..(MAX_JOBS + 50) {
            let job: JobId = format!("j{i}").parse().unwrap();
            let mut s = summary(20);
            s.failed_frames = 0;
            s.retries = 0;
            b.apply(&JobEvent::Done { job, summary: Box::new(s), latency: Buckets::empty(LATENCY_BOUNDS) });
        }
        assert_eq!(b.jobs().len(), MAX_JOBS);
        assert_eq!(b.jobs()[0].id.as_str(), format!("j{}", MAX_JOBS + 49), "newest first");
        let processed = format!("vpd_frames_processed_total {}", 20 * (MAX_JOBS + 50));
        assert!(b.metrics().lines().any(|l| l == processed));
    }

    #[test]
    fn streams_hear_every_change() {
        let b = Board::new();
        let mut rx = b.subscribe();
        b.apply(&progress(1, 10, &[]));
        b.apply(&JobEvent::Frame { job: "j".parse().unwrap(), index: 0, jpeg: vec![1, 2] });
        b.set_link(Link { broker_connected: Some(false), queue_depth: None });
        assert!(matches!(rx.try_recv(), Ok(Update::Job(v)) if v.progress.done == 1));
        assert!(matches!(rx.try_recv(), Ok(Update::Frame { index: 0, .. })));
        assert!(matches!(rx.try_recv(), Ok(Update::Link(Link { broker_connected: Some(false), .. }))));
        assert_eq!(b.thumbnail("j"), Some(vec![1, 2]));
    }
}

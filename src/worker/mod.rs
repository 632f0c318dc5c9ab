//! `vpd worker`: takes frame tasks from RabbitMQ, filters them on a pool of threads, publishes
//! each result to its job's reply queue, then acknowledges the task.
//!
//! ```text
//!  NS.tasks ─▶ async loop ─bodies─▶ filter threads (decode, filter, encode)
//!                 ▲    ▲                  │
//!  NS.events ─────┘    └──── done ────────┘   publish result (confirmed) → ack task
//! ```
//!
//! Guarantees: a task is acked only after its result is confirmed by the broker, so a worker
//! that dies loses nothing (RabbitMQ redelivers what it held). A task whose filters fail is
//! published again, up to [`MAX_ATTEMPTS`] in all; then its failure is reported to the server
//! (which writes the original frame) and the task is dead-lettered to `NS.tasks.dead`. Tasks
//! of jobs announced cancelled on `NS.events` are acked and skipped once the job's reply queue
//! is confirmed gone: anyone who can publish an event can claim a cancel, but only the server
//! can end its job. SIGTERM or SIGINT: stop consuming, finish and ack the tasks in hand, exit.

mod stats;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use crossbeam_channel::{Receiver, bounded};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::{Broker, BrokerUrls, Message, MessageKind, Publisher, QueueTypeMismatch, Topology};
use crate::filters::FilterEnv;
use crate::protocol::event::JobEvent;
use crate::protocol::job::JobId;
use crate::protocol::segment::{
    self, SEGMENT_VERSION, SegmentOutcome, SegmentProgress, SegmentRef, SegmentResult, SegmentTask,
};
use crate::protocol::task::{Correlation, FrameOutcome};
use crate::protocol::wire::{self, Encoder, TransportEncoding};
use crate::transport::{ProcessorCache, execute};
pub use stats::WorkerStats;

/// Deliveries of one task, first try included, before its failure is final.
pub const MAX_ATTEMPTS: u32 = 3;
/// How long a stopping worker waits for deliveries sent before its cancel reached the broker.
const CANCEL_SETTLE: Duration = Duration::from_secs(2);
/// Cancelled job ids remembered (oldest forgotten first).
const CANCELLED_MEMORY: usize = 4096;
/// How long reading a segment task from its stream may take.
const FETCH_PATIENCE: Duration = Duration::from_secs(120);
/// How often a claimed, unconfirmed cancel is checked against the job's reply queue.
const CANCEL_RECHECK: Duration = Duration::from_secs(1);

/// Everything `vpd worker` needs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The broker.
    pub amqp_url: BrokerUrls,
    /// Filter threads, and tasks held at once (prefetch).
    pub threads: NonZeroUsize,
    /// Queue and exchange namespace.
    pub topology: Topology,
    /// Files the filters need.
    pub filter_env: FilterEnv,
    /// This worker's id in summaries: `hostname:pid`.
    pub id: String,
    /// Serve `/metrics` and `/healthz` here.
    pub metrics: Option<SocketAddr>,
    /// The largest frame taken, in pixels: larger ones are reported failed before a byte of
    /// them is decoded.
    pub max_frame_pixels: u64,
}

/// A task handed to a filter thread.
struct Work {
    seq: u64,
    /// A frame's task or a segment's.
    kind: MessageKind,
    body: Vec<u8>,
    retries: u32,
}

/// What a filter thread made of a task.
enum Done {
    /// The result body to publish.
    Result {
        seq: u64,
        body: Vec<u8>,
        /// The largest body to publish as it is; a larger one goes on a stream (segments).
        limit: Option<usize>,
    },
    /// How far into a segment task the thread is: published as it is, never waited for.
    Progress { seq: u64, body: Vec<u8> },
    /// The filters failed; the task body comes back for a retry.
    Failed { seq: u64, reason: String, task: Vec<u8> },
    /// The body does not decode: no retry can help.
    Malformed { seq: u64, error: String },
}

/// Runs a worker until `shutdown` fires, serving its `/metrics` on `metrics` when given.
pub async fn run(
    cfg: WorkerConfig,
    metrics: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // An unreachable broker at start is an error, not a silent retry loop.
    let mut broker = Broker::connect(&cfg.amqp_url, &format!("vpd-worker {}", cfg.id)).await?;
    let stats = Arc::new(WorkerStats::default());
    stats.set_connected(true);
    let http = metrics.map(|listener| {
        let s = stats.clone();
        let site = crate::http::Site::metrics_only(move || s.render());
        tokio::spawn(crate::http::serve(listener, site, shutdown.clone()))
    });
    let (work_tx, work_rx) = bounded::<Work>(cfg.threads.get());
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(cfg.threads.get() * 2);
    let threads: Vec<_> = (0..cfg.threads.get())
        .map(|i| {
            let (rx, tx, env, id) = (work_rx.clone(), done_tx.clone(), cfg.filter_env.clone(), cfg.id.clone());
            let (stats, max_pixels) = (stats.clone(), cfg.max_frame_pixels);
            std::thread::Builder::new()
                .name(format!("vpd-filter-{i}"))
                .spawn(move || filter_thread(rx, tx, env, (&id, max_pixels), &stats))
        })
        .collect::<Result<_, _>>()
        .context("spawning filter threads")?;
    drop((work_rx, done_tx));
    info!(worker = %cfg.id, threads = cfg.threads.get(), broker = broker.url(), "worker started");
    crate::service::ready(&format!("worker {} taking tasks", cfg.id));
    let watchdog = tokio::spawn(crate::service::watchdog(shutdown.clone()));

    let mut cancelled = Cancelled::default();
    loop {
        match session(&cfg, &broker, &work_tx, &mut done_rx, &mut cancelled, &stats, &shutdown).await {
            Ok(()) => break,
            Err(e) if shutdown.is_cancelled() => {
                warn!(error = %format!("{e:#}"), "stopping with the broker gone");
                break;
            }
            Err(e) if e.downcast_ref::<QueueTypeMismatch>().is_some() => return Err(e),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "lost RabbitMQ; reconnecting (tasks in hand go back to the queue)");
                stats.set_connected(false);
                stats.set_in_hand(0);
                broker = reconnect(&cfg, &shutdown).await?;
                stats.set_connected(true);
            }
        }
    }
    crate::service::stopping();
    watchdog.abort();
    drop(work_tx);
    for t in threads {
        let _ = t.join();
    }
    broker.close().await;
    if let Some(http) = http {
        let _ = http.await;
    }
    info!(worker = %cfg.id, "worker stopped");
    Ok(())
}

async fn reconnect(cfg: &WorkerConfig, shutdown: &CancellationToken) -> anyhow::Result<Broker> {
    let name = format!("vpd-worker {}", cfg.id);
    crate::broker::retry(None, shutdown, || Broker::connect(&cfg.amqp_url, &name)).await
}

/// Job ids announced cancelled, remembered in a bounded window.
///
/// An announcement is a claim: its tasks are skipped only once the job's reply queue is seen
/// gone (the server deletes it when the job ends). Until then they are processed as usual,
/// and the claim is re-checked at most every [`CANCEL_RECHECK`], so a forged event costs one
/// queue look-up a second and stalls nothing.
#[derive(Default)]
struct Cancelled {
    /// Job → confirmed gone, or when the claim was last checked.
    jobs: HashMap<JobId, Claim>,
    order: VecDeque<JobId>,
}

#[derive(Clone, Copy)]
enum Claim {
    Confirmed,
    Unconfirmed { checked: Option<tokio::time::Instant> },
}

impl Cancelled {
    fn insert(&mut self, job: JobId) {
        if self.jobs.contains_key(&job) {
            return;
        }
        self.jobs.insert(job.clone(), Claim::Unconfirmed { checked: None });
        self.order.push_back(job);
        if self.order.len() > CANCELLED_MEMORY
            && let Some(old) = self.order.pop_front()
        {
            self.jobs.remove(&old);
        }
    }

    /// Whether the task of `job`, answering to `reply_to`, is to be skipped.
    async fn skips(&mut self, broker: &Broker, job: &str, reply_to: Option<&str>) -> bool {
        let (Some(claim), Some(reply_to)) = (self.jobs.get_mut(job), reply_to) else { return false };
        match *claim {
            Claim::Confirmed => true,
            Claim::Unconfirmed { checked: Some(at) } if at.elapsed() < CANCEL_RECHECK => false,
            Claim::Unconfirmed { .. } => match broker.queue_exists(reply_to).await {
                Ok(false) => {
                    info!(%job, "job cancelled; skipping its tasks");
                    *claim = Claim::Confirmed;
                    true
                }
                Ok(true) => {
                    warn!(%job, "a cancel was announced but the job's reply queue is still there; processing its tasks");
                    *claim = Claim::Unconfirmed { checked: Some(tokio::time::Instant::now()) };
                    false
                }
                Err(e) => {
                    warn!(%job, error = %format!("{e:#}"), "cannot check a cancelled job's reply queue; processing its tasks");
                    *claim = Claim::Unconfirmed { checked: Some(tokio::time::Instant::now()) };
                    false
                }
            },
        }
    }
}

/// Consumes tasks over one connection until shutdown (`Ok`) or until the connection breaks.
async fn session(
    cfg: &WorkerConfig,
    broker: &Broker,
    work: &crossbeam_channel::Sender<Work>,
    done: &mut mpsc::Receiver<Done>,
    cancelled: &mut Cancelled,
    stats: &Arc<WorkerStats>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let t = &cfg.topology;
    broker.declare(t).await?;
    let prefetch = u16::try_from(cfg.threads.get()).unwrap_or(u16::MAX);
    let mut tasks = broker.consume_tasks(t, prefetch, &format!("worker {}", cfg.id)).await?;
    let mut events = broker.consume_events(t, &format!("worker-events {}", cfg.id)).await?;
    let publisher = std::sync::Arc::new(broker.publisher().await?);
    let mut in_hand: HashMap<u64, Message> = HashMap::new();
    let mut acking: JoinSet<anyhow::Result<()>> = JoinSet::new();
    // Segment tasks being read from their streams.
    let mut fetching: JoinSet<(u64, u32, anyhow::Result<Vec<u8>>)> = JoinSet::new();
    let mut seq = 0u64;
    let mut draining = false;
    // Deliveries can still come after the cancel: those the broker sent before it. They are
    // in hand too, and finished like the rest, until the subscription ends.
    let mut consuming = true;
    let mut drain_deadline = tokio::time::Instant::now();
    loop {
        if draining && !consuming && in_hand.is_empty() && acking.is_empty() && fetching.is_empty() {
            return Ok(());
        }
        stats.set_in_hand(in_hand.len() + acking.len());
        tokio::select! {
            _ = shutdown.cancelled(), if !draining => {
                info!(in_hand = in_hand.len(), "stopping: finishing the tasks in hand");
                tasks.cancel().await?;
                draining = true;
                drain_deadline = tokio::time::Instant::now() + CANCEL_SETTLE;
            }
            // Should the subscription not end, what still comes goes back to the queue when
            // the channel closes.
            _ = tokio::time::sleep_until(drain_deadline), if draining && consuming => consuming = false,
            message = tasks.next(), if consuming => {
                let Some(message) = message else {
                    if draining {
                        consuming = false;
                        continue;
                    }
                    anyhow::bail!("RabbitMQ ended the task subscription");
                };
                let mut m = message?;
                // The correlation id says whose task it is; the body is opened once, by a filter thread.
                let Some(job) = m.correlation.as_ref().map(|c| c.job.clone()) else {
                    warn!("dead-lettering a task that names no frame of a job");
                    m.reject(false).await?;
                    stats.failed();
                    continue;
                };
                if cancelled.skips(broker, &job, m.reply_to.as_deref()).await {
                    m.ack().await?;
                    continue;
                }
                seq += 1;
                let body = std::mem::take(&mut m.body);
                let retries = m.attempt + u32::from(m.redelivered);
                if m.redelivered {
                    stats.redelivered();
                }
                let kind = m.kind;
                if kind == MessageKind::SegmentRef {
                    // The task is on a stream: read it there (the reference stays in hand, to be
                    // published again should the segment fail).
                    m.body.clone_from(&body);
                    in_hand.insert(seq, m);
                    let broker = broker.clone();
                    fetching.spawn(async move { (seq, retries, fetch_segment(&broker, &body).await) });
                    continue;
                }
                in_hand.insert(seq, m);
                // Never blocks: at most `prefetch` tasks are in hand, and the channel holds that many.
                work.send(Work { seq, kind, body, retries }).context("the filter threads stopped")?;
            }
            Some(fetched) = fetching.join_next() => {
                let (seq, retries, fetched) = fetched?;
                match fetched {
                    Ok(body) => {
                        work.send(Work { seq, kind: MessageKind::SegmentTask, body, retries })
                            .context("the filter threads stopped")?;
                    }
                    Err(e) => {
                        let Some(m) = in_hand.remove(&seq) else { continue };
                        let d = Done::Failed { seq, reason: format!("{e:#}"), task: Vec::new() };
                        let (publisher, topology, stats, broker) = (publisher.clone(), t.clone(), stats.clone(), broker.clone());
                        acking.spawn(async move { finish(&broker, &publisher, &topology, m, d, &stats).await });
                    }
                }
            }
            event = events.next() => match event {
                Some(Ok(m)) => {
                    if let Ok(JobEvent::Cancelled { job }) = serde_json::from_slice::<JobEvent>(&m.body) {
                        cancelled.insert(job);
                    }
                }
                Some(Err(e)) => return Err(e),
                None => anyhow::bail!("the events subscription was cancelled"),
            },
            Some(d) = done.recv() => {
                let seq = match &d {
                    Done::Progress { seq, body } => {
                        // Best effort, unconfirmed: a lost word on progress only makes a bar
                        // wait for the result.
                        if let Some(m) = in_hand.get(seq)
                            && let (Some(reply_to), Some(correlation)) = (&m.reply_to, &m.correlation)
                        {
                            drop(publisher.result(t, MessageKind::SegmentProgress, reply_to, correlation, body).await?);
                        }
                        continue;
                    }
                    Done::Result { seq, .. } | Done::Failed { seq, .. } | Done::Malformed { seq, .. } => *seq,
                };
                // A task from before a reconnect: the broker already took it back.
                let Some(m) = in_hand.remove(&seq) else { continue };
                let (publisher, topology, stats, broker) = (publisher.clone(), t.clone(), stats.clone(), broker.clone());
                acking.spawn(async move { finish(&broker, &publisher, &topology, m, d, &stats).await });
            }
            Some(finished) = acking.join_next() => finished??,
        }
    }
}

/// Publishes what became of a task, then acks (or dead-letters) it.
async fn finish(
    broker: &Broker,
    publisher: &Publisher,
    t: &Topology,
    m: Message,
    done: Done,
    stats: &WorkerStats,
) -> anyhow::Result<()> {
    let reply_to = m.reply_to.clone().unwrap_or_default();
    let Some(correlation) = m.correlation.clone() else {
        return m.reject(false).await; // never taken in hand without one
    };
    let segment = matches!(m.kind, MessageKind::SegmentTask | MessageKind::SegmentRef);
    let result_kind = if segment { MessageKind::SegmentResult } else { MessageKind::Result };
    // A segment read from a stream is published again as its reference.
    let task_of = |task: Vec<u8>| if m.kind == MessageKind::SegmentRef { m.body.clone() } else { task };
    match done {
        // Progress never comes here: the session publishes it and keeps the task in hand.
        Done::Progress { .. } => Ok(()),
        Done::Result { body, limit, .. } => {
            let (kind, body) = match limit {
                Some(limit) if body.len() > limit => {
                    (MessageKind::SegmentRef, result_on_stream(broker, t, &correlation, &body, limit).await?)
                }
                _ => (result_kind, body),
            };
            if !publisher.result(t, kind, &reply_to, &correlation, &body).await?.accepted().await? {
                m.reject(true).await?; // the broker refused the result: let another try
                return Ok(());
            }
            m.ack().await?;
            stats.processed();
            Ok(())
        }
        Done::Failed { reason, task, .. } if m.attempt + 1 < MAX_ATTEMPTS => {
            let task = task_of(task);
            warn!(%correlation, %reason, attempt = m.attempt + 1, "filter failed; retrying the task");
            if !publisher.task(t, m.kind, &task, &reply_to, &correlation, m.attempt + 1).await?.accepted().await? {
                m.reject(true).await?;
                return Ok(());
            }
            m.ack().await?;
            stats.retried();
            Ok(())
        }
        Done::Failed { seq: _, reason, task: _ } => {
            warn!(%correlation, %reason, "filter failed on every attempt; reporting it and dead-lettering the task");
            report_failure(publisher, t, &m, &reply_to, &correlation, &reason).await?;
            m.reject(false).await?;
            stats.failed();
            Ok(())
        }
        Done::Malformed { error, .. } => {
            warn!(%correlation, %error, "undecodable task; dead-lettering it");
            report_failure(publisher, t, &m, &reply_to, &correlation, &error).await?;
            m.reject(false).await?;
            stats.failed();
            Ok(())
        }
    }
}

async fn report_failure(
    publisher: &Publisher,
    t: &Topology,
    m: &Message,
    reply_to: &str,
    correlation: &Correlation,
    reason: &str,
) -> anyhow::Result<()> {
    let (job, index) = (correlation.job.as_str(), correlation.index);
    let retries = m.attempt + u32::from(m.redelivered);
    let worker = crate::metrics::WorkerId::this_process().to_string();
    let (kind, body) = if matches!(m.kind, MessageKind::SegmentTask | MessageKind::SegmentRef) {
        let result = SegmentResult {
            version: SEGMENT_VERSION,
            job: job.to_string(),
            number: index,
            worker,
            retries,
            outcome: SegmentOutcome::Failed(reason.to_string()),
        };
        (MessageKind::SegmentResult, segment::encode(&result))
    } else {
        let mut enc = Encoder::new(TransportEncoding::Raw);
        let meta = wire::ResultMeta { job, index, worker: &worker, filter_us: 0, retries };
        (MessageKind::Result, wire::encode_result(&meta, Err(reason), None, &mut enc)?)
    };
    publisher.result(t, kind, reply_to, correlation, &body).await?.accepted().await?;
    Ok(())
}

/// A filter thread: decode, filter, encode, for as long as tasks come.
fn filter_thread(
    work: Receiver<Work>,
    done: mpsc::Sender<Done>,
    env: FilterEnv,
    (id, max_pixels): (&str, u64),
    stats: &WorkerStats,
) {
    let mut cache = ProcessorCache::new(env);
    let mut encoders: HashMap<String, Encoder> = HashMap::new();
    for Work { seq, kind, body, retries } in work {
        let outcome = if kind == MessageKind::SegmentTask {
            segment_task(seq, body, retries, &mut cache, (id, max_pixels), &done, stats)
        } else {
            frame_task(seq, body, retries, &mut cache, &mut encoders, id, max_pixels, stats)
        };
        if done.blocking_send(outcome).is_err() {
            return;
        }
    }
}

/// Puts a segment result too large for one message on a stream of its own; the reference to it.
async fn result_on_stream(
    broker: &Broker,
    t: &Topology,
    correlation: &Correlation,
    body: &[u8],
    limit: usize,
) -> anyhow::Result<Vec<u8>> {
    use sha2::Digest as _;
    static TRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = format!(
        "{}.{}",
        crate::metrics::WorkerId::this_process(),
        TRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let name = t.result_blob(&correlation.job, correlation.index, &unique);
    let parts = broker.put_blob(&name, body, limit).await?;
    let reference = SegmentRef {
        version: SEGMENT_VERSION,
        job: correlation.job.clone(),
        number: correlation.index,
        blob: name,
        parts: u32::try_from(parts)?,
        len: body.len() as u64,
        sha256: sha2::Sha256::digest(body).into(),
    };
    Ok(segment::encode(&reference))
}

/// Reads the segment task a reference body points to, checking its length and its SHA-256.
async fn fetch_segment(broker: &Broker, reference: &[u8]) -> anyhow::Result<Vec<u8>> {
    use sha2::Digest as _;
    let r: SegmentRef = segment::decode(reference, 4096)?;
    let len = usize::try_from(r.len).ok().filter(|&n| n <= segment::MAX_TASK_BYTES);
    let len = len.ok_or_else(|| anyhow::anyhow!("a {}-byte segment task is over what a worker reads", r.len))?;
    let body = broker.get_blob(&r.blob, r.parts as usize, len, FETCH_PATIENCE).await?;
    anyhow::ensure!(
        body.len() == len && <[u8; 32]>::from(sha2::Sha256::digest(&body)) == r.sha256,
        "{}: not the segment task its reference describes",
        r.blob
    );
    Ok(body)
}

/// Decodes, filters and encodes one frame task.
#[allow(clippy::too_many_arguments)]
fn frame_task(
    seq: u64,
    body: Vec<u8>,
    retries: u32,
    cache: &mut ProcessorCache,
    encoders: &mut HashMap<String, Encoder>,
    id: &str,
    max_pixels: u64,
    stats: &WorkerStats,
) -> Done {
    match wire::decode_task(&body, max_pixels) {
        Err(e) => Done::Malformed { seq, error: e.to_string() },
        Ok((h, frame, previous)) => {
            // Lines about this task name its job and frame, whichever job the thread serves next.
            let _task = tracing::info_span!("task", job = %h.job, frame = h.index).entered();
            let (outcome, time) = match cache.get(&h.chain) {
                Ok(p) => execute(p, &frame, previous.as_ref()),
                Err(e) => (FrameOutcome::Failed(e.to_string()), Duration::ZERO),
            };
            let encoder = encoders.entry(h.encoding.to_string()).or_insert_with(|| Encoder::new(h.encoding));
            let filter_us = time.as_micros() as u64;
            stats.filter_time(time);
            match outcome {
                FrameOutcome::Processed(out) => {
                    let meta = wire::ResultMeta { job: &h.job, index: h.index, worker: id, filter_us, retries };
                    // Against the task's frame: a result that is mostly its source travels as a delta.
                    match wire::encode_result(&meta, Ok(&out), Some(&frame), encoder) {
                        Ok(body) => Done::Result { seq, body, limit: None },
                        Err(e) => Done::Failed { seq, reason: e.to_string(), task: body },
                    }
                }
                FrameOutcome::Failed(reason) => Done::Failed { seq, reason, task: body },
            }
        }
    }
}

/// Decodes, filters and encodes one segment task, telling the session how far it is.
fn segment_task(
    seq: u64,
    body: Vec<u8>,
    retries: u32,
    cache: &mut ProcessorCache,
    (id, max_pixels): (&str, u64),
    done: &mpsc::Sender<Done>,
    stats: &WorkerStats,
) -> Done {
    let task: SegmentTask = match segment::decode(&body, segment::MAX_TASK_BYTES) {
        Ok(task) => task,
        Err(e) => return Done::Malformed { seq, error: e.to_string() },
    };
    let (w, h) = (task.input.stream.width, task.input.stream.height);
    if u64::from(w) * u64::from(h) > max_pixels {
        let error = wire::WireError::OverWorkerLimit(w, h, max_pixels).to_string();
        return Done::Malformed { seq, error };
    }
    let _task = tracing::info_span!("segment", job = %task.job, segment = task.input.number).entered();
    let (result, time) = crate::split::work::process(&task, cache, id, retries, |frames| {
        let progress = SegmentProgress {
            version: SEGMENT_VERSION,
            job: task.job.clone(),
            number: task.input.number,
            worker: id.to_string(),
            done: frames,
        };
        let _ = done.blocking_send(Done::Progress { seq, body: segment::encode(&progress) });
    });
    stats.filter_time(time);
    match result.outcome {
        SegmentOutcome::Failed(reason) => Done::Failed { seq, reason, task: body },
        SegmentOutcome::Encoded { .. } => {
            let limit = usize::try_from(task.max_message).ok();
            Done::Result { seq, body: segment::encode(&result), limit }
        }
    }
}

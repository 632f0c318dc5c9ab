//! The RabbitMQ transport: frame tasks to `NS.tasks`, results back on the job's reply queue.
//!
//! One [`Transport::serve`] call per job, on the pipeline's transport thread:
//!
//! ```text
//!  tasks ─▶ encoder thread ─bodies─▶ session (async, on the server's runtime) ─▶ NS.tasks
//!                                      │  keeps every outstanding body
//!  results ◀─ decoder threads ◀─bodies─┘◀── NS.reply.JOB
//! ```
//!
//! The session is where the guarantees live. It publishes with confirms; it keeps each
//! outstanding body until the frame's first result, re-dispatches a frame that is overdue
//! while other frames are still coming back (so that a hung worker cannot stall the job, and an
//! empty worker pool does not fill the queue with copies), and gives up on a frame after
//! [`MAX_DISPATCHES`], reporting it failed so that the original is written. When the connection
//! drops it reconnects for up to [`RECONNECT_FOR`] and re-publishes everything outstanding;
//! the pipeline drops the duplicates that may cause.
//!
//! A frame is settled by its first result that *decodes*: the decoder threads tell the
//! session which results did, and a result that does not (forged, corrupt, the wrong size) or
//! that is larger than any honest encoding of the job's frames leaves its frame outstanding
//! and re-dispatched. Nothing from the broker is decoded before its size is checked against
//! the job's frame size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use crossbeam_channel::{Receiver, Sender};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::{JobContext, SegmentLink, SegmentReply, SegmentTransport, Transport, Verdict, WireBytes};
use crate::broker::{Broker, BrokerUrls, Consumer, MessageKind, Publisher, Topology};
use crate::protocol::segment::{self, SEGMENT_VERSION, SegmentRef};
use crate::protocol::task::{Correlation, Frame, FrameOutcome, FrameResult, FrameTask, WorkerId};
use crate::protocol::wire::{self, Encoder, ResultOutcome, TaskMeta};
use sha2::Digest as _;

/// A frame dispatched this many times without a result is reported failed.
pub const MAX_DISPATCHES: u32 = 5;
/// How long a job keeps trying to reconnect after losing the broker.
pub const RECONNECT_FOR: Duration = Duration::from_secs(30);
/// How long reading a segment's result from its stream may take.
const RESULT_FETCH_PATIENCE: Duration = Duration::from_secs(120);
/// The largest segment progress body read.
const MAX_PROGRESS_BYTES: usize = 4 << 10;
/// Threads decoding results for one job.
const DECODERS: usize = 2;
/// How often an adaptive window looks at the task queue.
const WINDOW_TICK: Duration = Duration::from_millis(200);
/// An adaptive window starts here, and stays within [`WINDOW_MIN`] and [`WINDOW_MAX`] (what is
/// really on the broker is bounded by the pipeline's window too: each frame holds one of its
/// credits).
const WINDOW_START: usize = 4;
const WINDOW_MIN: usize = 2;
const WINDOW_MAX: usize = 1024;

/// How many of a job's frames may be on the broker at once.
///
/// Fixed (`--window N`), or adaptive: every 200 ms the session reads the task queue's
/// depth (messages ready, taken by no worker) and its consumers. A worker's prefetch takes
/// tasks as soon as it has room, so messages wait in the queue only when every prefetch is
/// full. The window grows while nothing waits and the job has the whole window out (some worker
/// may have room, and the window is what holds the job back) by half itself or one frame per
/// consumer, whichever is more; it holds while up to one message per consumer waits (the next
/// task for each is at hand), or while the job has less out than it may (its source or its
/// writer holds it back, not the window); and it shrinks by a quarter when more wait (the queue
/// is being flooded; every job sharing the queue shrinks, and the first to have room grows
/// back). It follows the workers' throughput without measuring it: a slow worker's full prefetch holds no
/// more of the window than it takes, and a fast one's empty prefetch makes it grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Always this many.
    Fixed(usize),
    /// Now this many, adapting, at most the second.
    Adaptive(usize, usize),
}

impl Window {
    /// An adaptive window of at most `max` frames (the pipeline bounds what is out anyway).
    pub fn adaptive(max: usize) -> Self {
        Window::Adaptive(WINDOW_START.min(max).max(1), max.max(1))
    }

    /// Frames allowed on the broker now.
    pub fn current(&self) -> usize {
        match *self {
            Window::Fixed(n) | Window::Adaptive(n, _) => n,
        }
    }

    /// The window after seeing `ready` messages waiting in the task queue for `consumers`, with
    /// the whole window out (`full`) or not.
    pub fn adjust(self, ready: u32, consumers: u32, full: bool) -> Self {
        let Window::Adaptive(n, max) = self else { return self };
        let (ready, consumers) = (ready as usize, consumers.max(1) as usize);
        let n = if ready == 0 && full {
            n + consumers.max(n / 2)
        } else if ready > consumers {
            n - n.div_ceil(4)
        } else {
            n
        };
        Window::Adaptive(n.clamp(WINDOW_MIN.min(max), max), max)
    }
}

/// The server's link to RabbitMQ: one connection shared by its jobs, re-opened on demand.
pub struct BrokerLink {
    urls: BrokerUrls,
    name: String,
    topology: Topology,
    current: Mutex<Option<Broker>>,
    /// The task queue's depth and consumers, and when they were read: one read serves every
    /// job's window for a tick.
    depth: StdMutex<Option<(Instant, (u32, u32))>>,
}

impl BrokerLink {
    /// Connects to `url` and declares the topology: an unreachable broker is an error here, at
    /// start-up, not on the first job.
    pub async fn connect(urls: &BrokerUrls, name: &str, topology: Topology) -> anyhow::Result<Self> {
        let broker = Broker::connect(urls, name).await?;
        broker.declare(&topology).await.with_context(|| format!("declaring queues on {}", broker.url()))?;
        Ok(BrokerLink {
            urls: urls.clone(),
            name: name.to_string(),
            topology,
            current: Mutex::new(Some(broker)),
            depth: StdMutex::new(None),
        })
    }

    /// The namespace's names.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// A live connection: the current one, or a new one if it dropped.
    pub async fn get(&self) -> anyhow::Result<Broker> {
        let mut current = self.current.lock().await;
        if let Some(b) = current.as_ref().filter(|b| b.is_connected()) {
            return Ok(b.clone());
        }
        let broker = Broker::connect(&self.urls, &self.name).await?;
        broker.declare(&self.topology).await?;
        info!(broker = broker.url(), "connected to RabbitMQ");
        *current = Some(broker.clone());
        Ok(broker)
    }

    /// The task queue's messages ready and its consumers, read at most once a [`WINDOW_TICK`].
    async fn queue_depth(&self, broker: &Broker) -> anyhow::Result<(u32, u32)> {
        if let Some((at, depth)) = *self.depth.lock().expect("depth lock")
            && at.elapsed() < WINDOW_TICK
        {
            return Ok(depth);
        }
        let depth = broker.queue_stats(&self.topology.tasks()).await?;
        *self.depth.lock().expect("depth lock") = Some((Instant::now(), depth));
        Ok(depth)
    }

    /// Waits for a live connection for up to `patience`.
    async fn reconnect(&self, patience: Duration) -> anyhow::Result<Broker> {
        // A job gives up only when its patience runs out; its cancel ends it elsewhere.
        let never = tokio_util::sync::CancellationToken::new();
        crate::broker::retry(Some(patience), &never, || self.get()).await.context("lost RabbitMQ")
    }
}

/// Frames to `vpd worker`s through RabbitMQ.
pub struct AmqpTransport {
    link: Arc<BrokerLink>,
    runtime: tokio::runtime::Handle,
    redispatch_after: Duration,
    /// `--window N`: a fixed window instead of an adaptive one.
    fixed_window: Option<usize>,
}

impl AmqpTransport {
    /// A transport over `link`, driven on `runtime`. A frame is re-dispatched when it has had
    /// no result for `redispatch_after` while other frames' results keep arriving.
    /// With `fixed_window`, at most that many frames of a job are on the broker at once;
    /// without, as many as the task queue's depth says keep every worker fed ([`Window`]).
    pub fn new(
        link: Arc<BrokerLink>,
        runtime: tokio::runtime::Handle,
        redispatch_after: Duration,
        fixed_window: Option<usize>,
    ) -> Self {
        AmqpTransport { link, runtime, redispatch_after, fixed_window }
    }
}

impl Transport for AmqpTransport {
    fn segments(&self) -> Option<&dyn SegmentTransport> {
        Some(self)
    }

    fn serve(
        &self,
        job: &JobContext,
        tasks: Receiver<FrameTask>,
        results: Sender<FrameResult>,
    ) -> anyhow::Result<WireBytes> {
        let (body_tx, body_rx) = mpsc::channel::<TaskBody>(8);
        let (reply_tx, reply_rx) = crossbeam_channel::bounded::<(u64, Vec<u8>)>(16);
        // At most one verdict per reply body, and the session drains them as it forwards bodies.
        let (verdict_tx, verdict_rx) = mpsc::unbounded_channel::<Verdict>();
        // Source frames of outstanding tasks (shared, not copied): results may be deltas of them.
        let sources = StdMutex::new(HashMap::new());
        // The largest result any task may have: the bound on a result's body.
        let largest = StdMutex::new((0, 0));
        let window = match self.fixed_window {
            Some(n) => Window::Fixed(n),
            None => Window::adaptive(WINDOW_MAX),
        };
        // The job's span (entered by the pipeline's transport thread) goes to these threads too.
        let span = tracing::Span::current();
        std::thread::scope(|s| {
            let encoder = s.spawn(|| span.in_scope(|| encode(job, tasks, body_tx, &sources, &largest)));
            for _ in 0..DECODERS {
                let (reply_rx, results, verdicts) = (reply_rx.clone(), results.clone(), verdict_tx.clone());
                let (sources, largest, span) = (&sources, &largest, span.clone());
                s.spawn(move || span.in_scope(|| decode(job, reply_rx, results, verdicts, sources, largest)));
            }
            drop((reply_rx, verdict_tx));
            let give_up = |index: u64| {
                let failed = FrameResult {
                    index,
                    outcome: FrameOutcome::Failed(format!("no worker finished it after {MAX_DISPATCHES} dispatches")),
                    filter_time: Duration::ZERO,
                    worker: WorkerId::new("none"),
                    retries: MAX_DISPATCHES - 1,
                };
                results.send(failed).is_ok()
            };
            let result_limit = || {
                let (w, h) = *largest.lock().expect("sizes lock");
                if w == 0 { 0 } else { wire::max_result_body(w, h) }
            };
            let redispatch_after = || self.redispatch_after;
            let session = Session {
                link: &self.link,
                job,
                redispatch_after: &redispatch_after,
                outstanding: HashMap::new(),
                last_result: None,
                replies: Replies::Frames(reply_tx),
                give_up: &give_up,
                result_limit: &result_limit,
                wire: WireBytes::default(),
                window,
            };
            let served = self.runtime.block_on(session.run(body_rx, verdict_rx));
            let encoded = encoder.join().unwrap_or_else(|_| Err(anyhow!("the frame encoder panicked")));
            encoded.and(served)
        })
    }
}

impl SegmentTransport for AmqpTransport {
    fn serve_segments(&self, job: &JobContext, link: SegmentLink<'_>) -> anyhow::Result<WireBytes> {
        let SegmentLink { mut tasks, replies, verdicts, redispatch_after, result_limit, window, max_message } = link;
        let give_up = |index: u64| replies.send(SegmentReply::GaveUp(index)).is_ok();
        let limit = || result_limit;
        let session = Session {
            link: &self.link,
            job,
            redispatch_after,
            outstanding: HashMap::new(),
            last_result: None,
            replies: Replies::Segments(replies.clone()),
            give_up: &give_up,
            result_limit: &limit,
            wire: WireBytes::default(),
            window: Window::adaptive(window),
        };
        let (body_tx, body_rx) = mpsc::channel::<TaskBody>(1);
        let (verdict_tx, verdict_rx) = mpsc::unbounded_channel::<Verdict>();
        // Segments whose task is on a stream of its own, until they are settled.
        let blobs = StdMutex::new(std::collections::HashSet::new());
        // Bytes put on streams: sent to the workers as much as the tasks are.
        let streamed = std::sync::atomic::AtomicU64::new(0);
        let link = &self.link;
        let t = link.topology();
        let relay_tasks = async {
            while let Some((index, body)) = tasks.recv().await {
                let task = if body.len() <= max_message {
                    TaskBody { index, body, kind: MessageKind::SegmentTask }
                } else {
                    let name = t.blob(job.id.as_str(), index);
                    let broker = link.reconnect(RECONNECT_FOR).await?;
                    let parts = broker.put_blob(&name, &body, max_message).await?;
                    streamed.fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    debug!(segment = index, parts, bytes = body.len(), "a segment task by reference");
                    blobs.lock().expect("blobs lock").insert(index);
                    let reference = SegmentRef {
                        version: SEGMENT_VERSION,
                        job: job.id.to_string(),
                        number: index,
                        blob: name,
                        parts: u32::try_from(parts)?,
                        len: body.len() as u64,
                        sha256: sha2::Sha256::digest(&body).into(),
                    };
                    TaskBody { index, body: segment::encode(&reference), kind: MessageKind::SegmentRef }
                };
                if body_tx.send(task).await.is_err() {
                    break; // the session ended; it says why
                }
            }
            drop(body_tx);
            Ok::<_, anyhow::Error>(())
        };
        let relay_verdicts = async {
            let mut verdicts = verdicts;
            while let Some(v) = verdicts.recv().await {
                if let Verdict::Settled(index) = v
                    && blobs.lock().expect("blobs lock").remove(&index)
                {
                    drop_blob(link, t.blob(job.id.as_str(), index)).await;
                }
                if verdict_tx.send(v).is_err() {
                    break;
                }
            }
        };
        let (relayed, served) = self.runtime.block_on(async {
            let session = session.run(body_rx, verdict_rx);
            tokio::pin!(session);
            let mut relay_tasks = std::pin::pin!(relay_tasks);
            let mut relay_verdicts = std::pin::pin!(relay_verdicts);
            let (mut relayed, mut verdicts_done) = (None, false);
            let served = loop {
                tokio::select! {
                    r = &mut relay_tasks, if relayed.is_none() => relayed = Some(r),
                    () = &mut relay_verdicts, if !verdicts_done => verdicts_done = true,
                    served = &mut session => break served,
                }
            };
            (relayed.unwrap_or(Ok(())), served)
        });
        let left: Vec<u64> = blobs.lock().expect("blobs lock").drain().collect();
        self.runtime.block_on(async {
            for index in left {
                drop_blob(link, t.blob(job.id.as_str(), index)).await;
            }
        });
        relayed?;
        let mut wire = served?;
        wire.sent += streamed.into_inner();
        Ok(wire)
    }
}

/// Reads the segment result a worker put on a stream, checks it against its reference, and
/// deletes the stream.
async fn fetch_result(broker: &Broker, r: SegmentRef) -> anyhow::Result<Vec<u8>> {
    let len = usize::try_from(r.len)?;
    let body = broker.get_blob(&r.blob, r.parts as usize, len, RESULT_FETCH_PATIENCE).await;
    drop_stream(broker, &r.blob).await;
    let body = body?;
    anyhow::ensure!(
        body.len() == len && <[u8; 32]>::from(sha2::Sha256::digest(&body)) == r.sha256,
        "{}: not the result its reference describes",
        r.blob
    );
    Ok(body)
}

/// Deletes a segment's stream, saying so should it fail (its bytes expire on the broker).
async fn drop_blob(link: &BrokerLink, name: String) {
    match link.get().await {
        Ok(broker) => drop_stream(&broker, &name).await,
        Err(e) => {
            warn!(stream = name, error = %format!("{e:#}"), "cannot delete a segment's stream; RabbitMQ drops its bytes within the hour")
        }
    }
}

/// Deletes stream `name`, saying so should it fail (its bytes expire on the broker).
async fn drop_stream(broker: &Broker, name: &str) {
    if let Err(e) = broker.delete_queue(name).await {
        warn!(stream = name, error = %format!("{e:#}"), "cannot delete a segment's stream; RabbitMQ drops its bytes within the hour");
    }
}

/// A task's body on its way to the session.
struct TaskBody {
    index: u64,
    body: Vec<u8>,
    kind: MessageKind,
}

/// Source frames of outstanding tasks, by index.
type Sources = StdMutex<HashMap<u64, Frame>>;

/// The size of the result of `frame` through `chain` (a scale changes it).
fn result_size(chain: &crate::filters::Chain, frame: &opencv::core::Mat) -> (u32, u32) {
    use opencv::prelude::MatTraitConst as _;
    chain.output_size(frame.cols() as u32, frame.rows() as u32)
}

/// Encodes tasks into message bodies (CPU work, off the async runtime). Records the largest
/// result a task may have (tiles of one frame differ in size), the bound on a result's body.
fn encode(
    job: &JobContext,
    tasks: Receiver<FrameTask>,
    bodies: mpsc::Sender<TaskBody>,
    sources: &Sources,
    largest: &StdMutex<(u32, u32)>,
) -> anyhow::Result<()> {
    let mut encoder = Encoder::new(job.encoding);
    for task in tasks {
        let (w, h) = result_size(&job.chain, &task.frame);
        {
            let mut l = largest.lock().expect("sizes lock");
            *l = (l.0.max(w), l.1.max(h));
        }
        let meta = TaskMeta { job: job.id.as_str(), index: task.index, chain: &job.chain, encoding: job.encoding };
        let body = wire::encode_task(&meta, &task.frame, task.previous.as_deref(), &mut encoder)?;
        sources.lock().expect("sources lock").insert(task.index, task.frame.clone());
        drop(task);
        if bodies.blocking_send(TaskBody { index: meta.index, body, kind: MessageKind::Task }).is_err() {
            break; // the session ended (cancelled or failed); it reports why
        }
    }
    Ok(())
}

/// Decodes result bodies for the pipeline, and tells the session which frames they settle.
/// Each result must have its task's result size; one whose task is settled, at most the
/// largest.
fn decode(
    job: &JobContext,
    replies: Receiver<(u64, Vec<u8>)>,
    results: Sender<FrameResult>,
    verdicts: mpsc::UnboundedSender<Verdict>,
    sources: &Sources,
    largest: &StdMutex<(u32, u32)>,
) {
    let job_id = job.id.as_str();
    for (index, body) in replies {
        let source = sources.lock().expect("sources lock").get(&index).cloned();
        let size = match &source {
            Some(frame) => result_size(&job.chain, frame),
            None => *largest.lock().expect("sizes lock"),
        };
        let decoded = wire::decode_result(&body, source.as_deref(), Some(size).filter(|s| s.0 > 0))
            .map_err(|e| e.to_string())
            .and_then(|(header, frame)| {
                if header.index == index && header.job == job_id {
                    Ok((header, frame))
                } else {
                    Err(format!("a result for frame {} of job {} under frame {index}'s id", header.index, header.job))
                }
            });
        let (header, frame) = match decoded {
            Ok(decoded) => {
                // The first result settles the frame; a later duplicate that needs the source
                // fails to decode and is dropped, as the pipeline would drop it anyway.
                sources.lock().expect("sources lock").remove(&index);
                let _ = verdicts.send(Verdict::Settled(index));
                decoded
            }
            Err(e) if source.is_none() => {
                // Most likely a duplicate delta of a frame whose first result already came.
                debug!(error = %e, frame = index, "dropping a result whose source frame is settled");
                continue;
            }
            Err(e) => {
                warn!(error = %e, frame = index, "dropping an undecodable result; the frame will be re-dispatched");
                let _ = verdicts.send(Verdict::Bad(index));
                continue;
            }
        };
        drop(body);
        let outcome = match (header.outcome, frame) {
            (ResultOutcome::Frame(_), Some(frame)) => FrameOutcome::Processed(frame),
            (ResultOutcome::Failed(reason), _) => FrameOutcome::Failed(reason),
            (ResultOutcome::Frame(_), None) => FrameOutcome::Failed("result without a frame".into()),
        };
        let result = FrameResult {
            index: header.index,
            outcome,
            filter_time: Duration::from_micros(header.filter_us),
            worker: WorkerId::new(header.worker),
            retries: header.retries,
        };
        if results.send(result).is_err() {
            return; // the pipeline stopped
        }
    }
}

/// A frame on the broker, not yet answered.
struct Outstanding {
    body: Arc<Vec<u8>>,
    /// What it is.
    kind: MessageKind,
    last_dispatch: Instant,
    /// The last word of it from a worker (a segment's progress), or its dispatch.
    last_heard: Instant,
    /// Publishes a worker may have seen: one the broker refused is taken back.
    dispatches: u32,
    /// Send again at the next tick: the broker refused it, or the connection it went out on
    /// died.
    resend: bool,
}

struct Session<'a> {
    link: &'a BrokerLink,
    job: &'a JobContext,
    /// How long a task may go unheard of before it is re-dispatched.
    redispatch_after: &'a (dyn Fn() -> Duration + Sync),
    outstanding: HashMap<u64, Outstanding>,
    /// When the last result arrived: evidence that workers are alive.
    last_result: Option<Instant>,
    /// Where reply bodies go.
    replies: Replies,
    /// Reports a task that no worker finished after [`MAX_DISPATCHES`]; `false` once nobody
    /// listens.
    give_up: &'a (dyn Fn(u64) -> bool + Sync),
    /// The largest reply body worth reading.
    result_limit: &'a (dyn Fn() -> usize + Sync),
    wire: WireBytes,
    /// How many of its tasks may be on the broker now.
    window: Window,
}

/// Where a session's reply bodies go, with the frame or segment their correlation id names.
enum Replies {
    /// Frame results, to the decoder threads.
    Frames(Sender<(u64, Vec<u8>)>),
    /// Segment results and progress, to the segment job.
    Segments(Sender<SegmentReply>),
}

/// Why a connected stretch of the session ended.
enum Interrupted {
    /// The connection (or a channel) broke: reconnect and carry on.
    Connection(anyhow::Error),
    /// Something that reconnecting cannot fix.
    Fatal(anyhow::Error),
    /// The pipeline stopped reading results (the job was cancelled or failed elsewhere): end
    /// quietly, the pipeline reports why.
    PipelineGone,
}

impl Session<'_> {
    async fn run(
        mut self,
        mut bodies: mpsc::Receiver<TaskBody>,
        mut verdicts: mpsc::UnboundedReceiver<Verdict>,
    ) -> anyhow::Result<WireBytes> {
        let mut broker = self.link.get().await?;
        loop {
            match self.connected(&broker, &mut bodies, &mut verdicts).await {
                Ok(()) | Err(Interrupted::PipelineGone) => return Ok(self.wire),
                Err(Interrupted::Fatal(e)) => return Err(e),
                Err(Interrupted::Connection(e)) => {
                    warn!(job = %self.job.id, error = %format!("{e:#}"), "lost RabbitMQ; reconnecting");
                    broker = self.link.reconnect(RECONNECT_FOR).await.context(format!("{e:#}"))?;
                    // Everything outstanding is sent again: the old reply queue died with the
                    // old connection, and so did any result in it.
                    for entry in self.outstanding.values_mut() {
                        entry.resend = true;
                    }
                }
            }
        }
    }

    /// Serves the job over one connection until it ends or the connection breaks, then
    /// closes the job's reply queue.
    async fn connected(
        &mut self,
        broker: &Broker,
        bodies: &mut mpsc::Receiver<TaskBody>,
        verdicts: &mut mpsc::UnboundedReceiver<Verdict>,
    ) -> Result<(), Interrupted> {
        let t = self.link.topology();
        let (reply_to, mut replies) =
            broker.consume_replies(t, self.job.id.as_str()).await.map_err(Interrupted::Connection)?;
        let served = self.pump(broker, &reply_to, &mut replies, bodies, verdicts).await;
        replies.close().await;
        served
    }

    async fn pump(
        &mut self,
        broker: &Broker,
        reply_to: &str,
        replies: &mut Consumer,
        bodies: &mut mpsc::Receiver<TaskBody>,
        verdicts: &mut mpsc::UnboundedReceiver<Verdict>,
    ) -> Result<(), Interrupted> {
        let t = self.link.topology();
        let conn = |e: anyhow::Error| Interrupted::Connection(e);
        let publisher = broker.publisher().await.map_err(conn)?;
        let mut confirms: JoinSet<(u64, anyhow::Result<bool>)> = JoinSet::new();
        // Segment results being read from their streams.
        let mut fetches: JoinSet<(u64, Option<anyhow::Result<Vec<u8>>>)> = JoinSet::new();
        let mut fetching = std::collections::HashSet::new();
        let mut tick = tokio::time::interval(self.tick_period());
        let mut window_tick = tokio::time::interval(WINDOW_TICK);
        let adaptive = matches!(self.window, Window::Adaptive(..));
        let mut more_tasks = true;
        // Re-dispatch what a previous connection left outstanding.
        self.redispatch_overdue(t, &publisher, reply_to, &mut confirms).await?;
        loop {
            if !more_tasks && self.outstanding.is_empty() {
                return Ok(());
            }
            tokio::select! {
                message = replies.next() => match message {
                    Some(Ok(m)) if m.kind == MessageKind::SegmentRef => {
                        if let Some((index, r)) = self.result_reference(m.correlation, &m.body) {
                            let broker = broker.clone();
                            // One read per outstanding segment at a time: a duplicate's stream
                            // is deleted unread.
                            if self.outstanding.contains_key(&index) && fetching.insert(index) {
                                fetches.spawn(async move { (index, Some(fetch_result(&broker, r).await)) });
                            } else {
                                fetches.spawn(async move {
                                    drop_stream(&broker, &r.blob).await;
                                    (index, None)
                                });
                            }
                        }
                    }
                    Some(Ok(m)) => self.on_result(m.kind, m.correlation, m.body)?,
                    Some(Err(e)) => return Err(conn(e)),
                    None => return Err(conn(anyhow!("the reply queue's consumer was cancelled"))),
                },
                Some(verdict) = verdicts.recv() => match verdict {
                    Verdict::Settled(index) => {
                        self.outstanding.remove(&index);
                    }
                    Verdict::Bad(index) => self.refused(index),
                },
                body = bodies.recv(), if more_tasks && self.outstanding.len() < self.window.current() => match body {
                    Some(TaskBody { index, body, kind }) => {
                        let now = Instant::now();
                        let entry = Outstanding { body: Arc::new(body), kind, last_dispatch: now, last_heard: now, dispatches: 1, resend: false };
                        let body = entry.body.clone();
                        self.outstanding.insert(index, entry);
                        self.publish(t, &publisher, reply_to, (index, kind), &body, 0, &mut confirms).await?;
                    }
                    None => more_tasks = false,
                },
                Some(fetched) = fetches.join_next() => {
                    let (index, fetched) = fetched.map_err(|e| Interrupted::Fatal(anyhow!(e)))?;
                    let Some(fetched) = fetched else { continue };
                    fetching.remove(&index);
                    match fetched {
                        Ok(body) => self.on_result(MessageKind::SegmentResult, Some(Correlation::new(self.job.id.as_str(), index)), body)?,
                        Err(e) => {
                            warn!(job = %self.job.id, segment = index, error = %format!("{e:#}"), "cannot read a result from its stream; sending the segment again");
                            self.refused(index);
                        }
                    }
                }
                Some(confirmed) = confirms.join_next() => {
                    let (index, accepted) = confirmed.map_err(|e| Interrupted::Fatal(anyhow!(e)))?;
                    match accepted {
                        Ok(true) => {}
                        // The broker refused it (out of resources, a full queue, a quorum queue
                        // electing its leader): try again on the next tick. No worker saw it, so
                        // it is not one of the frame's tries (MAX_DISPATCHES counts those).
                        Ok(false) => {
                            if let Some(e) = self.outstanding.get_mut(&index) {
                                e.resend = true;
                                e.dispatches = e.dispatches.saturating_sub(1);
                            }
                        }
                        Err(e) => return Err(conn(e)),
                    }
                }
                _ = window_tick.tick(), if adaptive => {
                    // Depth unknown (a broken channel shows elsewhere): the window holds.
                    if let Ok((ready, consumers)) = self.link.queue_depth(broker).await {
                        let before = self.window;
                        let full = self.outstanding.len() >= self.window.current();
                        self.window = self.window.adjust(ready, consumers, full);
                        if self.window != before {
                            debug!(window = self.window.current(), ready, consumers, "window");
                        }
                    }
                }
                _ = tick.tick() => {
                    if self.job.stop.is_stopped() {
                        return Ok(()); // cancelled: the workers learn it from the server's event
                    }
                    self.redispatch_overdue(t, &publisher, reply_to, &mut confirms).await?;
                }
            }
        }
    }

    fn tick_period(&self) -> Duration {
        ((self.redispatch_after)() / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    #[allow(clippy::too_many_arguments)]
    async fn publish(
        &mut self,
        t: &Topology,
        publisher: &Publisher,
        reply_to: &str,
        (index, kind): (u64, MessageKind),
        body: &[u8],
        attempt: u32,
        confirms: &mut JoinSet<(u64, anyhow::Result<bool>)>,
    ) -> Result<(), Interrupted> {
        let correlation = Correlation::new(self.job.id.as_str(), index);
        let confirm =
            publisher.task(t, kind, body, reply_to, &correlation, attempt).await.map_err(Interrupted::Connection)?;
        self.wire.sent += body.len() as u64;
        confirms.spawn(async move { (index, confirm.accepted().await) });
        Ok(())
    }

    fn on_result(
        &mut self,
        kind: MessageKind,
        correlation: Option<Correlation>,
        body: Vec<u8>,
    ) -> Result<(), Interrupted> {
        let Some(Correlation { index, .. }) = correlation.filter(|c| c.job == self.job.id.as_str()) else {
            warn!(job = %self.job.id, "dropping a result with a foreign correlation id");
            return Ok(());
        };
        self.wire.received += body.len() as u64;
        let now = Instant::now();
        if kind == MessageKind::SegmentProgress {
            // A worker is on it: the segment is not overdue, and workers are alive.
            if let Some(e) = self.outstanding.get_mut(&index) {
                e.last_heard = now;
            }
            self.last_result = Some(now);
            return match &self.replies {
                Replies::Segments(replies) if body.len() <= MAX_PROGRESS_BYTES => {
                    replies.send(SegmentReply::Progress(index, body)).map_err(|_| Interrupted::PipelineGone)
                }
                _ => Ok(()),
            };
        }
        // Larger than any honest encoding of this job's frames: not worth decoding.
        let limit = (self.result_limit)();
        if body.len() > limit {
            warn!(job = %self.job.id, frame = index, bytes = body.len(), limit, "dropping an oversized result");
            self.refused(index);
            return Ok(());
        }
        self.last_result = Some(now);
        // The task stays outstanding until the receiving side says the result is good; every
        // result, duplicates included, goes on to be counted.
        let sent = match (&self.replies, kind) {
            (Replies::Frames(replies), MessageKind::Result) => replies.send((index, body)).is_ok(),
            (Replies::Segments(replies), MessageKind::SegmentResult) => {
                replies.send(SegmentReply::Result(index, body)).is_ok()
            }
            _ => {
                warn!(job = %self.job.id, ?kind, "dropping a reply of another kind than the job's tasks");
                return Ok(());
            }
        };
        if sent { Ok(()) } else { Err(Interrupted::PipelineGone) }
    }

    /// The stream a reference reply points to, when it is one of this job's segments' and no
    /// larger than a result may be.
    fn result_reference(&mut self, correlation: Option<Correlation>, body: &[u8]) -> Option<(u64, SegmentRef)> {
        let Some(Correlation { index, .. }) = correlation.filter(|c| c.job == self.job.id.as_str()) else {
            warn!(job = %self.job.id, "dropping a result with a foreign correlation id");
            return None;
        };
        self.wire.received += body.len() as u64;
        let r = segment::decode::<SegmentRef>(body, 4096)
            .ok()
            .filter(|r| r.job == self.job.id.as_str() && r.number == index && r.len <= (self.result_limit)() as u64);
        if r.is_none() {
            warn!(job = %self.job.id, segment = index, "dropping a bad result reference");
            self.refused(index);
        }
        r.map(|r| (index, r))
    }

    /// A result for `index` was refused: send the frame again at the next tick (counted
    /// against [`MAX_DISPATCHES`]).
    fn refused(&mut self, index: u64) {
        if let Some(entry) = self.outstanding.get_mut(&index) {
            entry.resend = true;
        }
    }

    /// Re-publishes frames overdue while others keep coming back; gives up after
    /// [`MAX_DISPATCHES`].
    async fn redispatch_overdue(
        &mut self,
        t: &Topology,
        publisher: &Publisher,
        reply_to: &str,
        confirms: &mut JoinSet<(u64, anyhow::Result<bool>)>,
    ) -> Result<(), Interrupted> {
        let now = Instant::now();
        // Overdue with results since its last dispatch: workers are alive but this frame is
        // stuck. With no results at all, more copies would only pile up in the queue (the
        // pipeline's stall timeout is the limit then).
        let alive_since = |e: &Outstanding| self.last_result.is_some_and(|r| r > e.last_dispatch);
        let after = (self.redispatch_after)();
        let overdue: Vec<u64> = self
            .outstanding
            .iter()
            .filter(|(_, e)| e.resend || (now.duration_since(e.last_heard) >= after && alive_since(e)))
            .map(|(i, _)| *i)
            .collect();
        for index in overdue {
            let Some(entry) = self.outstanding.get_mut(&index) else { continue };
            if entry.dispatches >= MAX_DISPATCHES {
                self.outstanding.remove(&index);
                warn!(job = %self.job.id, task = index, "no worker finished the task after {MAX_DISPATCHES} dispatches");
                if !(self.give_up)(index) {
                    return Err(Interrupted::PipelineGone);
                }
                continue;
            }
            entry.dispatches += 1;
            entry.last_dispatch = now;
            entry.last_heard = now;
            entry.resend = false;
            let (attempt, body, kind) = (entry.dispatches - 1, entry.body.clone(), entry.kind);
            self.publish(t, publisher, reply_to, (index, kind), &body, attempt, confirms).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adaptive_window_grows_while_workers_have_room_and_shrinks_when_the_queue_fills() {
        let mut w = Window::adaptive(100);
        assert_eq!(w.current(), 4);
        // Nothing waits for 3 consumers, the whole window out: one more each, or half again
        // once that is more.
        w = w.adjust(0, 3, true);
        assert_eq!(w.current(), 7);
        w = w.adjust(0, 3, true);
        assert_eq!(w.current(), 10);
        w = w.adjust(0, 3, true);
        assert_eq!(w.current(), 15);
        // Nothing waits, but the job has less out than it may: not the window's doing; hold.
        w = w.adjust(0, 3, false);
        assert_eq!(w.current(), 15);
        // Up to one waiting per consumer: the next task for each is at hand; hold.
        w = w.adjust(3, 3, true);
        assert_eq!(w.current(), 15);
        // More: the queue is flooding; a quarter less each tick, never below 2.
        w = w.adjust(20, 3, true);
        assert_eq!(w.current(), 11);
        for _ in 0..20 {
            w = w.adjust(50, 3, true);
        }
        assert_eq!(w.current(), 2);
        // Never past its bound, and a fixed window never moves.
        for _ in 0..100 {
            w = w.adjust(0, 8, true);
        }
        assert_eq!(w.current(), 100);
        assert_eq!(Window::Fixed(16).adjust(0, 8, true).adjust(500, 1, true).current(), 16);
        assert_eq!(Window::adaptive(4).current(), 4);
    }
}

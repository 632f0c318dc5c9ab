//! The seam between the pipeline and whoever filters the frames.
//!
//! The pipeline sends [`FrameTask`]s into a bounded channel and reads [`FrameResult`]s from
//! another; a [`Transport`] connects the two. [`local::LocalTransport`] is a pool of filter
//! threads in this process (`vpd run`, `vpd server` without a broker); [`amqp::AmqpTransport`]
//! carries frames through RabbitMQ to `vpd worker`s. Everything on the pipeline side
//! (dispatch, collect, reorder, write) is the same code whichever transport is used.

pub mod amqp;
pub mod local;
pub mod tiled;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::cancel::Stop;
use crate::filters::{Chain, FilterEnv, FilterError, Processor};
use crate::protocol::job::JobId;
use crate::protocol::task::{FrameOutcome, FrameResult, FrameTask};
use crate::protocol::wire::TransportEncoding;

/// What a transport needs to know about the job it serves.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job: in logs and queue names.
    pub id: JobId,
    /// The filter chain every frame goes through.
    pub chain: Chain,
    /// Fires when the job is cancelled: its remaining tasks can be dropped.
    pub stop: Stop,
    /// How frames travel to remote workers (ignored in-process).
    pub encoding: TransportEncoding,
}

/// Carries frame tasks to filter workers and their results back.
///
/// The contract: for every task received on `tasks`, at least one result is sent on `results`
/// (more than one is allowed: the pipeline drops duplicates), unless `serve` returns an error
/// or the job's stop fires. `serve` returns once `tasks` is closed, having handed every task
/// on; results may still arrive until every clone of `results` is dropped.
pub trait Transport: Sync {
    /// The same workers, given whole segments to decode, filter and encode, where this
    /// transport can carry them.
    fn segments(&self) -> Option<&dyn SegmentTransport> {
        None
    }

    /// Serves one job; returns the bytes it moved (none in-process).
    fn serve(
        &self,
        job: &JobContext,
        tasks: Receiver<FrameTask>,
        results: Sender<FrameResult>,
    ) -> anyhow::Result<WireBytes>;
}

/// Carries one job's segment tasks (message bodies) to workers and their replies back, with
/// the same guarantees as frames: confirmed publishes, re-dispatch of what is overdue while
/// other replies come, a reconnect that sends everything outstanding again, and a give-up
/// after too many dispatches.
pub trait SegmentTransport: Sync {
    /// Serves one job until `link.tasks` is closed and every task is settled (or the job's
    /// stop fires); returns the bytes it moved.
    fn serve_segments(&self, job: &JobContext, link: SegmentLink<'_>) -> anyhow::Result<WireBytes>;
}

/// What a segment job and its transport exchange.
pub struct SegmentLink<'a> {
    /// Task bodies, by segment number.
    pub tasks: tokio::sync::mpsc::Receiver<(u64, Vec<u8>)>,
    /// Replies from workers, and the segments given up on.
    pub replies: Sender<SegmentReply>,
    /// The job's word on each result: a segment stays outstanding until it is settled.
    pub verdicts: tokio::sync::mpsc::UnboundedReceiver<Verdict>,
    /// How long a segment may go unheard of (no progress, no result) before it is sent again.
    pub redispatch_after: &'a (dyn Fn() -> std::time::Duration + Sync),
    /// The largest result body read.
    pub result_limit: usize,
    /// The most segments on the broker at once.
    pub window: usize,
    /// The largest task body put in one message: a larger one goes on a stream of its own, in
    /// parts this large, and its task says where.
    pub max_message: usize,
}

/// A reply about a segment task.
#[derive(Debug)]
pub enum SegmentReply {
    /// A result body.
    Result(u64, Vec<u8>),
    /// A progress body.
    Progress(u64, Vec<u8>),
    /// No worker finished it after every dispatch.
    GaveUp(u64),
}

/// What the receiving side made of a result, for the transport.
#[derive(Debug)]
pub enum Verdict {
    /// The task has its result.
    Settled(u64),
    /// The result was refused: the task stays outstanding and is sent again.
    Bad(u64),
}

/// Message bytes a transport moved for one job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireBytes {
    /// Task bodies published, re-dispatches included.
    pub sent: u64,
    /// Result bodies received, duplicates included.
    pub received: u64,
}

/// Runs the chain on one frame. A filter that errors or panics gives
/// [`FrameOutcome::Failed`]; the pipeline then writes the original frame.
pub fn execute(
    processor: &mut Processor,
    frame: &opencv::core::Mat,
    previous: Option<&opencv::core::Mat>,
) -> (FrameOutcome, Duration) {
    let start = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| processor.apply(frame, previous)));
    let outcome = match outcome {
        Ok(Ok(frame)) => FrameOutcome::Processed(frame),
        Ok(Err(e)) => FrameOutcome::Failed(e.to_string()),
        Err(panic) => FrameOutcome::Failed(format!("filter panicked: {}", panic_message(&panic))),
    };
    (outcome, start.elapsed())
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}

/// Processors for the chains a worker thread met lately, so that a thread serving several
/// jobs in turn does not reload the face cascade for every frame.
pub struct ProcessorCache {
    env: FilterEnv,
    /// Most recently used last.
    entries: Vec<(String, Processor)>,
}

/// Chains a worker thread keeps processors for.
const CACHED_CHAINS: usize = 8;

impl ProcessorCache {
    /// An empty cache building processors with `env`.
    pub fn new(env: FilterEnv) -> Self {
        ProcessorCache { env, entries: Vec::new() }
    }

    /// The processor for `chain`, built on first use.
    pub fn get(&mut self, chain: &Chain) -> Result<&mut Processor, FilterError> {
        let key = chain.to_string();
        match self.entries.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                let entry = self.entries.remove(i);
                self.entries.push(entry);
            }
            None => {
                let processor = Processor::new(chain, &self.env)?;
                if self.entries.len() == CACHED_CHAINS {
                    self.entries.remove(0);
                }
                self.entries.push((key, processor));
            }
        }
        // Just pushed or moved to the end.
        Ok(&mut self.entries.last_mut().expect("an entry was just pushed").1)
    }
}

/// Runs one task through a cache's processor.
pub fn execute_task(cache: &mut ProcessorCache, chain: &Chain, task: &FrameTask) -> (FrameOutcome, Duration) {
    match cache.get(chain) {
        Ok(p) => execute(p, &task.frame, task.previous.as_deref()),
        Err(e) => (FrameOutcome::Failed(e.to_string()), Duration::ZERO),
    }
}

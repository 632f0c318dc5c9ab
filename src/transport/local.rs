//! The in-process transport: one pool of filter threads shared by every job of the process.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context as _, anyhow};
use crossbeam_channel::{Receiver, Sender, bounded};

use super::{JobContext, ProcessorCache, Transport, WireBytes, execute_task};
use crate::filters::FilterEnv;
use crate::protocol::task::{FrameResult, FrameTask, WorkerId};

/// `threads` filter threads fed from one bounded queue; jobs hand their tasks in with
/// [`Transport::serve`] and each gets its own results back.
pub struct LocalTransport {
    queue: Option<Sender<Work>>,
    threads: Vec<JoinHandle<()>>,
}

/// A task on its way to a filter thread, with where its result goes.
struct Work {
    task: FrameTask,
    job: Arc<JobContext>,
    results: Sender<FrameResult>,
}

impl LocalTransport {
    /// Starts `threads` filter threads that build processors with `env`.
    pub fn new(threads: NonZeroUsize, env: FilterEnv) -> anyhow::Result<Self> {
        // Two tasks per thread: none waits for work, and a job's frames are held by its own
        // window, not here.
        let (tx, rx) = bounded::<Work>(2 * threads.get());
        let threads = (0..threads.get())
            .map(|i| {
                let (rx, env) = (rx.clone(), env.clone());
                std::thread::Builder::new()
                    .name(format!("vpd-filter-{i}"))
                    .spawn(move || work(i, env, rx))
                    .context("spawning a filter thread")
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(LocalTransport { queue: Some(tx), threads })
    }
}

impl Transport for LocalTransport {
    fn serve(
        &self,
        job: &JobContext,
        tasks: Receiver<FrameTask>,
        results: Sender<FrameResult>,
    ) -> anyhow::Result<WireBytes> {
        let queue = self.queue.as_ref().ok_or_else(|| anyhow!("the filter threads have stopped"))?;
        let job = Arc::new(job.clone());
        for task in tasks {
            let work = Work { task, job: job.clone(), results: results.clone() };
            queue.send(work).map_err(|_| anyhow!("the filter threads have stopped"))?;
        }
        Ok(WireBytes::default())
    }
}

impl Drop for LocalTransport {
    fn drop(&mut self) {
        self.queue.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn work(i: usize, env: FilterEnv, queue: Receiver<Work>) {
    let mut cache = ProcessorCache::new(env);
    let worker = WorkerId::new(format!("local-{i}"));
    for Work { task, job, results } in queue {
        if job.stop.is_stopped() {
            continue; // cancelled: nobody waits for this frame any more
        }
        let (outcome, filter_time) = execute_task(&mut cache, &job.chain, &task);
        let index = task.index;
        // Let go of the source frames before waiting on a full results channel.
        drop(task);
        // A failed send means the job stopped; the thread moves on to the next task.
        let _ = results.send(FrameResult { index, outcome, filter_time, worker: worker.clone(), retries: 0 });
    }
}

//! What every connection and job driver of one server shares.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::admission::Admission;
use super::jobs::Jobs;
use super::{clients, places};
use crate::board::Board;
use crate::broker::Publisher;
use crate::pipeline::JobOptions;
use crate::protocol::event::JobEvent;
use crate::store::Store;
use crate::transport::Transport;
use crate::transport::amqp::BrokerLink;

/// What every connection shares.
pub struct Shared {
    pub(super) transport: Arc<dyn Transport + Send + Sync>,
    pub(super) clients: Arc<clients::Registry>,
    pub(super) max_upload: u64,
    pub(super) max_jobs: usize,
    pub(super) job_slots: Semaphore,
    /// Uploads and results being sent, shared fairly between addresses and clients.
    pub(super) uploads: Arc<places::Places>,
    /// The jobs whose upload a connection is receiving now.
    pub(super) uploads_under_way: places::UnderWay,
    /// How long an upload cut off is kept for its client to resume.
    pub(super) keep_partial: Duration,
    pub(super) admission: Admission,
    pub(super) window: Option<NonZeroUsize>,
    /// What a client's `--split auto` means here.
    pub(super) split: crate::protocol::segment::Split,
    /// The largest segment task put on the broker.
    pub(super) max_message: usize,
    /// How frame mode cuts large frames into tiles.
    pub(super) tiles: crate::filters::tiles::Tiles,
    pub(super) parallelism: NonZeroUsize,
    /// The face cascade, checked before a job starts, when filters run in this process.
    pub(super) local_face_cascade: Option<PathBuf>,
    pub(super) events: Option<(Arc<BrokerLink>, Mutex<Option<Publisher>>)>,
    /// Every job of this server, for its dashboard and `/metrics`.
    pub(super) board: Arc<Board>,
    /// Every job this server (and its earlier runs) accepted.
    pub(super) store: Store,
    /// The jobs it holds, and their files.
    pub(super) jobs: Jobs,
    /// Fires once, when the server shuts down.
    pub(super) shutdown: CancellationToken,
}

impl Shared {
    /// Runs `f` on a blocking thread, never on the runtime's: the job store's calls (an fsync
    /// each, with `synchronous = FULL`) and the jobs' file operations go through here.
    pub(super) async fn off<T, F>(self: &Arc<Self>, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> anyhow::Result<T> + Send + 'static,
    {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || f(&shared)).await.map_err(|e| anyhow::anyhow!("a blocking task: {e}"))?
    }

    /// The frames in flight for a job of frames of `frame_bytes`.
    pub(super) fn window(&self, frame_bytes: usize) -> NonZeroUsize {
        self.window.unwrap_or_else(|| JobOptions::default_window(self.parallelism, frame_bytes))
    }

    /// Applies a job event to the server's board and publishes it on the events exchange; a
    /// failure to publish is logged, never fatal.
    pub(super) async fn publish(&self, event: JobEvent) {
        self.board.apply(&event);
        let Some((link, publisher)) = &self.events else { return };
        let mut publisher = publisher.lock().await;
        for _ in 0..2 {
            if publisher.is_none() {
                match link.get().await {
                    Ok(b) => *publisher = b.publisher().await.ok(),
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "cannot publish a job event");
                        return;
                    }
                }
            }
            let Some(p) = publisher.as_ref() else { return };
            match p.event(link.topology(), &event).await {
                Ok(()) => return,
                Err(_) => *publisher = None, // the channel died: open another once
            }
        }
    }
}

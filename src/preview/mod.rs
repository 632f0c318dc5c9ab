//! `vpd preview`: a live dashboard of the cluster, fed by the job events servers publish on
//! `NS.events`, with `/metrics` for Prometheus.
//!
//! ```text
//!  servers ──JobEvent──▶ NS.events (fanout) ──▶ preview's own queue ──▶ Board ──▶ /events (SSE) ──▶ browsers
//!                                                                        │──▶ /jobs, /jobs/{id}, frame.jpg
//!  NS.tasks depth ◀── polled every few seconds ──────────────────────────┘──▶ /metrics
//! ```
//!
//! Any number of previews can run: each binds its own exclusive queue to the exchange. One
//! started mid-job shows the job from its next event on. A running job that goes silent for
//! longer than a server lets a job stall is shown failed: its server is gone. A lost broker
//! connection is retried with a growing pause, and the page says so meanwhile. `vpd server
//! --preview` serves the same dashboard from the server's own jobs, with no broker involved.
//! With `--state-dir`, a preview on a server's host also lists the jobs its store remembers.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::board::{Board, Link, QUEUE_POLL};
use crate::broker::{Broker, BrokerUrls, Topology};
use crate::http;
use crate::metrics::WorkerId;
use crate::protocol::event::JobEvent;

/// A running job silent for this long is shown failed: its server is gone.
const SILENCE: Duration = Duration::from_secs(crate::pipeline::DEFAULT_STALL_TIMEOUT.as_secs() + 60);

/// Everything `vpd preview` needs.
#[derive(Debug, Clone)]
pub struct PreviewConfig {
    /// The broker.
    pub amqp_url: BrokerUrls,
    /// Queue and exchange names.
    pub topology: Topology,
    /// A server's state directory, whose job store the dashboard lists too.
    pub state_dir: Option<std::path::PathBuf>,
    /// The token the dashboard wants, if any.
    pub token: Option<crate::protocol::message::Token>,
    /// TLS on the dashboard's port.
    pub tls: Option<crate::tls::ServerTls>,
}

/// Runs a preview, serving on `listener`, until `shutdown` fires. An unreachable broker at
/// start is an error; later losses are retried.
pub async fn run(cfg: PreviewConfig, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let name = format!("vpd-preview {}", WorkerId::this_process());
    let broker = Broker::connect(&cfg.amqp_url, &name).await?;
    // A namespace whose queues are of another type than --queue-type says is an error now.
    broker.declare(&cfg.topology).await?;
    let board = Arc::new(Board::new());
    if let Some(dir) = &cfg.state_dir {
        // Yesterday's jobs too, read once: what happens from now on comes as events. A store
        // that is not there yet (no server ran) or cannot be read leaves the dashboard as it is.
        match crate::store::Store::open_read_only(dir).and_then(|store| store.list(crate::board::MAX_JOBS)) {
            Ok(jobs) => board.remember(&jobs),
            Err(e) => warn!(error = %format!("{e:#}"), "no job history on the dashboard"),
        }
    }
    info!(broker = broker.url(), "preview started");
    crate::service::ready("serving the dashboard");
    let watchdog = tokio::spawn(crate::service::watchdog(shutdown.clone()));
    let auth: Option<http::Auth> = cfg.token.clone().map(|expected| {
        Arc::new(move |presented: &str| expected.matches(&crate::protocol::message::Token::new(presented)))
            as http::Auth
    });
    let site = http::Site::dashboard(board.clone()).with_tls(cfg.tls.as_ref()).with_auth(auth);
    let follower = tokio::spawn(follow(cfg, name, broker, board, shutdown.clone()));
    http::serve(listener, site, shutdown).await;
    crate::service::stopping();
    follower.await?;
    watchdog.abort();
    Ok(())
}

/// Feeds the board from the events exchange, reconnecting for as long as the process runs.
async fn follow(cfg: PreviewConfig, name: String, mut broker: Broker, board: Arc<Board>, shutdown: CancellationToken) {
    loop {
        match watch(&broker, &cfg.topology, &board, &shutdown).await {
            Ok(()) => break,
            Err(e) => warn!(error = %format!("{e:#}"), "lost RabbitMQ; reconnecting"),
        }
        board.set_link(Link { broker_connected: Some(false), queue_depth: None });
        broker = match crate::broker::retry(None, &shutdown, || Broker::connect(&cfg.amqp_url, &name)).await {
            Ok(b) => b,
            Err(_) => return, // stopped
        };
        info!("reconnected to RabbitMQ");
    }
    broker.close().await;
}

/// Applies every event to the board and polls the task queue, until shutdown (`Ok`) or the
/// connection fails (`Err`).
async fn watch(broker: &Broker, t: &Topology, board: &Board, shutdown: &CancellationToken) -> anyhow::Result<()> {
    broker.declare(t).await?;
    let mut events = broker.consume_events(t, "preview").await?;
    let mut poll = tokio::time::interval(QUEUE_POLL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = poll.tick() => {
                board.expire_silent(SILENCE);
                let (depth, _consumers) = broker.queue_stats(&t.tasks()).await?;
                board.set_link(Link { broker_connected: Some(true), queue_depth: Some(depth) });
            }
            message = events.next() => match message {
                Some(Ok(m)) => match serde_json::from_slice::<JobEvent>(&m.body) {
                    Ok(event) => board.apply(&event),
                    Err(e) => debug!(error = %e, "ignoring an event this version does not know"),
                },
                Some(Err(e)) => return Err(e),
                None => anyhow::bail!("the events subscription was cancelled"),
            },
        }
    }
}

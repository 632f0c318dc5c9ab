//! `vpd server`: accepts jobs from clients over TCP (one dual-stack socket) and a Unix socket,
//! runs each through the pipeline, and streams progress and the result back.
//!
//! Frames go to in-process filter threads, or with `--amqp` to `vpd worker`s through
//! RabbitMQ; the job code is the same (see [`crate::transport`]). Jobs run side by side up to
//! `--max-jobs`; more wait for a slot. A job takes its slot only once its upload is complete
//! and gives it back before its result is sent, so a slow uploader or a slow reader holds a
//! place among the uploads ([`UPLOADS_PER_SLOT`] per slot, a quarter of them at most per
//! address or client: the `places` module), never a job slot.
//!
//! Once uploaded, a job is the server's (the `jobs` module): it runs whether or not a client
//! follows it, its output is committed in segments recorded in the job store, and a server
//! that starts again (after a crash, a kill or a shutdown) resumes every job that was queued,
//! running or paused from its first uncommitted segment. The first SIGTERM or SIGINT stops
//! accepting, stops the jobs where they are (their clients are told they go on later),
//! removes the socket file and what the server made in its work directory.
//!
//! Nothing a peer does ends the server: accept errors (out of descriptors, a connection reset
//! before it was accepted) are logged and backed off, and the connection caps (the
//! `admission` module) turn away what would exhaust descriptors.

mod admission;
pub mod clients;
mod control;
mod drive;
mod follow;
mod jobs;
mod live;
mod observer;
mod places;
mod refusal;
mod session;
mod shared;
mod upload;
mod web;
mod workdir;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, info, warn};

use crate::board::{Board, Link, QUEUE_POLL};
use crate::broker::{BrokerUrls, Topology};
use crate::filters::FilterEnv;
use crate::http::{self, Site};
use crate::metrics::WorkerId;
use crate::net::{UnixSocket, bind_tcp, bind_unix};
use crate::protocol::codec;
use crate::protocol::message::{ErrorCode, ServerMessage, Token};
use crate::store::{JobId, JobState, Store};
use crate::transport::Transport;
use crate::transport::amqp::{AmqpTransport, BrokerLink};
use crate::transport::local::LocalTransport;
use admission::Admission;
use jobs::Jobs;
use shared::Shared;
use workdir::WorkDir;

/// How long running connections get to end after a shutdown signal.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// Uploads (and results being sent) at once, per job slot. Stalled uploads cost no disk, and
/// are cut by the rate floor; each upload's announced size is checked against the free disk.
pub const UPLOADS_PER_SLOT: usize = 16;
/// An upload cut off is kept this long after its last byte for its client to resume (or
/// `--keep-results`, when shorter).
const KEEP_PARTIAL_UPLOADS: Duration = Duration::from_secs(3600);
/// The first pause after a failed accept; it doubles while accepts keep failing.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// The longest pause after a failed accept.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Where the server's frames are filtered.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Filter threads in the server process.
    Local {
        /// Filter threads.
        threads: NonZeroUsize,
        /// Files the filters need.
        filter_env: FilterEnv,
    },
    /// `vpd worker`s behind RabbitMQ.
    Amqp {
        /// The broker.
        url: BrokerUrls,
        /// Queue and exchange names.
        topology: Topology,
        /// Re-dispatch a frame without a result for this long (while others come back).
        redispatch_after: Duration,
    },
}

/// Everything `vpd server` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// TCP address to listen on.
    pub listen: Option<SocketAddr>,
    /// Unix socket path to listen on.
    pub unix: Option<PathBuf>,
    /// Where frames are filtered.
    pub backend: Backend,
    /// Who may connect: the one token, the tokens file's clients, or everyone.
    pub clients: clients::Clients,
    /// The tokens file, read again on SIGHUP.
    pub tokens_file: Option<PathBuf>,
    /// Largest accepted upload, in bytes.
    pub max_upload: u64,
    /// Jobs running at once.
    pub max_jobs: NonZeroUsize,
    /// Where uploads and results are kept while a job runs.
    pub work_dir: PathBuf,
    /// Where the job store and the jobs' files live.
    pub state_dir: PathBuf,
    /// Seconds of video per committed segment.
    pub segment_seconds: f64,
    /// What a client's `--split auto` means here.
    pub split: crate::protocol::segment::Split,
    /// The largest segment task put on the broker.
    pub max_message: usize,
    /// How frame mode cuts large frames into tiles (`--tiles`).
    pub tiles: crate::filters::tiles::Tiles,
    /// How long an ended job's upload and result are kept.
    pub keep_results: Duration,
    /// Most bytes the kept jobs may take; the oldest ended ones go first.
    pub max_stored: u64,
    /// Frames in flight per job; `None` picks from the frame size.
    pub window: Option<NonZeroUsize>,
    /// Serve the web application and the dashboard of this server's jobs here.
    pub preview: Option<SocketAddr>,
    /// With no token configured, peers beyond loopback may change things from the web.
    pub web_open: bool,
    /// The presets the web application offers: the built-in ones and the config file's.
    pub presets: crate::filters::presets::Presets,
    /// Serve `/metrics` and `/healthz` here.
    pub metrics: Option<SocketAddr>,
    /// TLS on the TCP listener and the HTTP ports.
    pub tls: Option<crate::tls::ServerTls>,
}

/// What a server claims before it runs: its sockets (so a caller can read the ports) and its
/// work directory, so that once the server says it listens, it is ready.
pub struct Listeners {
    tcp: Option<tokio::net::TcpListener>,
    unix: Option<UnixSocket>,
    preview: Option<tokio::net::TcpListener>,
    metrics: Option<tokio::net::TcpListener>,
    tls: Option<crate::tls::Fingerprint>,
    work_dir: WorkDir,
    store: Store,
    jobs: Jobs,
}

impl Listeners {
    /// Claims the work directory and binds what `cfg` asks for.
    pub fn bind(cfg: &ServerConfig) -> anyhow::Result<Self> {
        // Uploads and results are the users' videos: private to the service user, whoever
        // creates the file (OpenCV's encoder opens its own).
        // SAFETY: umask only sets the process's file-creation mask.
        unsafe { libc::umask(0o077) };
        // First: a failed start must leave a user's directory as it was, and a directory
        // another server uses is refused before any socket is taken.
        let work_dir = WorkDir::prepare(&cfg.work_dir)?;
        // The job store: a database that is newer, corrupt or unwritable stops the start here.
        let store = Store::open(&cfg.state_dir)?;
        let jobs = Jobs::open(&cfg.state_dir, cfg.segment_seconds, cfg.keep_results, cfg.max_stored)?;
        let tcp = cfg.listen.map(bind_tcp).transpose()?;
        let unix = cfg.unix.as_deref().map(bind_unix).transpose()?;
        let preview = cfg.preview.map(bind_tcp).transpose()?;
        let metrics = cfg.metrics.map(bind_tcp).transpose()?;
        let tls = cfg.tls.as_ref().map(|t| t.fingerprint);
        Ok(Listeners { tcp, unix, preview, metrics, tls, work_dir, store, jobs })
    }

    /// `tcp ADDR`, `tls sha256:FINGERPRINT` (the certificate clients may pin), `unix PATH`, …,
    /// one line each: what the server announces on stdout.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(addr) = self.tcp.as_ref().and_then(|l| l.local_addr().ok()) {
            lines.push(format!("tcp {addr}"));
            if let Some(fingerprint) = &self.tls {
                lines.push(format!("tls {fingerprint:?}"));
            }
        }
        if let Some(u) = &self.unix {
            lines.push(format!("unix {}", u.path().display()));
        }
        for (what, l) in [("preview", &self.preview), ("metrics", &self.metrics)] {
            if let Some(addr) = l.as_ref().and_then(|l| l.local_addr().ok()) {
                lines.push(format!("{what} http://{addr}/"));
            }
        }
        lines
    }
}

/// Runs the server on `listeners` until `shutdown` fires.
pub async fn run(cfg: ServerConfig, listeners: Listeners, shutdown: CancellationToken) -> anyhow::Result<()> {
    // The work directory stays claimed (locked) until the server ends.
    let Listeners { tcp, unix, preview, metrics, work_dir: _work_dir, store, jobs, .. } = listeners;
    let (store, jobs, remembered) = tokio::task::spawn_blocking(move || {
        recover_uploads(&store, &jobs)?;
        let remembered = store.list(crate::board::MAX_JOBS)?;
        Ok::<_, anyhow::Error>((store, jobs, remembered))
    })
    .await??;
    let board = Arc::new(Board::new());
    board.remember(&remembered);
    let Filtering { transport, parallelism, local_face_cascade, events } = filtering(&cfg).await?;
    let requires_token = cfg.clients.requires_token();
    let registry = Arc::new(clients::Registry::new(cfg.clients, cfg.tokens_file.clone()));
    let shared = Arc::new(Shared {
        transport,
        clients: registry.clone(),
        max_upload: cfg.max_upload,
        max_jobs: cfg.max_jobs.get(),
        job_slots: Semaphore::new(cfg.max_jobs.get()),
        uploads: places::Places::new(cfg.max_jobs.get() * UPLOADS_PER_SLOT),
        uploads_under_way: places::UnderWay::default(),
        keep_partial: cfg.keep_results.min(KEEP_PARTIAL_UPLOADS),
        admission: Admission::default(),
        window: cfg.window,
        split: cfg.split,
        max_message: cfg.max_message,
        tiles: cfg.tiles,
        parallelism,
        local_face_cascade,
        events,
        board,
        store,
        jobs,
        shutdown: shutdown.clone(),
    });
    shared
        .off(|s| {
            s.jobs.expire(&s.store);
            Ok(())
        })
        .await?;
    let resumable = shared.off(|s| s.store.unfinished()).await?;
    for id in resumable {
        resume(&shared, id).await?;
    }
    let tracker = TaskTracker::new();
    if let Some(l) = preview {
        let app = web::WebSide::new(shared.clone(), registry.clone(), cfg.presets.clone(), cfg.web_open);
        let site = Site::dashboard(shared.board.clone())
            .with_tls(cfg.tls.as_ref())
            .with_auth(dashboard_auth(&registry))
            .with_app(Arc::new(app));
        tracker.spawn(http::serve(l, site, shutdown.clone()));
    }
    if let Some(l) = metrics {
        let board = shared.board.clone();
        let site = Site::metrics_only(move || board.metrics()).with_tls(cfg.tls.as_ref());
        tracker.spawn(http::serve(l, site, shutdown.clone()));
    }
    tracker.spawn(janitor(shared.clone()));
    tracker.spawn(reload_on_hangup(registry.clone(), shutdown.clone()));
    if let (Some((link, _)), true) = (&shared.events, cfg.preview.is_some() || cfg.metrics.is_some()) {
        tracker.spawn(poll_queue(link.clone(), shared.board.clone(), shutdown.clone()));
    }
    info!(listening = ?cfg.listen, unix = ?cfg.unix, "server started");
    if let Some(tls) = &cfg.tls {
        info!(fingerprint = %tls.fingerprint, "TLS on the TCP and HTTP listeners; clients may pin this certificate");
    } else if let Some(addr) = cfg.listen.filter(|a| !a.ip().is_loopback())
        && requires_token
    {
        warn!(
            %addr,
            "clients send their token in clear text over TCP on a non-loopback address: anyone on the path can \
             read it; give --tls-cert and --tls-key"
        );
    }
    if let (Some(web), false) = (cfg.preview, requires_token) {
        if cfg.web_open {
            warn!(%web, "no token is configured and --web-open is given: anyone who reaches the web application may upload and control jobs");
        } else {
            warn!(%web, "no token is configured: only browsers on this host may upload and control jobs from the web application (--web-open lets everyone)");
        }
    }
    // Its sockets listen (bound before this) and its broker link is up (connected above).
    crate::service::ready("accepting jobs");
    tracker.spawn(crate::service::watchdog(shutdown.clone()));
    accept(cfg.tls.as_ref(), (tcp.as_ref(), unix.as_ref()), &tracker, &shared, &shutdown).await;
    crate::service::stopping();
    info!("shutting down: stopping jobs (they resume at the next start)");
    tracker.close();
    let drained = async {
        tracker.wait().await;
        shared.jobs.wait().await;
    };
    if tokio::time::timeout(DRAIN_DEADLINE, drained).await.is_err() {
        warn!("connections still open after {} s; leaving them", DRAIN_DEADLINE.as_secs());
    }
    drop(unix); // removes the socket file
    Ok(())
}

/// Accepts connections on `tcp` and `unix` until `shutdown` fires, each served on `tracker`.
async fn accept(
    tls: Option<&crate::tls::ServerTls>,
    (tcp, unix): (Option<&tokio::net::TcpListener>, Option<&UnixSocket>),
    tracker: &TaskTracker,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) {
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = accept_tcp(tcp) => accepted.map(|(stream, peer)| {
                let _ = stream.set_nodelay(true);
                match tls {
                    Some(tls) => admit_tls(tracker, stream, peer, tls, shared, shutdown),
                    None => admit(tracker, stream, Some(peer), shared, shutdown),
                }
            }),
            accepted = accept_unix(unix) => accepted.map(|stream| {
                admit(tracker, stream, None, shared, shutdown);
            }),
        };
        match accepted {
            Ok(()) => backoff = ACCEPT_BACKOFF,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ECONNABORTED: about this moment or one peer, never
                // about the listener. Waiting lets running connections end and free descriptors.
                warn!(error = %e, pause_ms = backoff.as_millis() as u64, "accepting a connection failed; pausing");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Fails the uploads the last process left under way with nothing of them safely stored; one
/// with some of it stored (at least one fsync step) waits for its client to resume it.
fn recover_uploads(store: &Store, jobs: &Jobs) -> anyhow::Result<()> {
    for id in store.uploading()? {
        let held = upload::held_upload(jobs, &id);
        if held > 0 {
            warn!(job = %id, held, "the server stopped during this job's upload; what arrived is kept for its client to resume");
        } else {
            warn!(job = %id, "the server stopped during this job's upload before any of it was safely stored; recorded as failed");
            let _ = std::fs::remove_dir_all(jobs.dir_of(&id));
            store.transition(&id, JobState::Failed, Some("the server stopped during the upload"))?;
        }
    }
    Ok(())
}

/// Where the server's frames are filtered, as its jobs use it.
struct Filtering {
    transport: Arc<dyn Transport + Send + Sync>,
    parallelism: NonZeroUsize,
    local_face_cascade: Option<PathBuf>,
    events: Option<(Arc<BrokerLink>, Mutex<Option<crate::broker::Publisher>>)>,
}

/// Filter threads in this process, or the broker's workers (connected now).
async fn filtering(cfg: &ServerConfig) -> anyhow::Result<Filtering> {
    Ok(match &cfg.backend {
        Backend::Local { threads, filter_env } => Filtering {
            transport: Arc::new(LocalTransport::new(*threads, filter_env.clone())?),
            parallelism: *threads,
            local_face_cascade: Some(filter_env.face_cascade.clone()),
            events: None,
        },
        Backend::Amqp { url, topology, redispatch_after } => {
            let name = format!("vpd-server {}", WorkerId::this_process());
            let link = Arc::new(BrokerLink::connect(url, &name, topology.clone()).await?);
            let fixed = cfg.window.map(NonZeroUsize::get);
            let transport =
                AmqpTransport::new(link.clone(), tokio::runtime::Handle::current(), *redispatch_after, fixed);
            // The pipeline's window is only the memory bound (up to 132 frames, fewer when
            // they are large); how many are on the broker adapts within it to the workers.
            let parallelism = NonZeroUsize::new(64).expect("64 > 0");
            Filtering {
                transport: Arc::new(transport),
                parallelism,
                local_face_cascade: None,
                events: Some((link, Mutex::new(None))),
            }
        }
    })
}

/// Starts job `id`, which the last process left queued, running or paused, from its committed
/// segments; a job whose upload is gone, or whose record does not read, fails.
async fn resume(shared: &Arc<Shared>, id: JobId) -> anyhow::Result<()> {
    let record = {
        let id = id.clone();
        shared
            .off(move |s| {
                let why = match s.store.get(&id) {
                    Ok(Some(record)) if record.spec.live.is_some() => {
                        "a live job's stream ended with the server that ran it".to_string()
                    }
                    Ok(Some(record)) if s.jobs.input_of(&id, &record.spec.input_name).is_file() => {
                        if record.state != JobState::Paused {
                            s.store.resumed(&id)?;
                        }
                        return Ok(Some(record));
                    }
                    Ok(Some(_)) => "the server lost the job's upload".to_string(),
                    Ok(None) => return Ok(None),
                    Err(e) => format!("{e:#}"),
                };
                warn!(job = %id, why, "cannot resume a job; recorded as failed");
                s.store.transition(&id, JobState::Failed, Some(&why))?;
                Ok(None)
            })
            .await?
    };
    if let Some(record) = record {
        let paused = record.state == JobState::Paused;
        info!(job = %id, committed_frames = record.committed_frames, paused, "resuming a job the last process left");
        drive::launch(shared, id, record.spec, paused);
    }
    Ok(())
}

/// Who may see the dashboard: anyone where no token is required, else a client with a token
/// (of either role).
fn dashboard_auth(registry: &Arc<clients::Registry>) -> Option<http::Auth> {
    if !registry.clients().requires_token() {
        return None;
    }
    let registry = registry.clone();
    Some(Arc::new(move |token: &str| registry.clients().identify(Some(&Token::new(token))).is_some()))
}

/// Reads the tokens file again on each SIGHUP; a file that does not read leaves the clients
/// as they were, and says why.
async fn reload_on_hangup(registry: Arc<clients::Registry>, shutdown: CancellationToken) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = hangups.recv() => if got.is_none() { return },
        }
        match registry.reload() {
            Ok(n) => info!(clients = n, "tokens file read again"),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot read the tokens file again; the clients stay as they were")
            }
        }
    }
}

/// Removes kept results past `--keep-results` or `--max-stored`, once a minute.
async fn janitor(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(jobs::JANITOR_INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            s.jobs.expire(&s.store);
            expire_partial_uploads(&s);
        })
        .await;
    }
}

/// Fails the uploads cut off and not resumed within [`Shared::keep_partial`] of their last
/// byte, and removes what they held.
fn expire_partial_uploads(shared: &Shared) {
    let Ok(ids) = shared.store.uploading() else { return };
    for id in ids {
        let partial = shared.jobs.partial_of(&id);
        let idle = std::fs::metadata(&partial).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if shared.uploads_under_way.holds(&id) || idle.is_some_and(|idle| idle < shared.keep_partial) {
            continue;
        }
        let _ = std::fs::remove_dir_all(shared.jobs.dir_of(&id));
        info!(job = %id, "an upload cut off was not resumed in time; removed");
        let why = format!("the upload was cut off and not resumed within {} s", shared.keep_partial.as_secs());
        if let Err(e) = shared.store.transition(&id, JobState::Failed, Some(&why)) {
            warn!(job = %id, error = %format!("{e:#}"), "cannot record an expired upload");
        }
    }
}

/// Serves a new connection, or turns it away at once when it is over a cap.
fn admit<S>(
    tracker: &TaskTracker,
    stream: S,
    peer: Option<SocketAddr>,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + TryWrite + Unpin + Send + 'static,
{
    let name = peer.map_or_else(|| "unix".to_string(), |p| p.to_string());
    match shared.admission.admit(peer.map(|p| p.ip())) {
        Ok(ticket) => {
            // Every line about this connection, and about the job it runs, names the peer.
            let span = tracing::info_span!("conn", peer = %name, client = tracing::field::Empty);
            tracker.spawn(session::serve(stream, name, ticket, shared.clone(), shutdown.clone()).instrument(span));
        }
        Err(why) => {
            info!(peer = %name, reason = ?why, "connection refused");
            // One small frame into an empty socket buffer: it goes out whole or not at all,
            // and nothing waits for it.
            let message =
                ServerMessage::Error { code: ErrorCode::Busy, message: why.message(), retry_after_s: Some(1) };
            if let Ok(frame) = codec::encode_control(&message) {
                let _ = stream.try_write_now(&frame);
            }
        }
    }
}

/// Serves a new TLS connection: its handshake, then the session, in the connection's own task
/// (bounded by [`crate::tls::HANDSHAKE_TIMEOUT`]). Over a cap, it is closed at once: a refusal
/// in clear text would mean nothing to a TLS client.
fn admit_tls(
    tracker: &TaskTracker,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: &crate::tls::ServerTls,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) {
    let name = peer.to_string();
    let ticket = match shared.admission.admit(Some(peer.ip())) {
        Ok(ticket) => ticket,
        Err(why) => {
            info!(peer = %name, reason = ?why, "connection refused");
            return;
        }
    };
    let (acceptor, shared, shutdown) = (tls.acceptor.clone(), shared.clone(), shutdown.clone());
    let span = tracing::info_span!("conn", peer = %name, client = tracing::field::Empty);
    tracker.spawn(
        async move {
            let handshake = tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let handshake = tokio::select! {
                done = handshake => done,
                _ = ticket.evicted() => return info!("closed in its TLS handshake to make room for a newer connection"),
            };
            match handshake {
                Ok(Ok(stream)) => session::serve(stream, name, ticket, shared, shutdown).await,
                Ok(Err(e)) => info!(error = %e, "TLS handshake failed"),
                Err(_) => info!("no TLS handshake in time"),
            }
        }
        .instrument(span),
    );
}

/// A socket written to without waiting.
trait TryWrite {
    fn try_write_now(&self, bytes: &[u8]) -> std::io::Result<usize>;
}

impl TryWrite for tokio::net::TcpStream {
    fn try_write_now(&self, bytes: &[u8]) -> std::io::Result<usize> {
        self.try_write(bytes)
    }
}

impl TryWrite for tokio::net::UnixStream {
    fn try_write_now(&self, bytes: &[u8]) -> std::io::Result<usize> {
        self.try_write(bytes)
    }
}

async fn accept_tcp(l: Option<&tokio::net::TcpListener>) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn accept_unix(l: Option<&UnixSocket>) -> std::io::Result<tokio::net::UnixStream> {
    match l {
        Some(u) => u.listener.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// Keeps the board's view of the broker current: connected or not, and the task queue's depth.
async fn poll_queue(link: Arc<BrokerLink>, board: Arc<Board>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(QUEUE_POLL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let depth = match link.get().await {
            Ok(broker) => broker.queue_stats(&link.topology().tasks()).await.ok().map(|(depth, _)| depth),
            Err(_) => None,
        };
        board.set_link(Link { broker_connected: Some(depth.is_some()), queue_depth: depth });
    }
}

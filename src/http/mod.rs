//! The HTTP side of every role that serves one: the dashboard, its JSON API and event stream
//! (`vpd preview`, `vpd server --preview`), and `/metrics` with `/healthz` (those and
//! `--metrics` on the server and the workers). hyper 1.x, HTTP/1.1.
//!
//! | Path | What |
//! |---|---|
//! | `/` , `/app.js`, `/style.css` | the dashboard (compiled in from `assets/dashboard/`) |
//! | `/events` | Server-Sent Events: a `snapshot`, then `job`, `frame` and `link` events |
//! | `/jobs`, `/jobs/{id}` | JSON views of jobs ([`JobView`]) |
//! | `/jobs/{id}/frame.jpg` | the job's latest thumbnail; 404 before the first |
//! | `/metrics` | Prometheus text format |
//! | `/healthz` | `ok` while the process serves |
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections, of which at most [`MAX_EVENT_STREAMS`]
//! hold an event stream (more get `503` with `Retry-After`), so `/healthz` and `/metrics` answer
//! however many dashboards are open; connections that have sent no request yet go through a
//! [`Gate`], which closes the oldest of them to make room for a newcomer, so they answer
//! beside any number of idle connections too. Every event stream buffers a few chunks and, when it
//! falls behind the board, starts over from a snapshot. Every event stream ends when the
//! process shuts down, so a graceful stop never waits on an open browser tab.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub mod files;
mod reply;
pub mod sessions;
pub mod web;

use self::reply::{ChannelBody, Reply, body, json, not_found, text};
use self::sessions::presented_token;
use crate::board::{Board, JobView, Link, Update};
use crate::metrics::exposition::CONTENT_TYPE as METRICS_CONTENT_TYPE;
use crate::net::gate::{Gate, Limits, canonical as net_canonical};

/// Connections served at once; past it, a newcomer is closed at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections that have not yet sent a whole request: at most 512, 32 per address; past
/// either, the oldest of the address holding the most is closed, so idle connections never
/// keep `/healthz` out. Past their request, connections are bounded only in all: behind a
/// reverse proxy every browser comes from one address.
const GATE: Limits = Limits { pending: 512, pending_per_address: 32, per_address: MAX_CONNECTIONS };
/// Event streams open at once: a quarter of the connections, so that streams alone never
/// keep the short requests out.
pub const MAX_EVENT_STREAMS: usize = MAX_CONNECTIONS / 4;
/// What a browser refused an event stream is told to wait before retrying, in seconds.
const STREAMS_FULL_RETRY_S: &str = "10";
/// A comment line on idle event streams, so proxies and browsers keep them open.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// How long a browser waits before reconnecting a dropped event stream, in milliseconds.
const RETRY_MS: u64 = 2000;
/// Chunks buffered per event stream.
const STREAM_BUFFER: usize = 16;
/// Time a connection has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time open requests get to finish after a shutdown.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const STYLE_CSS: &str = include_str!("../../assets/dashboard/style.css");

/// What a listener serves.
pub struct Site {
    board: Option<Arc<Board>>,
    metrics: Box<dyn Fn() -> String + Send + Sync>,
    streams: Arc<Semaphore>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    auth: Option<Auth>,
    app: Option<Arc<dyn web::WebApp>>,
    sessions: sessions::Sessions,
}

/// Checks a token presented to the dashboard: whether its holder may see it.
pub type Auth = Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl Site {
    /// The dashboard, its API and event stream, and `/metrics`, all from `board`.
    pub fn dashboard(board: Arc<Board>) -> Self {
        let b = board.clone();
        Site {
            board: Some(board),
            metrics: Box::new(move || b.metrics()),
            streams: event_streams(),
            tls: None,
            auth: None,
            app: None,
            sessions: sessions::Sessions::default(),
        }
    }

    /// `/metrics` (rendered by `metrics` on each scrape) and `/healthz` only.
    pub fn metrics_only(metrics: impl Fn() -> String + Send + Sync + 'static) -> Self {
        Site {
            board: None,
            metrics: Box::new(metrics),
            streams: event_streams(),
            tls: None,
            auth: None,
            app: None,
            sessions: sessions::Sessions::default(),
        }
    }

    /// The dashboard only for those `auth` lets in (`/healthz` and `/metrics` stay open), when
    /// given: a token as `Authorization: Bearer …`, or in the cookie a browser gets from
    /// `/?token=…`.
    pub fn with_auth(mut self, auth: Option<Auth>) -> Self {
        self.auth = auth;
        self
    }

    /// The web application too (`/api/`): sign-in, uploads, controls, history and files,
    /// which `app` serves.
    pub fn with_app(mut self, app: Arc<dyn web::WebApp>) -> Self {
        self.app = Some(app);
        self
    }

    /// Who a session's name is now: the web application's tokens file says; a dashboard
    /// without one has only its one token, so a session stays whoever signed in.
    fn recheck(&self, name: &str) -> Option<sessions::Identity> {
        match &self.app {
            Some(app) => app.recheck(name),
            None => Some(sessions::Identity { name: name.to_string(), may_change: false }),
        }
    }

    /// Whether `token` lets its holder see the dashboard, and who it is.
    fn token_identity(&self, token: &str) -> Option<sessions::Identity> {
        match &self.app {
            Some(app) => app.identify(token),
            None => self
                .auth
                .as_ref()
                .is_some_and(|auth| auth(token))
                .then(|| sessions::Identity { name: "dashboard".to_string(), may_change: false }),
        }
    }

    /// Served over TLS with `tls`, when given.
    pub fn with_tls(mut self, tls: Option<&crate::tls::ServerTls>) -> Self {
        self.tls = tls.map(|t| t.acceptor.clone());
        self
    }
}

fn event_streams() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_EVENT_STREAMS))
}

/// Serves `site` on `listener` until `shutdown` fires, then lets open requests finish (event
/// streams end at once) for a few seconds.
pub async fn serve(listener: TcpListener, site: Site, shutdown: CancellationToken) {
    let site = Arc::new(site);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let gate = Gate::new(GATE);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    warn!(error = %e, "accepting an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over its address's share: closed at once. Otherwise the gate has made room among
        // the pending connections, and the newcomer takes the place of the one it evicted.
        let Ok(pass) = gate.admit(Some(peer.ip())) else { continue };
        let evicted = pass.evicted();
        let slots = slots.clone();
        let pass = Arc::new(std::sync::Mutex::new(pass));
        let (tls, site, stop) = (site.tls.clone(), site.clone(), shutdown.clone());
        let peer = SocketAddr::new(net_canonical(peer.ip()), peer.port());
        let service = service_fn(move |request| {
            // A whole request's headers: no newcomer may evict this connection any more.
            pass.lock().unwrap_or_else(|p| p.into_inner()).proven();
            let (site, stop) = (site.clone(), stop.clone());
            async move {
                let mut reply = handle(&site, request, &stop, peer).await;
                guard(reply.headers_mut());
                Ok::<_, Infallible>(reply)
            }
        });
        let builder = {
            let mut b = http1::Builder::new();
            b.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            b
        };
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            tokio::pin!(evicted);
            // The evicted connection's task gives its slot back when it next runs, which under
            // a flood of newcomers can be after this one asks: so this one waits for a slot
            // (at most as long as a request's headers may take), pending and evictable like
            // any other, rather than being closed because a task had not yet run.
            let permit = tokio::select! {
                permit = tokio::time::timeout(HEADER_TIMEOUT, slots.acquire_owned()) => match permit {
                    Ok(Ok(permit)) => permit,
                    _ => return debug!("an HTTP connection found no free place in time"),
                },
                () = &mut evicted => return debug!("an HTTP connection waiting for a place was closed to make room"),
            };
            let serve = async move {
                match tls {
                    None => {
                        if let Err(e) = watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await {
                            debug!(error = %e, "HTTP connection ended in error");
                        }
                    }
                    // The handshake runs in the connection's own task, bounded like a request's headers.
                    Some(acceptor) => {
                        match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => {
                                let connection = builder.serve_connection(TokioIo::new(tls), service);
                                if let Err(e) = watcher.watch(connection).await {
                                    debug!(error = %e, "HTTPS connection ended in error");
                                }
                            }
                            Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                            Err(_) => debug!("no TLS handshake in time"),
                        }
                    }
                }
            };
            tokio::select! {
                () = serve => {}
                () = &mut evicted => debug!("an HTTP connection that sent no request was closed to make room"),
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_DEADLINE, graceful.shutdown()).await.is_err() {
        warn!("HTTP connections still open {} s after shutdown; leaving them", DRAIN_DEADLINE.as_secs());
    }
}

/// What a request asks for: the routing, apart from the answers, so that it can be tested (and
/// fuzzed) on any method and path without a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// Only GET and HEAD are served.
    MethodNotAllowed,
    /// `/healthz`.
    Health,
    /// `/metrics`.
    Metrics,
    /// The dashboard's page, script or style sheet.
    Asset(&'static str, &'static [u8]),
    /// `/events`, the SSE stream.
    Events,
    /// `/jobs`.
    Jobs,
    /// `/jobs/ID`: one job (an id holds no `/`).
    Job(&'a str),
    /// `/jobs/ID/frame.jpg`.
    Thumbnail(&'a str),
    /// Anything else, and the dashboard's paths on a metrics-only site.
    NotFound,
}

impl<'a> Route<'a> {
    /// Routes `method` and `path` (the path as hyper parsed it) on a site with a dashboard or
    /// without one.
    pub fn resolve(method: &Method, path: &'a str, dashboard: bool) -> Route<'a> {
        if method != Method::GET && method != Method::HEAD {
            return Route::MethodNotAllowed;
        }
        match path {
            "/healthz" => return Route::Health,
            "/metrics" => return Route::Metrics,
            _ if !dashboard => return Route::NotFound,
            _ => {}
        }
        match path {
            "/" | "/index.html" => Route::Asset("text/html; charset=utf-8", INDEX_HTML.as_bytes()),
            "/app.js" => Route::Asset("text/javascript; charset=utf-8", APP_JS.as_bytes()),
            "/style.css" => Route::Asset("text/css; charset=utf-8", STYLE_CSS.as_bytes()),
            "/events" => Route::Events,
            "/jobs" | "/jobs/" => Route::Jobs,
            _ => match path.strip_prefix("/jobs/").map(|rest| rest.split_once('/').unwrap_or((rest, ""))) {
                Some((id, "")) if !id.is_empty() => Route::Job(id),
                Some((id, "frame.jpg")) if !id.is_empty() => Route::Thumbnail(id),
                _ => Route::NotFound,
            },
        }
    }
}

/// What every answer carries: the page loads nothing from elsewhere and is framed nowhere.
fn guard(headers: &mut hyper::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

/// Answers one request: the web application's under `/api/`, the dashboard's otherwise.
async fn handle(site: &Site, request: Request<Incoming>, shutdown: &CancellationToken, peer: SocketAddr) -> Reply {
    if let Some(app) = &site.app
        && request.uri().path().starts_with("/api/")
    {
        return web::handle((&site.sessions, site.tls.is_some()), app, request, peer).await;
    }
    route(site, &request, shutdown)
}

/// Whether a request may see the dashboard: no token is needed, or it holds a live session,
/// or it presents a good token (which, in the address, is exchanged for a session).
enum Access {
    Granted,
    Refused,
    SignedIn(String),
}

fn access(site: &Site, request: &Request<Incoming>) -> Access {
    let open = site.auth.is_none() && site.app.as_ref().is_none_or(|app| !app.tokens_required());
    if open {
        return Access::Granted;
    }
    if let Some(cookie) = sessions::session_cookie(request.headers())
        && site.sessions.check(cookie, |name| site.recheck(name)).is_some()
    {
        return Access::Granted;
    }
    match presented_token(request) {
        Some((token, in_address)) => match site.token_identity(&token) {
            // A browser given the token in the address gets a session for it, and the
            // address loses it.
            Some(who) if in_address => Access::SignedIn(site.sessions.start(&who)),
            Some(_) => Access::Granted,
            None => Access::Refused,
        },
        None => Access::Refused,
    }
}

fn route(site: &Site, request: &Request<Incoming>, shutdown: &CancellationToken) -> Reply {
    let path = request.uri().path();
    let found = |view: Option<Reply>| view.unwrap_or_else(|| not_found(path));
    let route = Route::resolve(request.method(), path, site.board.is_some());
    // The page itself is open where the web application can sign a browser in (a token in
    // its address still signs in; a wrong one leaves the sign-in form to say so).
    let page = matches!(route, Route::Asset(..)) && site.app.is_some();
    if !matches!(route, Route::Health | Route::Metrics | Route::MethodNotAllowed | Route::NotFound) {
        match access(site, request) {
            Access::Granted => {}
            Access::Refused if page => {}
            Access::Refused => return unauthorized(),
            Access::SignedIn(cookie) => {
                let mut reply = text(StatusCode::SEE_OTHER, "signed in\n");
                let cookie = sessions::set_session_cookie(&cookie, site.tls.is_some());
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    reply.headers_mut().insert(header::SET_COOKIE, v);
                }
                reply.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/"));
                return reply;
            }
        }
    }
    match (route, &site.board) {
        (Route::MethodNotAllowed, _) => {
            let mut reply = text(StatusCode::METHOD_NOT_ALLOWED, "only GET here\n");
            reply.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            reply
        }
        (Route::Health, _) => text(StatusCode::OK, "ok\n"),
        (Route::Metrics, _) => body(StatusCode::OK, METRICS_CONTENT_TYPE, (site.metrics)()),
        (Route::Asset(content_type, content), _) => body(StatusCode::OK, content_type, content),
        (Route::Events, Some(board)) => match site.streams.clone().try_acquire_owned() {
            Ok(permit) => events(board.clone(), permit, shutdown.clone()),
            Err(_) => {
                let mut reply = text(StatusCode::SERVICE_UNAVAILABLE, "too many open event streams; retry later\n");
                reply.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(STREAMS_FULL_RETRY_S));
                reply
            }
        },
        (Route::Jobs, Some(board)) => json(StatusCode::OK, &board.jobs()),
        (Route::Job(id), Some(board)) => found(board.job(id).map(|view| json(StatusCode::OK, &view))),
        (Route::Thumbnail(id), Some(board)) => {
            found(board.thumbnail(id).map(|jpeg| body(StatusCode::OK, "image/jpeg", jpeg)))
        }
        _ => not_found(path),
    }
}

fn unauthorized() -> Reply {
    let mut reply =
        text(StatusCode::UNAUTHORIZED, "a token is needed: open /?token=TOKEN, or send Authorization: Bearer TOKEN\n");
    reply.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"vpd\""));
    reply
}

/// `/events`: a snapshot of the board, then every change, as Server-Sent Events. The stream
/// holds `permit`, its place among [`MAX_EVENT_STREAMS`], until it ends.
fn events(board: Arc<Board>, permit: OwnedSemaphorePermit, shutdown: CancellationToken) -> Reply {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        stream_events(board, tx, shutdown).await;
        drop(permit);
    });
    let mut reply = Response::new(ChannelBody(rx).boxed());
    let headers = reply.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    reply
}

async fn stream_events(board: Arc<Board>, tx: mpsc::Sender<Bytes>, shutdown: CancellationToken) {
    // Subscribed before the snapshot is taken: no change falls between the two.
    let mut updates = board.subscribe();
    let mut next = Some(snapshot(&board));
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await; // the first tick is immediate
    loop {
        if let Some(chunk) = next.take() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                sent = tx.send(chunk) => if sent.is_err() { return },
            }
        }
        next = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            _ = heartbeat.tick() => Some(Bytes::from_static(b": keep-alive\n\n")),
            update = updates.recv() => match update {
                Ok(update) => Some(encode(&update)),
                // Fell behind: start over from the current state rather than miss changes.
                Err(broadcast::error::RecvError::Lagged(_)) => Some(snapshot(&board)),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
    }
}

/// The whole board as one `snapshot` event, with the reconnect delay for the browser.
fn snapshot(board: &Board) -> Bytes {
    #[derive(Serialize)]
    struct Snapshot {
        jobs: Vec<JobView>,
        link: Link,
    }
    let data = Snapshot { jobs: board.jobs(), link: board.link() };
    let mut chunk = format!("retry: {RETRY_MS}\n");
    push_event(&mut chunk, "snapshot", &data);
    chunk.into()
}

fn encode(update: &Update) -> Bytes {
    let mut chunk = String::new();
    match update {
        Update::Job(view) => push_event(&mut chunk, "job", view),
        Update::Frame { job, index } => {
            push_event(&mut chunk, "frame", &serde_json::json!({ "job": job, "index": index }))
        }
        Update::Link(link) => push_event(&mut chunk, "link", link),
    }
    chunk.into()
}

/// Appends one event. JSON has no raw newlines, so `data` is one line.
fn push_event<T: Serialize>(chunk: &mut String, name: &str, data: &T) {
    let data = serde_json::to_string(data).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#));
    chunk.push_str("event: ");
    chunk.push_str(name);
    chunk.push_str("\ndata: ");
    chunk.push_str(&data);
    chunk.push_str("\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_single_data_lines_with_their_names() {
        let chunk = encode(&Update::Frame { job: "j1".parse().unwrap(), index: 7 });
        assert_eq!(&chunk[..], b"event: frame\ndata: {\"index\":7,\"job\":\"j1\"}\n\n");
        let board = Board::new();
        let snap = String::from_utf8(snapshot(&board).to_vec()).unwrap();
        assert!(snap.starts_with("retry: 2000\nevent: snapshot\ndata: {\"jobs\":[],\"link\":"), "{snap}");
        assert_eq!(snap.matches('\n').count(), 4, "retry, event, data, blank line: {snap}");
    }
}

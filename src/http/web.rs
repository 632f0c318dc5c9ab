//! The web application's routes under `/api/`: sign-in, the filter catalogue and chain check,
//! uploads, job controls, history, and the result and source files. The HTTP layer owns the
//! sessions and the web's own checks (same origin, anti-CSRF token, roles, loopback); the
//! server does the rest through [`WebApp`], so that an upload from a browser goes through the
//! very intake a `vpd client` upload does.
//!
//! | Route | What |
//! |---|---|
//! | `GET /api/me` | who this browser is signed in as, its anti-CSRF token, what the server takes |
//! | `POST /api/login`, `POST /api/logout` | a token (form field `token`) for a session cookie, and back |
//! | `GET /api/catalogue` | filters with their parameters, presets, codecs |
//! | `GET /api/check?chain=` | the chain parser's verdict, in its own words |
//! | `POST /api/jobs?chain=\|preset=&codec=&crf=&container=&name=` | the upload, as the raw body |
//! | `GET /api/history?before=ID&limit=N` | past jobs, newest first, a page at a time |
//! | `GET /api/jobs/{id}` | one job's record and charts |
//! | `POST /api/jobs/{id}/{cancel,pause,resume,rerun}` | the controls |
//! | `GET`/`HEAD /api/jobs/{id}/result`, `…/source` | the result and the original, with `Range` |

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde::Serialize;

use super::files::{self, ServedFile};
use super::reply::{Reply, json, text};
pub use super::sessions::Identity;
use super::sessions::{
    CSRF_HEADER, Sessions, Signed, presented_token, same_origin, session_cookie, set_session_cookie,
};
use crate::metrics::Charts;
use crate::protocol::job::{JobControl, JobId, JobRecord, JobState};

/// The largest sign-in form read.
const MAX_LOGIN_BYTES: usize = 4096;
/// Most jobs one page of history holds.
const MAX_PAGE: usize = 100;

/// A refusal, as the server words it: the HTTP status, one line, and when to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct WebError {
    /// The status code.
    pub status: StatusCode,
    /// One line for the user.
    pub message: String,
    /// When to try again, in seconds.
    pub retry_after_s: Option<u64>,
}

impl WebError {
    /// A refusal with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        WebError { status, message: message.into(), retry_after_s: None }
    }
}

/// What a browser asks to be done with its upload (the query of `POST /api/jobs`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UploadForm {
    /// A filter chain, as the command line takes it.
    pub chain: Option<String>,
    /// Or a preset's name.
    pub preset: Option<String>,
    /// The output codec (the server's default when absent).
    pub codec: Option<String>,
    /// The quality (CRF), as typed.
    pub crf: Option<String>,
    /// The result's container: `mp4`, `mkv`, …
    pub container: String,
    /// The file's name on the user's machine: shown and kept in the record, never a path.
    pub name: String,
    /// Its size (the request's `Content-Length`).
    pub bytes: u64,
}

/// Which of a job's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Its result.
    Result,
    /// The original it was made from.
    Source,
}

/// A job's record and what its charts show (live, or as kept when it ended).
#[derive(Debug, Clone, Serialize)]
pub struct JobDetail {
    /// Its record in the job store.
    pub record: JobRecord,
    /// Its charts, where known.
    pub charts: Option<Charts>,
    /// Whether its result can be downloaded now.
    pub result: bool,
    /// Whether its original can be played now.
    pub source: bool,
}

/// A future the server answers with.
pub type Answer<T> = Pin<Box<dyn Future<Output = Result<T, WebError>> + Send>>;

/// What the web application asks of the server.
pub trait WebApp: Send + Sync {
    /// The client `token` names, if any.
    fn identify(&self, token: &str) -> Option<Identity>;
    /// The client called `name` as the tokens file has it now (`None`: removed).
    fn recheck(&self, name: &str) -> Option<Identity>;
    /// Whether clients need a token.
    fn tokens_required(&self) -> bool;
    /// Whether, with no token required, peers beyond loopback may change anything.
    fn open_to_all(&self) -> bool;
    /// Records a failed sign-in from `ip`; returns how long its answer waits.
    fn failed_login(&self, ip: IpAddr) -> Duration;
    /// The largest upload taken, in bytes.
    fn max_upload(&self) -> u64;
    /// The filters, presets and codecs a form offers.
    fn catalogue(&self) -> serde_json::Value;
    /// The chain or preset checked by the parser: its canonical text, or the parser's error.
    fn check_chain(&self, chain: &str) -> Result<String, String>;
    /// Takes an upload through the server's intake and starts its job.
    fn submit(&self, who: Identity, peer: SocketAddr, form: UploadForm, body: UploadBody) -> Answer<JobId>;
    /// Applies a control; returns the job it concerns (a rerun's new one) and its state.
    fn control(&self, who: Identity, peer: SocketAddr, job: JobId, control: JobControl) -> Answer<(JobId, JobState)>;
    /// A page of history: jobs created before `before`, newest first.
    fn history(&self, before: Option<JobId>, limit: usize) -> Answer<Vec<JobRecord>>;
    /// One job in full.
    fn detail(&self, job: JobId) -> Answer<JobDetail>;
    /// One of a job's files, opened.
    fn file(&self, job: JobId, kind: FileKind) -> Answer<ServedFile>;
}

/// An upload's body as it arrives, counted for the rate floor.
pub struct UploadBody {
    body: Incoming,
    count: Arc<AtomicU64>,
}

impl UploadBody {
    /// The bytes read so far.
    pub fn count(&self) -> Arc<AtomicU64> {
        self.count.clone()
    }

    /// The next piece: `None` at the end, an error when the connection broke.
    pub async fn next(&mut self) -> Option<Result<Bytes, String>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                        return Some(Ok(data));
                    }
                }
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }
}

/// What an `/api/` path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRoute<'a> {
    /// `GET /api/me`.
    Me,
    /// `POST /api/login`.
    Login,
    /// `POST /api/logout`.
    Logout,
    /// `GET /api/catalogue`.
    Catalogue,
    /// `GET /api/check`.
    Check,
    /// `POST /api/jobs`.
    Upload,
    /// `GET /api/history`.
    History,
    /// `GET /api/jobs/{id}`.
    Detail(&'a str),
    /// `POST /api/jobs/{id}/{control}`.
    Control(&'a str, JobControl),
    /// `GET`/`HEAD /api/jobs/{id}/result` or `…/source`.
    File(&'a str, FileKind),
    /// A known path with another method.
    MethodNotAllowed(&'static str),
    /// Nothing here.
    NotFound,
}

impl<'a> ApiRoute<'a> {
    /// Routes `method` and `path` (under `/api/`).
    pub fn resolve(method: &Method, path: &'a str) -> ApiRoute<'a> {
        let (get, post, head) = (method == Method::GET, method == Method::POST, method == Method::HEAD);
        let only = |ok: bool, route: ApiRoute<'a>, allow: &'static str| {
            if ok { route } else { ApiRoute::MethodNotAllowed(allow) }
        };
        let Some(rest) = path.strip_prefix("/api/") else { return ApiRoute::NotFound };
        match rest {
            "me" => return only(get || head, ApiRoute::Me, "GET, HEAD"),
            "login" => return only(post, ApiRoute::Login, "POST"),
            "logout" => return only(post, ApiRoute::Logout, "POST"),
            "catalogue" => return only(get || head, ApiRoute::Catalogue, "GET, HEAD"),
            "check" => return only(get || head, ApiRoute::Check, "GET, HEAD"),
            "jobs" => return only(post, ApiRoute::Upload, "POST"),
            "history" => return only(get || head, ApiRoute::History, "GET, HEAD"),
            _ => {}
        }
        let Some(job) = rest.strip_prefix("jobs/") else { return ApiRoute::NotFound };
        let (id, what) = job.split_once('/').unwrap_or((job, ""));
        if id.is_empty() || id.parse::<JobId>().is_err() {
            return ApiRoute::NotFound;
        }
        match what {
            "" => only(get || head, ApiRoute::Detail(id), "GET, HEAD"),
            "result" => only(get || head, ApiRoute::File(id, FileKind::Result), "GET, HEAD"),
            "source" => only(get || head, ApiRoute::File(id, FileKind::Source), "GET, HEAD"),
            control => match JobControl::ALL.iter().find(|c| c.as_str() == control && **c != JobControl::Fetch) {
                Some(c) => only(post, ApiRoute::Control(id, *c), "POST"),
                None => ApiRoute::NotFound,
            },
        }
    }

    /// Whether the route changes something: it needs a session, its anti-CSRF token, the same
    /// origin and a role that may change things.
    pub fn changes(&self) -> bool {
        matches!(self, ApiRoute::Upload | ApiRoute::Control(..) | ApiRoute::Logout)
    }
}

fn error(e: WebError) -> Reply {
    let mut reply = json(e.status, &serde_json::json!({ "error": e.message }));
    if let Some(s) = e.retry_after_s
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        reply.headers_mut().insert(header::RETRY_AFTER, v);
    }
    reply
}

fn refused(status: StatusCode, message: &str) -> Reply {
    error(WebError::new(status, message))
}

fn query<'q>(request: &'q Request<Incoming>) -> impl Iterator<Item = (String, String)> + 'q {
    form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
}

fn param(request: &Request<Incoming>, key: &str) -> Option<String> {
    query(request).find(|(k, _)| k == key).map(|(_, v)| v).filter(|v| !v.is_empty())
}

/// Who the request is from, and its session if it presented one: a session cookie, else a
/// token (`Authorization: Bearer`, the older `vpd_token` cookie); with no token required,
/// everyone is `anonymous` (and gets a session from `/api/me`).
fn identify(sessions: &Sessions, app: &dyn WebApp, request: &Request<Incoming>) -> (Option<Identity>, Option<Signed>) {
    if let Some(cookie) = session_cookie(request.headers())
        && let Some(signed) = sessions.check(cookie, |name| app.recheck(name))
    {
        return (Some(signed.who.clone()), Some(signed));
    }
    if !app.tokens_required() {
        return (app.identify(""), None);
    }
    let who = presented_token(request).and_then(|(token, _)| app.identify(&token));
    (who, None)
}

/// Serves an `/api/` request with `sessions`, on a listener with TLS when `tls`.
pub async fn handle(
    (sessions, tls): (&Sessions, bool),
    app: &Arc<dyn WebApp>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Reply {
    let path = request.uri().path().to_string();
    let route = ApiRoute::resolve(request.method(), &path);
    if let ApiRoute::MethodNotAllowed(allow) = route {
        let mut reply = refused(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here");
        reply.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        return reply;
    }
    if route == ApiRoute::NotFound {
        return refused(StatusCode::NOT_FOUND, &format!("nothing at {path}"));
    }
    if route == ApiRoute::Login {
        return login((sessions, tls), app.as_ref(), request, peer).await;
    }
    let (who, signed) = identify(sessions, app.as_ref(), &request);
    if route == ApiRoute::Me {
        return me((sessions, tls), app.as_ref(), who, signed, peer);
    }
    let Some(who) = who else {
        return refused(StatusCode::UNAUTHORIZED, "sign in first: a token is needed");
    };
    if route.changes() {
        if !same_origin(request.headers(), tls) {
            return refused(StatusCode::FORBIDDEN, "refused: the request did not come from this site's pages");
        }
        let Some(signed) = &signed else {
            return refused(StatusCode::FORBIDDEN, "refused: this needs a signed-in session");
        };
        let presented = request.headers().get(CSRF_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
        use subtle::ConstantTimeEq as _;
        if !bool::from(presented.ct_eq(signed.csrf.as_bytes())) {
            return refused(StatusCode::FORBIDDEN, "refused: a missing or wrong anti-CSRF token");
        }
        if route == ApiRoute::Logout {
            if let Some(cookie) = session_cookie(request.headers()) {
                sessions.end(cookie);
            }
            return with_cookie(text(StatusCode::OK, "signed out\n"), &set_session_cookie("", tls));
        }
        if !who.may_change {
            return refused(StatusCode::FORBIDDEN, &format!("{} has a read-only token", who.name));
        }
        if !app.tokens_required() && !app.open_to_all() && !peer.ip().is_loopback() {
            return refused(
                StatusCode::FORBIDDEN,
                "with no token configured, only this host may change anything (see --web-open)",
            );
        }
    }
    let result = match route {
        ApiRoute::Catalogue => Ok(json(StatusCode::OK, &app.catalogue())),
        ApiRoute::Check => {
            let chain = param(&request, "chain").unwrap_or_default();
            Ok(match app.check_chain(&chain) {
                Ok(canonical) => json(StatusCode::OK, &serde_json::json!({ "ok": true, "chain": canonical })),
                Err(e) => json(StatusCode::UNPROCESSABLE_ENTITY, &serde_json::json!({ "ok": false, "error": e })),
            })
        }
        ApiRoute::Upload => upload(app, who, request, peer).await,
        ApiRoute::History => {
            let before = param(&request, "before").and_then(|b| b.parse::<JobId>().ok());
            let limit = param(&request, "limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(20).clamp(1, MAX_PAGE);
            app.history(before, limit).await.map(|jobs| {
                let next = (jobs.len() == limit).then(|| jobs.last().map(|j| j.id.clone())).flatten();
                json(StatusCode::OK, &serde_json::json!({ "jobs": jobs, "next": next }))
            })
        }
        ApiRoute::Detail(id) => match id.parse() {
            Ok(id) => app.detail(id).await.map(|d| json(StatusCode::OK, &d)),
            Err(_) => Err(WebError::new(StatusCode::NOT_FOUND, format!("no job {id}"))),
        },
        ApiRoute::Control(id, control) => match id.parse() {
            Ok(id) => app
                .control(who, peer, id, control)
                .await
                .map(|(job, state)| json(StatusCode::OK, &serde_json::json!({ "job": job, "state": state.as_str() }))),
            Err(_) => Err(WebError::new(StatusCode::NOT_FOUND, format!("no job {id}"))),
        },
        ApiRoute::File(id, kind) => match id.parse() {
            Ok(id) => match app.file(id, kind).await {
                Ok(file) => Ok(files::serve(file, &request)),
                Err(e) => Err(e),
            },
            Err(_) => Err(WebError::new(StatusCode::NOT_FOUND, format!("no job {id}"))),
        },
        ApiRoute::Me | ApiRoute::Login | ApiRoute::Logout | ApiRoute::MethodNotAllowed(_) | ApiRoute::NotFound => {
            Err(WebError::new(StatusCode::NOT_FOUND, format!("nothing at {path}")))
        }
    };
    result.unwrap_or_else(error)
}

fn with_cookie(mut reply: Reply, cookie: &str) -> Reply {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        reply.headers_mut().append(header::SET_COOKIE, v);
    }
    reply
}

/// `/api/me`: who this is, with its anti-CSRF token. Where no token is needed, a browser
/// without a session gets one here.
fn me(
    (sessions, tls): (&Sessions, bool),
    app: &dyn WebApp,
    who: Option<Identity>,
    signed: Option<Signed>,
    peer: SocketAddr,
) -> Reply {
    let changes_here = app.tokens_required() || app.open_to_all() || peer.ip().is_loopback();
    let answer = |who: &Option<Identity>, csrf: Option<&str>| {
        serde_json::json!({
            "signed_in": who.is_some(),
            "name": who.as_ref().map(|w| w.name.clone()),
            "may_change": who.as_ref().is_some_and(|w| w.may_change) && changes_here,
            "csrf": csrf,
            "tokens_required": app.tokens_required(),
            "max_upload": app.max_upload(),
        })
    };
    match (&who, &signed) {
        (Some(w), None) if !app.tokens_required() => {
            let cookie = sessions.start(w);
            let signed = sessions.check(&cookie, |name| app.recheck(name));
            let reply = json(StatusCode::OK, &answer(&who, signed.as_ref().map(|s| s.csrf.as_str())));
            with_cookie(reply, &set_session_cookie(&cookie, tls))
        }
        _ => json(StatusCode::OK, &answer(&who, signed.as_ref().map(|s| s.csrf.as_str()))),
    }
}

/// `POST /api/login`: a token, as the form field `token`, for a session cookie. A wrong token
/// waits longer each time from the same address, as the protocol's handshake does.
async fn login(
    (sessions, tls): (&Sessions, bool),
    app: &dyn WebApp,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Reply {
    if !same_origin(request.headers(), tls) {
        return refused(StatusCode::FORBIDDEN, "refused: the request did not come from this site's pages");
    }
    let body = http_body_util::Limited::new(request.into_body(), MAX_LOGIN_BYTES);
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return refused(StatusCode::PAYLOAD_TOO_LARGE, "the sign-in form is too large");
    };
    let token = form_urlencoded::parse(&body).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned());
    let who = token.as_deref().filter(|t| !t.is_empty()).and_then(|t| app.identify(t));
    let Some(who) = who.filter(|_| app.tokens_required()) else {
        if !app.tokens_required() {
            return refused(StatusCode::BAD_REQUEST, "this server needs no token");
        }
        tokio::time::sleep(app.failed_login(peer.ip())).await;
        return refused(StatusCode::UNAUTHORIZED, "wrong token");
    };
    let cookie = sessions.start(&who);
    let csrf = sessions.check(&cookie, |name| app.recheck(name)).map(|s| s.csrf);
    let reply = json(
        StatusCode::OK,
        &serde_json::json!({ "signed_in": true, "name": who.name, "may_change": who.may_change, "csrf": csrf }),
    );
    with_cookie(reply, &set_session_cookie(&cookie, tls))
}

/// `POST /api/jobs`: the raw body is the video. Its size must be announced (411 without
/// `Content-Length`), and is checked against the server's limit before anything is stored.
async fn upload(
    app: &Arc<dyn WebApp>,
    who: Identity,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Reply, WebError> {
    let chunked = request.headers().get(header::TRANSFER_ENCODING).is_some();
    let length = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let Some(bytes) = length.filter(|_| !chunked) else {
        return Err(WebError::new(StatusCode::LENGTH_REQUIRED, "an upload needs its Content-Length"));
    };
    if bytes > app.max_upload() {
        return Err(WebError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("an upload of {bytes} bytes is over this server's limit of {}", app.max_upload()),
        ));
    }
    let form = UploadForm {
        chain: param(&request, "chain"),
        preset: param(&request, "preset"),
        codec: param(&request, "codec"),
        crf: param(&request, "crf"),
        container: param(&request, "container").unwrap_or_else(|| "mp4".into()),
        name: param(&request, "name").unwrap_or_else(|| "upload".into()),
        bytes,
    };
    let body = UploadBody { body: request.into_body(), count: Arc::default() };
    let job = app.submit(who, peer, form, body).await?;
    Ok(json(StatusCode::CREATED, &serde_json::json!({ "job": job })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_route_by_method() {
        use ApiRoute::*;
        assert_eq!(ApiRoute::resolve(&Method::GET, "/api/me"), Me);
        assert_eq!(ApiRoute::resolve(&Method::POST, "/api/me"), MethodNotAllowed("GET, HEAD"));
        assert_eq!(ApiRoute::resolve(&Method::POST, "/api/jobs"), Upload);
        assert_eq!(ApiRoute::resolve(&Method::GET, "/api/jobs"), MethodNotAllowed("POST"));
        assert_eq!(ApiRoute::resolve(&Method::POST, "/api/jobs/j1/rerun"), Control("j1", JobControl::Rerun));
        assert_eq!(ApiRoute::resolve(&Method::POST, "/api/jobs/j1/fetch"), NotFound);
        assert_eq!(ApiRoute::resolve(&Method::HEAD, "/api/jobs/j1/result"), File("j1", FileKind::Result));
        assert_eq!(ApiRoute::resolve(&Method::GET, "/api/jobs/../etc/passwd"), NotFound);
        assert_eq!(ApiRoute::resolve(&Method::GET, "/api/jobs//result"), NotFound);
        assert!(Upload.changes() && Control("j", JobControl::Cancel).changes() && Logout.changes());
        assert!(!History.changes() && !File("j", FileKind::Source).changes() && !Login.changes());
    }
}

//! The server's side of the web application ([`crate::http::web::WebApp`]): tokens and roles
//! from the tokens file, the filter catalogue from the filters' own definitions, and uploads
//! through the same intake as the protocol's ([`super::upload::admit`]), with the same limits,
//! record and events.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hyper::StatusCode;

use super::clients::{Client, Registry, Role};
use super::control::apply;
use super::places::Seat;
use super::refusal::{Refusal, internal_error, refuse};
use super::shared::Shared;
use super::upload::{Caller, ChunkSource, UPLOAD_IDLE_TIMEOUT, admit, validate};
use crate::filters::presets::Presets;
use crate::filters::{Chain, FILTERS};
use crate::http::files::{ServedFile, content_type};
use crate::http::web::{Answer, FileKind, Identity, JobDetail, UploadBody, UploadForm, WebApp, WebError};
use crate::media::OutputOptions;
use crate::metrics::LATENCY_BOUNDS;
use crate::protocol::job::{JobControl, JobId, JobRecord, JobSpec, JobState};
use crate::protocol::message::{ErrorCode, Token};
use crate::protocol::wire::TransportEncoding;

/// What the web's uploads and controls call themselves in records and logs.
const SOFTWARE: &str = "vpd-web";
/// Codecs the upload form offers (any the server's FFmpeg has; the parser checks).
const CODECS: &[&str] = &["h264", "hevc", "vp9", "av1", "ffv1", "mpeg4", "mjpeg"];
/// Containers the upload form offers.
const CONTAINERS: &[&str] = &["mp4", "mkv", "webm", "mov"];

/// The web application on a server's shared state.
pub struct WebSide {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    presets: Presets,
    open: bool,
}

impl WebSide {
    /// The web application of `shared`, its clients from `registry`, offering `presets`;
    /// `open`: with no token required, peers beyond loopback may change things too.
    pub fn new(shared: Arc<Shared>, registry: Arc<Registry>, presets: Presets, open: bool) -> Self {
        WebSide { shared, registry, presets, open }
    }

    /// The client a web identity is now (its limits as the tokens file has them).
    fn client(&self, who: &Identity) -> Result<Arc<Client>, WebError> {
        let clients = self.registry.clients();
        if !clients.requires_token() {
            return clients.identify(None).ok_or_else(|| WebError::new(StatusCode::UNAUTHORIZED, "no such client"));
        }
        clients.by_name(&who.name).ok_or_else(|| WebError::new(StatusCode::UNAUTHORIZED, "signed out: no such client"))
    }

    /// The spec a browser's form asks for, checked as the protocol checks a submit.
    fn spec(&self, form: UploadForm) -> Result<JobSpec, WebError> {
        let bad = |m: String| WebError::new(StatusCode::BAD_REQUEST, m);
        let chain = match (&form.preset, &form.chain) {
            (Some(name), None) => self.presets.resolve(name).map_err(|e| bad(e.to_string()))?,
            (None, Some(chain)) => chain.parse::<Chain>().map_err(|e| bad(e.to_string()))?,
            _ => return Err(bad("give a filter chain or a preset, not both or neither".into())),
        };
        let codec = match &form.codec {
            Some(c) => c.parse().map_err(|e: crate::media::MediaError| bad(e.to_string()))?,
            None => Default::default(),
        };
        let crf = match &form.crf {
            Some(c) => {
                Some(c.trim().parse::<u32>().map_err(|_| bad(format!("quality (CRF) '{c}' is not a whole number")))?)
            }
            None => None,
        };
        // The name is shown and recorded; only its extension is ever used, as a container hint.
        let name: String = form.name.chars().filter(|c| !c.is_control()).take(255).collect();
        let name = name.rsplit(['/', '\\']).next().unwrap_or_default().to_string();
        let mut spec = JobSpec {
            chain,
            output: OutputOptions { codec, crf, ..OutputOptions::default() },
            container: form.container,
            transport: TransportEncoding::Auto,
            split: Default::default(),
            input_name: if name.is_empty() { "upload".into() } else { name },
            input_bytes: form.bytes,
            client: String::new(),
            live: None,
        };
        validate(&mut spec, &self.shared).map_err(web_error)?;
        Ok(spec)
    }
}

/// A refusal in HTTP's terms.
fn web_error(r: Refusal) -> WebError {
    let status = match r.code {
        ErrorCode::Unauthorized => StatusCode::FORBIDDEN,
        ErrorCode::VersionMismatch | ErrorCode::BadRequest | ErrorCode::BadInput => StatusCode::BAD_REQUEST,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::JobFailed => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Cancelled | ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::Busy | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Expired => StatusCode::GONE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let retry_after_s = r.retry_after.map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
    WebError { status, message: r.message, retry_after_s }
}

fn identity(client: &Client) -> Identity {
    Identity { name: client.name.clone(), may_change: client.role != Role::Read }
}

/// An HTTP body as the intake reads uploads: a pause longer than the protocol allows between
/// chunks, or a body cut short, ends it.
struct WebChunks(UploadBody);

impl ChunkSource for WebChunks {
    fn count(&self) -> Arc<AtomicU64> {
        self.0.count()
    }

    async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, Refusal> {
        match tokio::time::timeout(UPLOAD_IDLE_TIMEOUT, self.0.next()).await {
            Ok(Some(Ok(data))) => Ok(Some(data)),
            Ok(Some(Err(e))) => Err(super::refusal::lost(ErrorCode::BadRequest, format!("the upload broke off: {e}"))),
            Ok(None) => Ok(None),
            Err(_) => Err(super::refusal::lost(
                ErrorCode::Timeout,
                format!("no upload data within {} s", UPLOAD_IDLE_TIMEOUT.as_secs()),
            )),
        }
    }
}

impl WebApp for WebSide {
    fn identify(&self, token: &str) -> Option<Identity> {
        let clients = self.registry.clients();
        let presented = (!token.is_empty()).then(|| Token::new(token));
        clients.identify(presented.as_ref()).map(|c| identity(&c))
    }

    fn recheck(&self, name: &str) -> Option<Identity> {
        let clients = self.registry.clients();
        if !clients.requires_token() {
            return clients.identify(None).map(|c| identity(&c));
        }
        clients.by_name(name).map(|c| identity(&c))
    }

    fn tokens_required(&self) -> bool {
        self.registry.clients().requires_token()
    }

    fn open_to_all(&self) -> bool {
        self.open
    }

    fn failed_login(&self, ip: IpAddr) -> Duration {
        self.shared.admission.failed_token(Some(ip))
    }

    fn max_upload(&self) -> u64 {
        self.shared.max_upload
    }

    fn catalogue(&self) -> serde_json::Value {
        let presets: Vec<serde_json::Value> = self
            .presets
            .iter()
            .map(|(name, chain, _)| serde_json::json!({ "name": name, "chain": chain.to_string() }))
            .collect();
        serde_json::json!({
            "filters": FILTERS,
            "max_chain": crate::filters::MAX_CHAIN_LEN,
            "presets": presets,
            "codecs": CODECS,
            "containers": CONTAINERS,
            "latency_bounds": LATENCY_BOUNDS,
        })
    }

    fn check_chain(&self, chain: &str) -> Result<String, String> {
        chain.parse::<Chain>().map(|c| c.to_string()).map_err(|e| e.to_string())
    }

    fn submit(&self, who: Identity, peer: SocketAddr, form: UploadForm, body: UploadBody) -> Answer<JobId> {
        let prepared = self.client(&who).and_then(|client| Ok((client, self.spec(form)?)));
        let (shared, requires_token) = (self.shared.clone(), self.registry.clients().requires_token());
        Box::pin(async move {
            let (client, spec) = prepared?;
            let seat = Seat { address: Some(peer.ip()), client: requires_token.then(|| client.name.clone()) };
            let peer = peer.to_string();
            let caller = Caller { peer: &peer, software: SOFTWARE, who: &client, seat: &seat };
            let shutdown = shared.shutdown.clone();
            let admitted = admit(&shared, &shutdown, &caller, spec).await.map_err(web_error)?;
            // A browser cannot resume an upload: one cut off leaves nothing behind.
            admitted.receive(&shared, &mut WebChunks(body), false).await.map_err(web_error)
        })
    }

    fn control(&self, who: Identity, peer: SocketAddr, job: JobId, control: JobControl) -> Answer<(JobId, JobState)> {
        let client = self.client(&who);
        let shared = self.shared.clone();
        Box::pin(async move {
            let client = client?;
            apply(&shared, (&peer.to_string(), SOFTWARE, &client), &job, control).await.map_err(web_error)
        })
    }

    fn history(&self, before: Option<JobId>, limit: usize) -> Answer<Vec<JobRecord>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            shared.off(move |s| s.store.page(before.as_ref(), limit)).await.map_err(|e| web_error(internal_error(e)))
        })
    }

    fn detail(&self, job: JobId) -> Answer<JobDetail> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let live = shared.board.charts(job.as_str());
            let id = job.clone();
            let (record, kept) = shared
                .off(move |s| Ok((s.store.get(&id)?, s.store.charts(&id)?)))
                .await
                .map_err(|e| web_error(internal_error(e)))?;
            let record =
                record.ok_or_else(|| WebError::new(StatusCode::NOT_FOUND, format!("no job {job} on this server")))?;
            let kept_files = record.removed_ms.is_none();
            let result = kept_files
                && record.state == JobState::Done
                && shared.jobs.result_of(&job, &record.spec.container).is_file();
            let source = kept_files && shared.jobs.input_of(&job, &record.spec.input_name).is_file();
            // Live while the board has it and the job runs; as kept once it ended.
            let charts = if record.state.is_final() { kept.or(live) } else { live.or(kept) };
            Ok(JobDetail { record, charts, result, source })
        })
    }

    fn file(&self, job: JobId, kind: FileKind) -> Answer<ServedFile> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let _pin = shared.jobs.pin(&job);
            let id = job.clone();
            let record = shared.off(move |s| s.store.get(&id)).await.map_err(|e| web_error(internal_error(e)))?;
            let record =
                record.ok_or_else(|| WebError::new(StatusCode::NOT_FOUND, format!("no job {job} on this server")))?;
            let gone = || {
                WebError::new(
                    StatusCode::GONE,
                    format!("job {job}'s files were removed (--keep-results, --max-stored)"),
                )
            };
            if record.removed_ms.is_some() {
                return Err(gone());
            }
            let (path, name, container) = match kind {
                FileKind::Result => {
                    if record.state != JobState::Done {
                        return Err(WebError::new(
                            StatusCode::CONFLICT,
                            format!("job {job} is {}: it has no result", record.state.as_str()),
                        ));
                    }
                    let stem = std::path::Path::new(&record.spec.input_name)
                        .file_stem()
                        .map_or_else(|| "result".to_string(), |s| s.to_string_lossy().into_owned());
                    let container = record.spec.container.clone();
                    let name = format!("{stem}-vpd.{container}");
                    (shared.jobs.result_of(&job, &container), name, container)
                }
                FileKind::Source => {
                    let ext = super::jobs::extension_of(&record.spec.input_name);
                    let container = ext.trim_start_matches('.').to_string();
                    (shared.jobs.input_of(&job, &record.spec.input_name), record.spec.input_name.clone(), container)
                }
            };
            // Opened under the pin: once open, the bytes stay readable even if the files go.
            let file = std::fs::File::open(&path).map_err(|_| gone())?;
            let len = file.metadata().map_err(|e| web_error(refuse(ErrorCode::Internal, e.to_string())))?.len();
            Ok(ServedFile { file, len, name, content_type: content_type(&container) })
        })
    }
}

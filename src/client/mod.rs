//! `vpd client`: uploads a video to a server, shows the job's progress as the server reports
//! it, and downloads the result.
//!
//! Everything that can be checked locally (input readable, output path, container and codec,
//! filter chain) is checked before connecting. The result is written to a hidden file beside
//! the output and renamed once every byte has arrived. Ctrl-C sends a cancel: the server drops
//! the job's remaining frames.
//!
//! Once the upload is whole the job is the server's: a lost connection (a server restarting,
//! a network that drops, a laptop asleep) is followed by reconnecting with backoff and
//! attaching to the job again, for up to [`RECONNECT_FOR`]. `--detach` leaves once the job
//! is queued; `--attach ID` follows a job from wherever it is. A live input goes through
//! [`live::run`] instead.

use std::io::Write as _;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::batch::{BatchReport, BatchRow};
use crate::files::RemoveOnDrop;
use crate::filters::Chain;
use crate::media::{OutputOptions, STDIO, check_input, check_output, check_output_path, is_stream_target, temp_path};
use crate::metrics::JobSummary;
use crate::net::ServerAddr;
use crate::progress::ProgressView;
use crate::protocol::codec::{MAX_CHUNK_BYTES, Packet, PacketReader, PacketWriter, ProtocolError};
use crate::protocol::job::{JobControl, JobId, JobRecord, JobSpec, JobState};
use crate::protocol::message::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage, Token};
use crate::protocol::wire::TransportEncoding;
use crate::tls::ClientTls;

pub mod live;

/// Time to connect and to hear the server's welcome.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After a cancel, time to wait for the server to confirm.
const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// How long a client tries to reach its server again after losing it mid-job.
pub const RECONNECT_FOR: Duration = Duration::from_secs(300);
/// The first pause before reconnecting; it doubles up to [`RECONNECT_MAX_PAUSE`].
const RECONNECT_FIRST_PAUSE: Duration = Duration::from_millis(200);
/// The longest pause between two reconnection attempts.
const RECONNECT_MAX_PAUSE: Duration = Duration::from_secs(5);

/// What the client does: submit a video, or follow a job submitted before.
#[derive(Debug, Clone)]
pub enum ClientJob {
    /// Upload `input` and filter it with `chain`; with `detach`, leave once it is queued.
    Submit {
        /// The video to upload.
        input: PathBuf,
        /// The filters.
        chain: Chain,
        /// Leave once the job is the server's.
        detach: bool,
        /// A live input, read as it comes and relayed (`--live`, or inferred): the latency it
        /// is to stay under.
        live: Option<Duration>,
    },
    /// Follow this job to its result.
    Attach(JobId),
}

/// Everything `vpd client` needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// What to do.
    pub job: ClientJob,
    /// Where the result goes.
    pub output: PathBuf,
    /// The server.
    pub server: ServerAddr,
    /// How the result is encoded (the server encodes it).
    pub output_options: OutputOptions,
    /// How frames travel to workers.
    pub transport: TransportEncoding,
    /// Frames or segments to the workers.
    pub split: crate::protocol::segment::Split,
    /// The server's token, if it wants one.
    pub token: Option<Token>,
    /// TLS to the server, when it speaks it.
    pub tls: Option<ClientTls>,
    /// No progress bar.
    pub quiet: bool,
    /// How long to keep trying while the server is busy or the client over its limits.
    pub wait: Duration,
}

/// How a client run ended, when it did not fail.
#[derive(Debug)]
pub enum Followed {
    /// The result is in place.
    Finished(Box<JobSummary>),
    /// `--detach`: the job, queued on the server.
    Detached(JobId),
}

/// Why a client run ended without a result: cancelled (the server was told to drop the job),
/// or anything else. The same outcome as a job run in this process.
pub use crate::pipeline::JobError as ClientError;

/// Runs one job on the server (or follows one) and returns its summary.
pub async fn run(cfg: &ClientConfig, shutdown: CancellationToken) -> Result<Followed, ClientError> {
    // Before anything is uploaded: a bad output path, an encoder this FFmpeg lacks or one the
    // container cannot hold, found after the server processed the whole video, wastes all of it.
    if cfg.output == Path::new(STDIO) {
        return Err(anyhow!("the client writes its result to a file (-o FILE); `vpd run` writes to a pipe").into());
    }
    if let ClientJob::Submit { live: Some(_), .. } = &cfg.job {
        return Err(anyhow!("a live input goes through the server with `client::live::run`").into());
    }
    let (input, detach) = match &cfg.job {
        ClientJob::Submit { input, detach, .. } => (input.as_path(), *detach),
        ClientJob::Attach(_) => (Path::new(""), false),
    };
    // A detached job's result is fetched later, into a file named then: only its container
    // is checked now.
    let target =
        if detach { PathBuf::new() } else { check_output_path(input, &cfg.output).map_err(anyhow::Error::from)? };
    let named = Path::new("result").with_extension(container_of(cfg));
    check_output(if detach { &named } else { &cfg.output }, &cfg.output_options).map_err(anyhow::Error::from)?;
    let upload_bytes = match &cfg.job {
        ClientJob::Submit { input, .. } => check_input(input).map_err(anyhow::Error::from)?.ok_or_else(|| {
            anyhow!("{}: the client uploads a file of known size; read pipes with `vpd run`", input.display())
        })?,
        ClientJob::Attach(_) => 0,
    };
    let mut patience = Patience::new(cfg.wait);
    let mut followed = loop {
        let mut follower = Follower::new(cfg, target.clone(), shutdown.clone());
        let link = match &cfg.job {
            ClientJob::Submit { input, chain, .. } => submit(cfg, input, chain, upload_bytes).await,
            ClientJob::Attach(job) => {
                follower.job = Some(job.clone());
                follower.owned = true;
                attach(cfg, job).await
            }
        };
        let followed = match link {
            Ok(link) => follower.follow(link).await,
            Err(e) => Err(e),
        };
        match followed {
            Err(ClientError::Failed(e)) if follower.job.is_none() || matches!(cfg.job, ClientJob::Attach(_)) => {
                let note = |line: &str| {
                    if !cfg.quiet {
                        eprintln!("{line}")
                    }
                };
                patience.wait(e, &shutdown, note).await?;
            }
            other => break other?,
        }
    };
    if let Followed::Finished(summary) = &mut followed {
        if let ClientJob::Submit { input, .. } = &cfg.job {
            summary.input = input.display().to_string();
        }
        summary.output = cfg.output.display().to_string();
    }
    Ok(followed)
}

/// One connection following a job: its reader, and how to start the upload or send a cancel.
struct Link {
    reader: PacketReader<ReadHalf<Box<dyn Stream>>>,
    /// Starts the upload (a submit's link, until the job is accepted).
    start: Option<oneshot::Sender<()>>,
    /// Sends a cancel.
    cancel: Option<oneshot::Sender<()>>,
    writer: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

/// Connects and says hello; returns the halves and the largest upload the server takes.
async fn open(
    cfg_server: &ServerAddr,
    tls: Option<&ClientTls>,
    token: Option<Token>,
) -> Result<
    (PacketReader<ReadHalf<Box<dyn Stream>>>, PacketWriter<tokio::io::WriteHalf<Box<dyn Stream>>>, u64),
    ClientError,
> {
    let (r, w) = tokio::io::split(connect(cfg_server, tls).await?);
    let (mut reader, mut writer) = (PacketReader::new(r), PacketWriter::new(w));
    let max_upload = handshake(&mut reader, &mut writer, cfg_server, token).await?;
    Ok((reader, writer, max_upload))
}

/// A new job: submit, and the upload once the server accepts it.
async fn submit(cfg: &ClientConfig, input: &Path, chain: &Chain, upload_bytes: u64) -> Result<Link, ClientError> {
    let (reader, mut writer, max_upload_bytes) = open(&cfg.server, cfg.tls.as_ref(), cfg.token.clone()).await?;
    if upload_bytes > max_upload_bytes {
        return Err(anyhow!(
            "{} is {upload_bytes} bytes; the server takes at most {max_upload_bytes}",
            input.display()
        )
        .into());
    }
    let request = JobSpec {
        chain: chain.clone(),
        output: cfg.output_options.clone(),
        container: container_of(cfg),
        transport: cfg.transport,
        split: cfg.split,
        input_name: input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        input_bytes: upload_bytes,
        // The server names the job's client from the token.
        client: String::new(),
        live: None,
    };
    writer.send(&ClientMessage::Submit(Box::new(request))).await.context("submitting the job")?;
    let (start, cancel) = (oneshot::channel(), oneshot::channel());
    let writer = tokio::spawn(upload_then_cancel(writer, Some((input.to_path_buf(), 0)), start.1, cancel.1));
    Ok(Link { reader, start: Some(start.0), cancel: Some(cancel.0), writer })
}

/// Why [`with_backoff`] stopped trying.
enum Retried {
    /// Ctrl-C.
    Interrupted,
    /// The server's word that no retry changes (see [`Final`]).
    Final(ClientError),
    /// [`RECONNECT_FOR`] is over; the last try's error.
    GaveUp(ClientError),
}

/// Runs `attempt` after a pause that starts at [`RECONNECT_FIRST_PAUSE`] and doubles up to
/// [`RECONNECT_MAX_PAUSE`], until it succeeds, fails for good, [`RECONNECT_FOR`] is over or
/// `shutdown` fires.
async fn with_backoff<T, F, Fut>(shutdown: &CancellationToken, mut attempt: F) -> Result<T, Retried>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let deadline = tokio::time::Instant::now() + RECONNECT_FOR;
    let mut pause = RECONNECT_FIRST_PAUSE;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return Err(Retried::Interrupted),
        }
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(ClientError::Failed(e)) if e.downcast_ref::<Final>().is_some() => {
                return Err(Retried::Final(ClientError::Failed(e)));
            }
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(Retried::GaveUp(e)),
            Err(e) => debug!(error = %format!("{e:#}"), "reconnecting failed; trying again"),
        }
        pause = (pause * 2).min(RECONNECT_MAX_PAUSE);
    }
}

/// A server's refusal to resume an upload that no retry changes (the job is gone, ended, or
/// another client's).
#[derive(Debug)]
struct Final(String);

impl std::fmt::Display for Final {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Final {}

/// An upload cut off: asks the server how much it holds, and sends the rest from there.
/// Returns the link and that offset.
async fn resume_upload(cfg: &ClientConfig, job: &JobId, input: &Path) -> Result<(Link, u64), ClientError> {
    let upload_bytes = std::fs::metadata(input).with_context(|| format!("reading {}", input.display()))?.len();
    let (mut reader, mut writer, _) = open(&cfg.server, cfg.tls.as_ref(), cfg.token.clone()).await?;
    let ask = ClientMessage::ResumeUpload { job: job.clone(), upload_bytes };
    writer.send(&ask).await.context("resuming the upload")?;
    let answer = tokio::time::timeout(CONNECT_TIMEOUT, reader.read::<ServerMessage>())
        .await
        .map_err(|_| anyhow!("{} did not answer", cfg.server))?
        .context("reading the server's answer")?;
    let offset = match answer {
        Some(Packet::Message(ServerMessage::UploadFrom { offset, .. })) => offset,
        Some(Packet::Message(ServerMessage::Error { code, message, retry_after_s })) => {
            return Err(match code {
                ErrorCode::NotFound | ErrorCode::Conflict | ErrorCode::BadRequest | ErrorCode::Unauthorized => {
                    ClientError::Failed(anyhow::Error::new(Final(format!(
                        "server refused to resume the upload ({code}): {message}"
                    ))))
                }
                _ => server_error(code, &message, retry_after_s),
            });
        }
        other => return Err(anyhow!("unexpected answer to a resumed upload: {other:?}").into()),
    };
    let (start, cancel) = (oneshot::channel(), oneshot::channel());
    start.0.send(()).ok();
    let from = Some((input.to_path_buf(), offset));
    let writer = tokio::spawn(upload_then_cancel(writer, from, start.1, cancel.1));
    Ok((Link { reader, start: None, cancel: Some(cancel.0), writer }, offset))
}

/// A job submitted before: attach to it.
async fn attach(cfg: &ClientConfig, job: &JobId) -> Result<Link, ClientError> {
    let (reader, mut writer, _) = open(&cfg.server, cfg.tls.as_ref(), cfg.token.clone()).await?;
    writer.send(&ClientMessage::Attach { job: job.clone() }).await.context("attaching to the job")?;
    let (start, cancel) = (oneshot::channel(), oneshot::channel());
    drop(start.0);
    let writer = tokio::spawn(upload_then_cancel(writer, None, start.1, cancel.1));
    Ok(Link { reader, start: None, cancel: Some(cancel.0), writer })
}

/// Why following a job over one connection stopped.
enum Step {
    /// The job's end: its result, or an error that another connection would not change.
    Ended(Result<Followed, ClientError>),
    /// The connection was lost (or the server is going away): reconnect, if the job is the
    /// server's.
    Lost(anyhow::Error),
}

/// Follows one job across connections.
struct Follower<'a> {
    cfg: &'a ClientConfig,
    target: PathBuf,
    shutdown: CancellationToken,
    /// The job's id, once accepted.
    job: Option<JobId>,
    /// Whether the job is the server's: its upload is whole (or it was attached to).
    owned: bool,
    /// Ctrl-C was pressed and a cancel sent.
    cancelled: bool,
    progress: Option<ProgressView>,
    state: Option<JobState>,
}

impl<'a> Follower<'a> {
    fn new(cfg: &'a ClientConfig, target: PathBuf, shutdown: CancellationToken) -> Self {
        Follower { cfg, target, shutdown, job: None, owned: false, cancelled: false, progress: None, state: None }
    }

    /// Prints `line` on stderr unless quiet.
    fn note(&self, line: &str) {
        if self.cfg.quiet {
            return;
        }
        match &self.progress {
            Some(p) => p.note(line),
            None => eprintln!("{line}"),
        }
    }

    async fn follow(&mut self, mut link: Link) -> Result<Followed, ClientError> {
        let result = loop {
            match self.follow_link(&mut link).await {
                Step::Ended(result) => break result,
                Step::Lost(e) => {
                    let Some(job) = self.job.clone() else { break Err(e.into()) };
                    if self.cancelled {
                        break Err(anyhow!("{e:#}; the cancel of job {job} may not have reached the server").into());
                    }
                    // Before the upload is whole the job is not the server's yet: it waits,
                    // with what arrived, for this client to send the rest.
                    let relinked = match (&self.cfg.job, self.owned) {
                        (_, true) => self.reconnect(&job, e).await,
                        (ClientJob::Submit { input, .. }, false) => self.resume(&job, input, e).await,
                        (ClientJob::Attach(_), false) => break Err(e.into()),
                    };
                    match relinked {
                        Ok(l) => link = l,
                        Err(e) => break Err(e),
                    }
                }
            }
        };
        if let Some(p) = self.progress.take() {
            p.finish();
        }
        result
    }

    /// Connects again, with backoff, until the server answers or [`RECONNECT_FOR`] is over.
    async fn reconnect(&mut self, job: &JobId, lost: anyhow::Error) -> Result<Link, ClientError> {
        self.note(&format!("vpd: lost the server ({lost:#}); reconnecting to follow job {job}"));
        let cfg = self.cfg;
        match with_backoff(&self.shutdown, || attach(cfg, job)).await {
            Ok(link) => {
                debug!(%job, "reconnected");
                Ok(link)
            }
            Err(Retried::Interrupted) => Err(anyhow!(
                "interrupted while the server was unreachable; job {job} goes on there (`vpd jobs cancel {job}` stops it)"
            )
            .into()),
            Err(Retried::Final(e)) => Err(e),
            Err(Retried::GaveUp(e)) => Err(anyhow!(
                "the server has been unreachable for {} s ({e:#}); job {job} may go on there: \
                 `vpd client --attach {job}` follows it",
                RECONNECT_FOR.as_secs()
            )
            .into()),
        }
    }

    /// Connects again, with backoff, and sends the rest of the upload from what the server
    /// holds, until it takes it or [`RECONNECT_FOR`] is over.
    async fn resume(&mut self, job: &JobId, input: &Path, lost: anyhow::Error) -> Result<Link, ClientError> {
        self.note(&format!(
            "vpd: lost the server during the upload ({lost:#}); reconnecting to resume job {job}'s upload"
        ));
        let cfg = self.cfg;
        match with_backoff(&self.shutdown, || resume_upload(cfg, job, input)).await {
            Ok((link, offset)) => {
                self.note(&format!("vpd: the server holds {offset} bytes of the upload; sending the rest"));
                Ok(link)
            }
            Err(Retried::Interrupted) => {
                Err(anyhow!("interrupted while the server was unreachable; job {job}'s upload was not finished").into())
            }
            Err(Retried::Final(e)) => Err(e),
            Err(Retried::GaveUp(e)) => Err(anyhow!(
                "the server has been unreachable for {} s ({e:#}); job {job}'s upload was not finished",
                RECONNECT_FOR.as_secs()
            )
            .into()),
        }
    }

    /// An attached job's result is in the container it was submitted for (`result.mkv`): say
    /// so when the output's name says another.
    fn warn_if_another_container(&self, result: &str) {
        let ext = |p: &Path| p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
        let (theirs, ours) = (ext(Path::new(result)), ext(&self.cfg.output));
        if let (ClientJob::Attach(_), Some(theirs), Some(ours)) = (&self.cfg.job, theirs, ours)
            && theirs != ours
        {
            self.note(&format!(
                "vpd: warning: the job's result is a .{theirs} file (as submitted); it is written to {} as it is",
                self.cfg.output.display()
            ));
        }
    }

    /// Follows the job over `link` until it ends or the link is lost.
    async fn follow_link(&mut self, link: &mut Link) -> Step {
        let mut give_up = None;
        loop {
            let message = tokio::select! {
                m = link.reader.read::<ServerMessage>() => m,
                _ = self.shutdown.cancelled(), if !self.cancelled => {
                    debug!("interrupted: asking the server to cancel the job");
                    self.cancelled = true;
                    if let Some(c) = link.cancel.take() {
                        let _ = c.send(());
                    }
                    give_up = Some(tokio::time::Instant::now() + CANCEL_GRACE);
                    continue;
                }
                _ = tokio::time::sleep_until(give_up.unwrap_or_else(tokio::time::Instant::now)), if give_up.is_some() => {
                    return Step::Ended(Err(ClientError::Cancelled));
                }
            };
            match message {
                Ok(Some(Packet::Message(ServerMessage::Accepted { job }))) => {
                    debug!(%job, "accepted");
                    self.job = Some(job);
                    if let Some(s) = link.start.take() {
                        let _ = s.send(());
                    }
                }
                Ok(Some(Packet::Message(ServerMessage::State { state }))) => {
                    self.owned = true;
                    let job = self.job.clone().unwrap_or_default();
                    if let ClientJob::Submit { detach: true, .. } = &self.cfg.job {
                        return Step::Ended(Ok(Followed::Detached(job)));
                    }
                    if state == JobState::Paused && self.state != Some(state) {
                        self.note(&format!("vpd: job {job} is paused; `vpd jobs resume {job}` lets it go on"));
                    }
                    self.state = Some(state);
                }
                Ok(Some(Packet::Message(ServerMessage::Started(video)))) => {
                    if self.progress.is_none() {
                        self.progress = Some(ProgressView::new(video.frame_count, !self.cfg.quiet));
                    }
                }
                Ok(Some(Packet::Message(ServerMessage::Progress(snapshot)))) => {
                    if let Some(p) = &self.progress {
                        p.update(&snapshot);
                    }
                }
                Ok(Some(Packet::Message(ServerMessage::Done { summary, result_bytes }))) => {
                    if let Some(p) = self.progress.take() {
                        p.finish();
                    }
                    self.warn_if_another_container(&summary.output);
                    return match download(&mut link.reader, &self.cfg.output, &self.target, result_bytes).await {
                        Ok(()) => Step::Ended(Ok(Followed::Finished(summary))),
                        Err(Download::Lost(e)) => Step::Lost(e),
                        Err(Download::Local(e)) => Step::Ended(Err(e.into())),
                    };
                }
                Ok(Some(Packet::Message(ServerMessage::Error { code: ErrorCode::Cancelled, .. })))
                    if self.cancelled =>
                {
                    return Step::Ended(Err(ClientError::Cancelled));
                }
                Ok(Some(Packet::Message(ServerMessage::Error { code: ErrorCode::Unavailable, message, .. }))) => {
                    return Step::Lost(anyhow!("{message}"));
                }
                Ok(Some(Packet::Message(ServerMessage::Error { code, message, retry_after_s }))) => {
                    return Step::Ended(Err(server_error(code, &message, retry_after_s)));
                }
                Ok(Some(other)) => {
                    return Step::Ended(Err(anyhow!("unexpected message from the server: {other:?}").into()));
                }
                Ok(None) if self.cancelled => return Step::Ended(Err(ClientError::Cancelled)),
                Ok(None) => return Step::Lost(anyhow!("the server closed the connection")),
                Err(e) => return Step::Lost(anyhow!(e).context("reading from the server")),
            }
        }
    }
}

/// Connects to `server`, within [`CONNECT_TIMEOUT`], and runs the TLS handshake when `tls`.
async fn connect(server: &ServerAddr, tls: Option<&ClientTls>) -> anyhow::Result<Box<dyn Stream>> {
    let connect = async {
        match (server, tls) {
            (ServerAddr::Tcp(addr), tls) => {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                match tls {
                    Some(tls) => Ok(Box::new(tls.connect(addr, stream).await?) as Box<dyn Stream>),
                    None => Ok(Box::new(stream) as Box<dyn Stream>),
                }
            }
            (ServerAddr::Unix(_), Some(_)) => bail!("a Unix socket is not spoken to over TLS (drop --tls…)"),
            (ServerAddr::Unix(path), None) => {
                Ok(Box::new(tokio::net::UnixStream::connect(path).await?) as Box<dyn Stream>)
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| anyhow!("cannot connect to {server}: no answer in {} s", CONNECT_TIMEOUT.as_secs()))?
        .with_context(|| format!("cannot connect to {server}"))
}

/// What `vpd jobs` asks a server.
#[derive(Debug, Clone, PartialEq)]
pub enum JobsQuery {
    /// The newest jobs, at most this many.
    List(u32),
    /// One job's whole record.
    Show(JobId),
    /// A job control; `fetch` writes the result into the file.
    Control(JobId, JobControl, Option<PathBuf>),
}

/// Everything `vpd jobs` needs.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// The server.
    pub server: ServerAddr,
    /// Its token.
    pub token: Option<Token>,
    /// TLS to it, when it speaks it.
    pub tls: Option<ClientTls>,
    /// A job store on this machine to read instead of asking the server (`--state-dir`).
    pub store: Option<PathBuf>,
    /// What to ask.
    pub query: JobsQuery,
    /// JSON on stdout instead of a table.
    pub json: bool,
    /// How long to keep trying while the server is busy or the client over its limits.
    pub wait: Duration,
}

/// `vpd jobs`: asks the server for its job history (or one job), or controls a job.
pub async fn jobs(cfg: &JobsConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Some(dir) = &cfg.store {
        let (cfg, dir) = (cfg.clone(), dir.clone());
        return tokio::task::spawn_blocking(move || read_store(&cfg, &dir)).await?;
    }
    let target = match &cfg.query {
        JobsQuery::Control(_, JobControl::Fetch, Some(output)) => Some(check_output_path(Path::new(""), output)?),
        _ => None,
    };
    let mut patience = Patience::new(cfg.wait);
    loop {
        match ask(cfg, target.as_deref()).await {
            Err(e) => patience.wait(e, &shutdown, |line| eprintln!("{line}")).await?,
            Ok(()) => return Ok(()),
        }
    }
}

/// `vpd jobs --state-dir DIR`: the list, or one job, from the job store in `dir`, read-only.
fn read_store(cfg: &JobsConfig, dir: &Path) -> anyhow::Result<()> {
    let store = crate::store::Store::open_read_only(dir)?;
    let mut out = std::io::stdout().lock();
    match &cfg.query {
        JobsQuery::List(limit) => print_jobs(&mut out, cfg.json, &store.list(*limit as usize)?),
        JobsQuery::Show(job) => match store.get(job)? {
            Some(record) => print_job(&mut out, cfg.json, &record),
            None => bail!("no job {job} in {}", store.path().display()),
        },
        JobsQuery::Control(_, control, _) => {
            bail!("--state-dir reads a job store; `{}` needs the server that runs the job", control.as_str())
        }
    }
}

/// The jobs, newest first: a table, or one line of JSON.
fn print_jobs(out: &mut impl std::io::Write, json: bool, jobs: &[JobRecord]) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(jobs)?)?;
    } else {
        crate::progress::print_jobs(out, jobs)?;
    }
    Ok(())
}

/// One job's record: its lines, or JSON.
fn print_job(out: &mut impl std::io::Write, json: bool, job: &JobRecord) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(job)?)?;
    } else {
        crate::progress::print_job(out, job)?;
    }
    Ok(())
}

/// One try of `vpd jobs`'s question.
async fn ask(cfg: &JobsConfig, target: Option<&Path>) -> anyhow::Result<()> {
    let (mut reader, mut writer, _) =
        open(&cfg.server, cfg.tls.as_ref(), cfg.token.clone()).await.map_err(anyhow::Error::from)?;
    let ask = match &cfg.query {
        JobsQuery::List(limit) => ClientMessage::List { limit: *limit },
        JobsQuery::Show(job) => ClientMessage::Show { job: job.clone() },
        JobsQuery::Control(job, control, _) => ClientMessage::Control { job: job.clone(), control: *control },
    };
    writer.send(&ask).await.context("asking the server")?;
    let answer = tokio::time::timeout(CONNECT_TIMEOUT, reader.read::<ServerMessage>())
        .await
        .map_err(|_| anyhow!("{} did not answer", cfg.server))?
        .context("reading the server's answer")?;
    let mut out = std::io::stdout().lock();
    match answer {
        Some(Packet::Message(ServerMessage::Jobs { jobs })) => print_jobs(&mut out, cfg.json, &jobs)?,
        Some(Packet::Message(ServerMessage::Job(job))) => print_job(&mut out, cfg.json, &job)?,
        Some(Packet::Message(ServerMessage::Changed { job, state })) => match &cfg.query {
            JobsQuery::Control(_, JobControl::Cancel, _) => writeln!(out, "cancelling {job}")?,
            JobsQuery::Control(_, JobControl::Rerun, _) => writeln!(out, "{job}")?,
            _ => writeln!(out, "{job} {state}")?,
        },
        Some(Packet::Message(ServerMessage::Done { summary, result_bytes })) => {
            let (JobsQuery::Control(_, JobControl::Fetch, Some(output)), Some(target)) = (&cfg.query, target) else {
                bail!("unexpected answer from the server: a result");
            };
            download(&mut reader, output, target, result_bytes).await.map_err(|e| match e {
                Download::Lost(e) | Download::Local(e) => e,
            })?;
            if cfg.json {
                writeln!(out, "{}", serde_json::to_string(&summary)?)?;
            } else {
                writeln!(out, "{}: {result_bytes} bytes, {} frames", output.display(), summary.frames)?;
            }
        }
        Some(Packet::Message(ServerMessage::Error { code: ErrorCode::NotFound, message, .. })) => bail!("{message}"),
        Some(Packet::Message(ServerMessage::Error {
            code: code @ (ErrorCode::Busy | ErrorCode::RateLimited),
            message,
            retry_after_s,
        })) => {
            return Err(TryLater { code, message, retry_after: retry_after_s.map(Duration::from_secs) }.into());
        }
        Some(Packet::Message(ServerMessage::Error { code, message, retry_after_s })) => {
            bail!("server ({code}): {message}{}", retry_note(retry_after_s))
        }
        other => bail!("unexpected answer from the server: {other:?}"),
    }
    Ok(())
}

/// A byte stream to the server.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A server's answer that says to come back later: it is busy, or the client is over one of
/// its limits. The client waits and tries again, within `--wait`.
#[derive(Debug)]
pub struct TryLater {
    /// Busy or rate-limited.
    pub code: ErrorCode,
    /// The server's words.
    pub message: String,
    /// When the server said to come back.
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for TryLater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "server refused or failed the job ({}): {}", self.code, self.message)?;
        if let Some(after) = self.retry_after {
            write!(f, "; retry in {} s", after.as_secs())?;
        }
        Ok(())
    }
}

impl std::error::Error for TryLater {}

/// The first pause after a busy answer; it doubles up to [`PATIENCE_MAX_PAUSE`], or is what
/// the server asked for when that is longer.
const PATIENCE_FIRST_PAUSE: Duration = Duration::from_millis(500);
/// The longest pause between two tries.
const PATIENCE_MAX_PAUSE: Duration = Duration::from_secs(30);

/// Waiting out a busy server, within `--wait`.
struct Patience {
    limit: Duration,
    started: tokio::time::Instant,
    pause: Duration,
}

impl Patience {
    fn new(limit: Duration) -> Self {
        Patience { limit, started: tokio::time::Instant::now(), pause: PATIENCE_FIRST_PAUSE }
    }

    /// Waits before the next try when `e` is a [`TryLater`] and `--wait` leaves time for one,
    /// saying so through `note`; otherwise gives `e` back.
    async fn wait(
        &mut self,
        e: anyhow::Error,
        shutdown: &CancellationToken,
        note: impl Fn(&str),
    ) -> anyhow::Result<()> {
        let Some(later) = e.downcast_ref::<TryLater>() else { return Err(e) };
        // A little jitter, so that clients turned away together do not come back together.
        let jitter = Duration::from_millis(u64::from(std::process::id() % 7) * 50);
        let pause = later.retry_after.unwrap_or_default().max(self.pause) + jitter;
        let waited = self.started.elapsed();
        if waited + pause > self.limit {
            let gave_up = if self.limit.is_zero() {
                " (--wait 0)".to_string()
            } else {
                format!(" (gave up after waiting {} s; --wait sets how long)", waited.as_secs())
            };
            return Err(anyhow!("{}{gave_up}", later));
        }
        note(&format!(
            "vpd: the server is busy ({}); trying again in {:.1} s (waited {} s of --wait {})",
            later.message,
            pause.as_secs_f64(),
            waited.as_secs(),
            self.limit.as_secs()
        ));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return Err(anyhow!("interrupted while waiting for a busy server")),
        }
        self.pause = (self.pause * 2).min(PATIENCE_MAX_PAUSE);
        Ok(())
    }
}

/// `; retry in N s`, when the server said when.
fn retry_note(retry_after_s: Option<u64>) -> String {
    retry_after_s.map_or_else(String::new, |s| format!("; retry in {s} s"))
}

fn server_error(code: ErrorCode, message: &str, retry_after_s: Option<u64>) -> ClientError {
    match code {
        ErrorCode::Cancelled => ClientError::Failed(anyhow!("server: {message}")),
        ErrorCode::Busy | ErrorCode::RateLimited => ClientError::Failed(anyhow::Error::new(TryLater {
            code,
            message: message.to_string(),
            retry_after: retry_after_s.map(Duration::from_secs),
        })),
        _ => ClientError::Failed(anyhow!(
            "server refused or failed the job ({code}): {message}{}",
            retry_note(retry_after_s)
        )),
    }
}

/// Hello ⇄ welcome; returns the largest upload the server takes.
async fn handshake<R, W>(
    reader: &mut PacketReader<R>,
    writer: &mut PacketWriter<W>,
    server: &ServerAddr,
    token: Option<Token>,
) -> Result<u64, ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hello = ClientMessage::Hello {
        protocol: PROTOCOL_VERSION,
        client: format!("vpd/{}", env!("CARGO_PKG_VERSION")),
        token,
    };
    writer.send(&hello).await.context("sending hello")?;
    match tokio::time::timeout(CONNECT_TIMEOUT, reader.read::<ServerMessage>()).await {
        Err(_) => Err(anyhow!("{server} did not answer the handshake").into()),
        Ok(Ok(Some(Packet::Message(ServerMessage::Welcome { max_upload_bytes, .. })))) => Ok(max_upload_bytes),
        Ok(Ok(Some(Packet::Message(ServerMessage::Error { code, message, retry_after_s })))) => {
            Err(server_error(code, &message, retry_after_s))
        }
        Ok(Ok(other)) => Err(anyhow!("unexpected answer to hello: {other:?}").into()),
        Ok(Err(ProtocolError::TooLarge { len, .. })) if tls_record(len + 1) => {
            Err(anyhow!("{server} answered in TLS: connect with --tls (or --tls-ca FILE, or --tls-fingerprint SHA256)")
                .into())
        }
        Ok(Err(e)) => Err(anyhow!(e).context("reading the server's welcome").into()),
    }
}

/// Whether a frame's length prefix is really the start of a TLS record (content type 20–23,
/// version 3.x): what a plain client reads from a server that speaks TLS.
fn tls_record(prefix: u64) -> bool {
    (0x14..=0x17).contains(&(prefix >> 24)) && (prefix >> 16) & 0xff == 0x03
}

/// The writer half: uploads `input` once the job is accepted (`start`), then waits to send a
/// cancel. A cancel during the upload waits for the chunk being sent, so the server reads the
/// `Cancel` as one (and drops the upload) rather than a cut-off upload it keeps for a resume.
async fn upload_then_cancel<W: AsyncWrite + Unpin>(
    mut writer: PacketWriter<W>,
    input: Option<(PathBuf, u64)>,
    start: oneshot::Receiver<()>,
    mut cancel: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    if let Some((input, offset)) = input {
        tokio::select! {
            started = start => if started.is_err() { return Ok(()) },
            _ = &mut cancel => {
                writer.send(&ClientMessage::Cancel).await.ok();
                return Ok(());
            }
        }
        if upload(&input, offset, &mut writer, &mut cancel).await? == Uploaded::Stopped {
            writer.send(&ClientMessage::Cancel).await.ok();
            return Ok(());
        }
    }
    // Uploaded: stay ready to cancel until the job ends.
    if cancel.await.is_ok() {
        writer.send(&ClientMessage::Cancel).await.ok();
    }
    Ok(())
}

/// What stopped a download.
enum Download {
    /// The connection: another may fetch it again.
    Lost(anyhow::Error),
    /// This machine: the output cannot be written.
    Local(anyhow::Error),
}

/// How an upload ended.
#[derive(Debug, PartialEq, Eq)]
enum Uploaded {
    /// All of it was sent.
    Whole,
    /// `cancel` fired (or its sender went away); the last chunk begun went out whole.
    Stopped,
}

/// Sends `path` from `offset` in chunks. `cancel` is heard between chunks only: a packet is
/// never left part-way, so whatever follows it reads as a packet of its own.
async fn upload<W: AsyncWrite + Unpin>(
    path: &std::path::Path,
    offset: u64,
    writer: &mut PacketWriter<W>,
    cancel: &mut oneshot::Receiver<()>,
) -> anyhow::Result<Uploaded> {
    use tokio::io::AsyncSeekExt as _;
    let mut file = tokio::fs::File::open(path).await.with_context(|| format!("reading {}", path.display()))?;
    file.seek(std::io::SeekFrom::Start(offset)).await.with_context(|| format!("reading {}", path.display()))?;
    let mut buf = vec![0u8; MAX_CHUNK_BYTES];
    loop {
        let n = tokio::select! {
            biased;
            _ = &mut *cancel => return Ok(Uploaded::Stopped),
            n = file.read(&mut buf) => n.with_context(|| format!("reading {}", path.display()))?,
        };
        if n == 0 {
            return Ok(Uploaded::Whole);
        }
        writer.send_chunk(&buf[..n]).await.context("uploading")?;
    }
}

/// Receives exactly `size` bytes into a hidden file beside `target` (the output, or the
/// file it links to), then renames it there.
async fn download<R: AsyncRead + Unpin>(
    reader: &mut PacketReader<R>,
    output: &Path,
    target: &Path,
    size: u64,
) -> Result<(), Download> {
    let local = |e: anyhow::Error| Download::Local(e);
    // A device or a pipe is written in place; a file goes beside the output until it is whole.
    let temp = (!is_stream_target(target)).then(|| RemoveOnDrop::new(temp_path(target)));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(temp.is_some())
        .open(temp.as_ref().map_or(target, |t| t.path()))
        .await
        .with_context(|| format!("cannot write {}", output.display()))
        .map_err(local)?;
    let mut received = 0u64;
    while received < size {
        match reader.read::<ServerMessage>().await {
            Ok(Some(Packet::Chunk(data))) => {
                received += data.len() as u64;
                if received > size {
                    return Err(local(anyhow!("the server sent more than the announced {size} bytes")));
                }
                file.write_all(&data).await.with_context(|| format!("writing {}", output.display())).map_err(local)?;
            }
            Ok(Some(Packet::Message(m))) => {
                return Err(local(anyhow!("unexpected message during the download: {m:?}")));
            }
            Ok(None) => {
                return Err(Download::Lost(anyhow!(
                    "the connection closed after {received} of {size} bytes of the result"
                )));
            }
            Err(e) => return Err(Download::Lost(anyhow!(e).context("downloading the result"))),
        }
    }
    file.flush().await.with_context(|| format!("writing {}", output.display())).map_err(local)?;
    file.sync_all().await.ok();
    drop(file);
    let Some(temp) = temp else { return Ok(()) };
    tokio::fs::rename(temp.path(), target)
        .await
        .with_context(|| format!("moving the result to {}", output.display()))
        .map_err(local)?;
    temp.keep();
    Ok(())
}

/// The container's name for the server: the output's extension, or `--format`'s (an alphanumeric
/// one: the server names its file with it).
fn container_of(cfg: &ClientConfig) -> String {
    let ext = cfg.output.extension().and_then(|e| e.to_str()).unwrap_or_default();
    match &cfg.output_options.format {
        Some(format) if ext.is_empty() => format.chars().filter(char::is_ascii_alphanumeric).collect(),
        // Detached without -o: the result is fetched later, as MP4.
        None if cfg.output.as_os_str().is_empty() => "mp4".into(),
        _ => ext.to_string(),
    }
}

/// Runs a batch of jobs on the server, `at_once` at a time (the server queues what exceeds its
/// slots). An output already there is complete and skipped; a failed job fails its row and the
/// others go on; a stop cancels the jobs running (their servers are told) and starts no more.
/// `on_row` hears each row as it ends.
pub async fn batch(
    jobs: &[ClientConfig],
    at_once: NonZeroUsize,
    shutdown: CancellationToken,
    on_row: impl Fn(&BatchRow),
) -> BatchReport {
    let started = std::time::Instant::now();
    let mut rows: Vec<Option<BatchRow>> = vec![None; jobs.len()];
    let mut running = tokio::task::JoinSet::new();
    let mut next = 0;
    loop {
        while running.len() < at_once.get() && next < jobs.len() && !shutdown.is_cancelled() {
            let (i, cfg) = (next, jobs[next].clone());
            next += 1;
            if BatchRow::is_complete(&cfg.output) {
                let row = BatchRow::skipped(batch_input(&cfg), &cfg.output);
                on_row(&row);
                rows[i] = Some(row);
                continue;
            }
            let shutdown = shutdown.clone();
            running.spawn(async move {
                let input = batch_input(&cfg);
                let row = match run(&cfg, shutdown).await {
                    Ok(Followed::Finished(s)) => BatchRow::done(input, &cfg.output, &s),
                    Ok(Followed::Detached(job)) => {
                        BatchRow::new(input, &cfg.output, "failed", Some(format!("detached as {job}")))
                    }
                    Err(ClientError::Cancelled) => BatchRow::new(input, &cfg.output, "cancelled", None),
                    Err(ClientError::Failed(e)) => BatchRow::new(input, &cfg.output, "failed", Some(format!("{e:#}"))),
                };
                (i, row)
            });
        }
        let Some(ended) = running.join_next().await else { break };
        if let Ok((i, row)) = ended {
            on_row(&row);
            rows[i] = Some(row);
        }
    }
    let rows = rows
        .into_iter()
        .zip(jobs)
        .map(|(row, cfg)| row.unwrap_or_else(|| BatchRow::new(batch_input(cfg), &cfg.output, "not started", None)))
        .collect();
    BatchReport::new(rows, started.elapsed().as_secs_f64())
}

/// How a batch's report names a job's input: its file, or the job followed.
fn batch_input(cfg: &ClientConfig) -> String {
    match &cfg.job {
        ClientJob::Submit { input, .. } => input.display().to_string(),
        ClientJob::Attach(job) => job.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancel_during_an_upload_follows_the_chunk_in_flight_whole() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.bin");
        std::fs::write(&input, vec![7u8; 3 * MAX_CHUNK_BYTES]).unwrap();
        // A pipe far smaller than a chunk: the first chunk is part-way out when the cancel comes.
        let (near, far) = tokio::io::duplex(4096);
        let (start, started) = oneshot::channel();
        let (cancel, cancelled) = oneshot::channel();
        let sending = tokio::spawn(upload_then_cancel(PacketWriter::new(near), Some((input, 0)), started, cancelled));
        start.send(()).unwrap();
        let mut far = far;
        let mut first = [0u8; 5];
        far.read_exact(&mut first).await.unwrap();
        cancel.send(()).unwrap();
        // The rest of that chunk, then the cancel as a message of its own, then the end.
        let mut rest = vec![0u8; MAX_CHUNK_BYTES];
        far.read_exact(&mut rest).await.unwrap();
        assert_eq!(u32::from_be_bytes([first[0], first[1], first[2], first[3]]) as usize, MAX_CHUNK_BYTES + 1);
        assert!(rest.iter().all(|&b| b == 7));
        let mut far = PacketReader::new(far);
        sending.await.unwrap().unwrap();
        assert_eq!(far.read::<ClientMessage>().await.unwrap(), Some(Packet::Message(ClientMessage::Cancel)));
        assert_eq!(far.read::<ClientMessage>().await.unwrap(), None, "nothing after the cancel");
    }
}

//! `vpd client`: uploads a video to a server, shows the job's progress as the server reports
//! it, and downloads the result.
//!
//! Everything that can be checked locally (input readable, output path, container and codec,
//! filter chain) is checked before connecting. The result is written to a hidden file beside
//! the output and renamed once every byte has arrived. Ctrl-C sends a cancel: the server drops
//! the job's remaining frames.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::files::RemoveOnDrop;
use crate::filters::Chain;
use crate::media::{OutputOptions, STDIO, check_input, check_output, check_output_path, temp_path};
use crate::metrics::JobSummary;
use crate::net::ServerAddr;
use crate::progress::ProgressView;
use crate::protocol::codec::{MAX_CHUNK_BYTES, Packet, PacketReader, PacketWriter};
use crate::protocol::message::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage, SubmitRequest, Token};
use crate::protocol::wire::TransportEncoding;

/// Time to connect and to hear the server's welcome.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After a cancel, time to wait for the server to confirm.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Everything `vpd client` needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The video to upload.
    pub input: PathBuf,
    /// Where the result goes.
    pub output: PathBuf,
    /// The server.
    pub server: ServerAddr,
    /// The filters.
    pub chain: Chain,
    /// How the result is encoded (the server encodes it).
    pub output_options: OutputOptions,
    /// How frames travel to workers.
    pub transport: TransportEncoding,
    /// The server's token, if it wants one.
    pub token: Option<Token>,
    /// No progress bar.
    pub quiet: bool,
}

/// Why a client run ended without a result: cancelled (the server was told to drop the job),
/// or anything else. The same outcome as a job run in this process.
pub use crate::pipeline::JobError as ClientError;

/// Runs one job on the server and returns its summary.
pub async fn run(cfg: &ClientConfig, shutdown: CancellationToken) -> Result<JobSummary, ClientError> {
    let upload_bytes = check_input(&cfg.input).map_err(anyhow::Error::from)?.ok_or_else(|| {
        anyhow!("{}: the client uploads a file of known size; read pipes with `vpd run`", cfg.input.display())
    })?;
    // Before anything is uploaded: a bad output path, an encoder this FFmpeg lacks or one the
    // container cannot hold, found after the server processed the whole video, wastes all of it.
    if cfg.output == std::path::Path::new(STDIO) {
        return Err(anyhow!("the client writes its result to a file (-o FILE); `vpd run` writes to a pipe").into());
    }
    let target = check_output_path(&cfg.input, &cfg.output).map_err(anyhow::Error::from)?;
    check_output(&cfg.output, &cfg.output_options).map_err(anyhow::Error::from)?;
    let stream = connect(&cfg.server).await?;
    let mut summary = talk(stream, cfg, &target, upload_bytes, shutdown).await?;
    summary.input = cfg.input.display().to_string();
    summary.output = cfg.output.display().to_string();
    Ok(summary)
}

/// Connects to `server`, within [`CONNECT_TIMEOUT`].
async fn connect(server: &ServerAddr) -> anyhow::Result<Box<dyn Stream>> {
    let connect = async {
        match server {
            ServerAddr::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(Box::new(stream) as Box<dyn Stream>)
            }
            ServerAddr::Unix(path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?) as Box<dyn Stream>),
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
    Show(String),
    /// Cancel a job.
    Cancel(String),
}

/// Everything `vpd jobs` needs.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// The server.
    pub server: ServerAddr,
    /// Its token.
    pub token: Option<Token>,
    /// What to ask.
    pub query: JobsQuery,
    /// JSON on stdout instead of a table.
    pub json: bool,
}

/// `vpd jobs`: asks the server for its job history (or one job) and prints it.
pub async fn jobs(cfg: &JobsConfig) -> anyhow::Result<()> {
    let (r, w) = tokio::io::split(connect(&cfg.server).await?);
    let (mut reader, mut writer) = (PacketReader::new(r), PacketWriter::new(w));
    handshake(&mut reader, &mut writer, &cfg.server, cfg.token.clone()).await.map_err(anyhow::Error::from)?;
    let ask = match &cfg.query {
        JobsQuery::List(limit) => ClientMessage::List { limit: *limit },
        JobsQuery::Show(job) => ClientMessage::Show { job: job.clone() },
        JobsQuery::Cancel(job) => ClientMessage::CancelJob { job: job.clone() },
    };
    writer.send(&ask).await.context("asking the server")?;
    let answer = tokio::time::timeout(CONNECT_TIMEOUT, reader.read::<ServerMessage>())
        .await
        .map_err(|_| anyhow!("{} did not answer", cfg.server))?
        .context("reading the server's answer")?;
    let mut out = std::io::stdout().lock();
    match answer {
        Some(Packet::Message(ServerMessage::Jobs { jobs })) if cfg.json => {
            writeln!(out, "{}", serde_json::to_string(&jobs)?)?;
        }
        Some(Packet::Message(ServerMessage::Jobs { jobs })) => crate::progress::print_jobs(&mut out, &jobs)?,
        Some(Packet::Message(ServerMessage::Job(job))) if cfg.json => {
            writeln!(out, "{}", serde_json::to_string_pretty(&job)?)?;
        }
        Some(Packet::Message(ServerMessage::Job(job))) => crate::progress::print_job(&mut out, &job)?,
        Some(Packet::Message(ServerMessage::Cancelling { job })) => writeln!(out, "cancelling {job}")?,
        Some(Packet::Message(ServerMessage::Error { code: ErrorCode::NotFound, message })) => bail!("{message}"),
        Some(Packet::Message(ServerMessage::Error { code, message })) => bail!("server ({code}): {message}"),
        other => bail!("unexpected answer from the server: {other:?}"),
    }
    Ok(())
}

/// A byte stream to the server.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

fn server_error(code: ErrorCode, message: &str) -> ClientError {
    match code {
        ErrorCode::Cancelled => ClientError::Failed(anyhow!("server: {message}")),
        _ => ClientError::Failed(anyhow!("server refused or failed the job ({code}): {message}")),
    }
}

async fn talk(
    stream: Box<dyn Stream>,
    cfg: &ClientConfig,
    target: &std::path::Path,
    upload_bytes: u64,
    shutdown: CancellationToken,
) -> Result<JobSummary, ClientError> {
    let (r, w) = tokio::io::split(stream);
    let mut reader = PacketReader::new(r);
    let mut writer = PacketWriter::new(w);
    let max_upload_bytes = handshake(&mut reader, &mut writer, &cfg.server, cfg.token.clone()).await?;
    if upload_bytes > max_upload_bytes {
        return Err(anyhow!(
            "{} is {upload_bytes} bytes; the server takes at most {max_upload_bytes}",
            cfg.input.display()
        )
        .into());
    }
    let request = SubmitRequest {
        chain: cfg.chain.clone(),
        output: cfg.output_options.clone(),
        container: container_of(cfg),
        transport: cfg.transport,
        input_name: cfg.input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        upload_bytes,
    };
    writer.send(&ClientMessage::Submit(Box::new(request))).await.context("submitting the job")?;
    let (start, cancel) = (oneshot::channel(), oneshot::channel());
    let uploader = tokio::spawn(upload_then_cancel(writer, cfg.input.clone(), start.1, cancel.1));
    let result = follow(&mut reader, cfg, target, start.0, cancel.0, shutdown).await;
    uploader.abort();
    result
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
        Ok(Ok(Some(Packet::Message(ServerMessage::Error { code, message })))) => Err(server_error(code, &message)),
        Ok(Ok(other)) => Err(anyhow!("unexpected answer to hello: {other:?}").into()),
        Ok(Err(e)) => Err(anyhow!(e).context("reading the server's welcome").into()),
    }
}

/// The writer half: uploads once the job is accepted (`start`), then waits to send a cancel.
async fn upload_then_cancel<W: AsyncWrite + Unpin>(
    mut writer: PacketWriter<W>,
    input: PathBuf,
    start: oneshot::Receiver<()>,
    mut cancel: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    tokio::select! {
        started = start => if started.is_err() { return Ok(()) },
        _ = &mut cancel => {
            writer.send(&ClientMessage::Cancel).await.ok();
            return Ok(());
        }
    }
    tokio::select! {
        sent = upload(&input, &mut writer) => sent?,
        _ = &mut cancel => {
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

/// The reader half: follows the job's messages to its end, draws the progress bar, and
/// downloads the result; Ctrl-C (`shutdown`) asks the server to cancel.
async fn follow<R: AsyncRead + Unpin>(
    reader: &mut PacketReader<R>,
    cfg: &ClientConfig,
    target: &std::path::Path,
    start_tx: oneshot::Sender<()>,
    cancel_tx: oneshot::Sender<()>,
    shutdown: CancellationToken,
) -> Result<JobSummary, ClientError> {
    let mut start = Some(start_tx);
    let mut cancel = Some(cancel_tx);
    let mut progress: Option<ProgressView> = None;
    let mut give_up = None;
    let result = loop {
        let message = tokio::select! {
            m = reader.read::<ServerMessage>() => m,
            _ = shutdown.cancelled(), if cancel.is_some() => {
                debug!("interrupted: asking the server to cancel the job");
                if let Some(c) = cancel.take() {
                    let _ = c.send(());
                }
                give_up = Some(tokio::time::Instant::now() + CANCEL_GRACE);
                continue;
            }
            _ = tokio::time::sleep_until(give_up.unwrap_or_else(tokio::time::Instant::now)), if give_up.is_some() => {
                break Err(ClientError::Cancelled);
            }
        };
        let cancelled = cancel.is_none();
        match message {
            Ok(Some(Packet::Message(ServerMessage::Accepted { job }))) => {
                debug!(%job, "accepted; uploading");
                if let Some(s) = start.take() {
                    let _ = s.send(());
                }
            }
            Ok(Some(Packet::Message(ServerMessage::Started { frames, .. }))) => {
                progress = Some(ProgressView::new(frames, !cfg.quiet));
            }
            Ok(Some(Packet::Message(ServerMessage::Progress(snapshot)))) => {
                if let Some(p) = &progress {
                    p.update(&snapshot);
                }
            }
            Ok(Some(Packet::Message(ServerMessage::Done { summary, result_bytes }))) => {
                if let Some(p) = progress.take() {
                    p.finish();
                }
                break download(reader, cfg, target, result_bytes).await.map(|()| *summary).map_err(ClientError::from);
            }
            Ok(Some(Packet::Message(ServerMessage::Error { code, .. })))
                if cancelled && code == ErrorCode::Cancelled =>
            {
                break Err(ClientError::Cancelled);
            }
            Ok(Some(Packet::Message(ServerMessage::Error { code, message }))) => {
                break Err(server_error(code, &message));
            }
            Ok(Some(other)) => break Err(anyhow!("unexpected message from the server: {other:?}").into()),
            Ok(None) if cancelled => break Err(ClientError::Cancelled),
            Ok(None) => break Err(anyhow!("the server closed the connection before the job ended").into()),
            Err(e) => break Err(anyhow!(e).context("reading from the server").into()),
        }
    };
    if let Some(p) = progress {
        p.finish();
    }
    result
}

async fn upload<W: AsyncWrite + Unpin>(path: &std::path::Path, writer: &mut PacketWriter<W>) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::open(path).await.with_context(|| format!("reading {}", path.display()))?;
    let mut buf = vec![0u8; MAX_CHUNK_BYTES];
    loop {
        let n = file.read(&mut buf).await.with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        writer.send_chunk(&buf[..n]).await.context("uploading")?;
    }
}

/// Receives exactly `size` bytes into a hidden file beside `target` (the output, or the
/// file it links to), then renames it there.
async fn download<R: AsyncRead + Unpin>(
    reader: &mut PacketReader<R>,
    cfg: &ClientConfig,
    target: &std::path::Path,
    size: u64,
) -> anyhow::Result<()> {
    let temp = RemoveOnDrop::new(temp_path(target));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp.path())
        .await
        .with_context(|| format!("cannot write {}", cfg.output.display()))?;
    let mut received = 0u64;
    while received < size {
        match reader.read::<ServerMessage>().await? {
            Some(Packet::Chunk(data)) => {
                received += data.len() as u64;
                if received > size {
                    bail!("the server sent more than the announced {size} bytes");
                }
                file.write_all(&data).await.with_context(|| format!("writing {}", cfg.output.display()))?;
            }
            Some(Packet::Message(m)) => bail!("unexpected message during the download: {m:?}"),
            None => bail!("the connection closed after {received} of {size} bytes of the result"),
        }
    }
    file.sync_all().await.ok();
    drop(file);
    tokio::fs::rename(temp.path(), target)
        .await
        .with_context(|| format!("moving the result to {}", cfg.output.display()))?;
    temp.keep();
    Ok(())
}

/// The container's name for the server: the output's extension, or `--format`'s (an alphanumeric
/// one: the server names its file with it).
fn container_of(cfg: &ClientConfig) -> String {
    let ext = cfg.output.extension().and_then(|e| e.to_str()).unwrap_or_default();
    match &cfg.output_options.format {
        Some(format) if ext.is_empty() => format.chars().filter(char::is_ascii_alphanumeric).collect(),
        _ => ext.to_string(),
    }
}

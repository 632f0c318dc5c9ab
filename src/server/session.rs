//! One client connection: handshake, submit, upload, job, result.
//!
//! Every way a peer can misbehave ends here in a coded [`ServerMessage::Error`] and a closed
//! connection, never in the server: bad version or token, a message out of turn, garbage
//! bytes, an oversize frame (refused from its length alone), a stalled, trickling or abandoned
//! upload, a client that stops reading. Every read and write has a time limit, and messages
//! to the client name its own file, never a path on the server.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opencv::core::Mat;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Shared;
use super::admission::Ticket;
use crate::cancel::Stop;
use crate::files::RemoveOnDrop;
use crate::job::{Finished, OpenedJob, Writing};
use crate::media::check_output;
use crate::metrics::JobSummary;
use crate::pipeline::{JobError, Observer, Progress};
use crate::protocol::codec::{MAX_CHUNK_BYTES, Packet, PacketReader, PacketWriter, ProtocolError};
use crate::protocol::event::JobEvent;
use crate::protocol::message::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage, SubmitRequest};
use crate::store::{JobState, NewJob};
use crate::transport::JobContext;

/// Time a client has to say hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to submit after the handshake.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause allowed between upload chunks.
const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The slowest upload accepted, on average, in bytes per second (512 kbit/s), on top of
/// [`UPLOAD_GRACE`]: an upload that trickles is cut off, whatever its chunks' pace.
const MIN_UPLOAD_RATE: u64 = 64 << 10;
/// Time every upload gets besides its size's share at [`MIN_UPLOAD_RATE`].
const UPLOAD_GRACE: Duration = Duration::from_secs(30);
/// Time the client has to take each message or result chunk (at most 1 MiB) the server sends.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time the client has to take a progress message while its job runs (tens of bytes, behind
/// socket buffers of tens of kilobytes): a client that does not is not reading, and its job is
/// cancelled rather than left holding a job slot.
const PROGRESS_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest time between two progress messages or events of a job.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Shortest time between two thumbnails of a job.
const THUMBNAIL_INTERVAL: Duration = Duration::from_millis(400);
/// Thumbnails are at most this wide.
const THUMBNAIL_WIDTH: i32 = 320;
/// JPEG quality of thumbnails.
const THUMBNAIL_QUALITY: i32 = 75;

/// Why a connection ends early: sent to the client as an error, then the connection closes.
struct Refusal {
    code: ErrorCode,
    message: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal { code, message: message.into() }
}

impl From<ProtocolError> for Refusal {
    fn from(e: ProtocolError) -> Self {
        let code = match e {
            ProtocolError::TooLarge { .. } => ErrorCode::TooLarge,
            ProtocolError::WriteTimeout(_) | ProtocolError::Broken => ErrorCode::Timeout,
            ProtocolError::Io(_) | ProtocolError::Truncated => ErrorCode::Internal,
            ProtocolError::BadPacket(_) | ProtocolError::Malformed(_) => ErrorCode::BadRequest,
        };
        refuse(code, e.to_string())
    }
}

/// Serves one connection to its end; `ticket` is its place under the connection caps.
pub async fn serve<S>(stream: S, peer: String, mut ticket: Ticket, shared: Arc<Shared>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let (mut reader, mut writer) = (PacketReader::new(r), PacketWriter::with_timeout(w, WRITE_TIMEOUT));
    let outcome = converse(&mut reader, &mut writer, &shared, &shutdown, &peer, &mut ticket).await;
    if let Err(Refusal { code, message }) = outcome {
        info!(%peer, %code, %message, "connection refused or job ended in error");
        let _ = writer.send(&ServerMessage::Error { code, message }).await;
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.shutdown()).await;
}

async fn read_within<R: AsyncRead + Unpin>(
    reader: &mut PacketReader<R>,
    limit: Duration,
    what: &str,
) -> Result<Option<Packet<ClientMessage>>, Refusal> {
    match tokio::time::timeout(limit, reader.read::<ClientMessage>()).await {
        Ok(frame) => Ok(frame?),
        Err(_) => Err(refuse(ErrorCode::Timeout, format!("no {what} within {} s", limit.as_secs()))),
    }
}

async fn converse<R, W>(
    reader: &mut PacketReader<R>,
    writer: &mut PacketWriter<W>,
    shared: &Shared,
    shutdown: &CancellationToken,
    peer: &str,
    ticket: &mut Ticket,
) -> Result<(), Refusal>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let client = handshake(reader, writer, shared, shutdown, ticket).await?;
    let (request, container) = match first_request(reader, shared).await? {
        Request::Submit(request, container) => (request, container),
        Request::List(limit) => {
            let jobs = shared.store.list(limit.clamp(1, MAX_LISTED) as usize).map_err(internal_error)?;
            return Ok(writer.send(&ServerMessage::Jobs { jobs }).await?);
        }
        Request::Show(job) => {
            return match shared.store.get(&job).map_err(internal_error)? {
                Some(record) => Ok(writer.send(&ServerMessage::Job(Box::new(record))).await?),
                None => Err(refuse(ErrorCode::NotFound, format!("no job {job} on this server"))),
            };
        }
        Request::Cancel(job) => {
            let token = shared.cancels.lock().unwrap_or_else(|p| p.into_inner()).get(&job).cloned();
            if let Some(token) = token {
                info!(%peer, %job, "cancelling the job, as asked");
                token.cancel();
                return Ok(writer.send(&ServerMessage::Cancelling { job }).await?);
            }
            return match shared.store.get(&job).map_err(internal_error)? {
                Some(r) => Err(refuse(ErrorCode::BadRequest, format!("job {job} has ended ({})", r.state.as_str()))),
                None => Err(refuse(ErrorCode::NotFound, format!("no job {job} on this server"))),
            };
        }
    };
    // A place among the uploads bounds the disk in use (uploads, results not yet read); it is
    // held until the connection ends.
    let _upload = wait_for(shared.uploads.acquire(), shutdown).await?;
    let id = new_job_id();
    info!(%peer, job = %id, filters = %request.chain, upload = request.upload_bytes, "job accepted");
    let options = serde_json::to_string(&request.output).unwrap_or_default();
    let chain = request.chain.to_string();
    let record = NewJob {
        id: &id,
        peer,
        client: &client,
        input_name: &request.input_name,
        input_bytes: request.upload_bytes,
        chain: &chain,
        output_options: &options,
        container: &container,
    };
    shared.store.create(&record).map_err(internal_error)?;
    // `vpd jobs cancel` finds the job by its id while it is in this map.
    let cancel = shutdown.child_token();
    shared.cancels.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), cancel.clone());
    let outcome = job(reader, writer, shared, (shutdown, &cancel), &id, &request, &container).await;
    shared.cancels.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    // A job recorded done stays done when only the sending of its result failed.
    let ended = || shared.store.get(&id).ok().flatten().is_some_and(|r| r.state.is_final());
    let recorded = match &outcome {
        Ok(()) => Ok(()),
        Err(_) if ended() => Ok(()),
        Err(Refusal { code: ErrorCode::Cancelled, .. }) => shared.store.transition(&id, JobState::Cancelled, None),
        Err(Refusal { message, .. }) => shared.store.transition(&id, JobState::Failed, Some(message)),
    };
    if let Err(e) = recorded {
        warn!(job = %id, error = %format!("{e:#}"), "cannot record the job's end in the job store");
    }
    outcome
}

/// A refusal as a cancel from `vpd jobs cancel` reads, unless the server is shutting down.
fn cancelled(r: Refusal, shutdown: &CancellationToken) -> Refusal {
    match r.code {
        ErrorCode::Cancelled if !shutdown.is_cancelled() => refuse(ErrorCode::Cancelled, "job cancelled"),
        _ => r,
    }
}

/// Most jobs one `List` returns.
const MAX_LISTED: u32 = 1000;

fn internal_error(e: anyhow::Error) -> Refusal {
    refuse(ErrorCode::Internal, format!("the job store: {e:#}"))
}

/// An accepted job, from its `Accepted` to its result, each step recorded in the job store.
async fn job<R, W>(
    reader: &mut PacketReader<R>,
    writer: &mut PacketWriter<W>,
    shared: &Shared,
    (shutdown, cancel): (&CancellationToken, &CancellationToken),
    id: &str,
    request: &SubmitRequest,
    container: &str,
) -> Result<(), Refusal>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    writer.send(&ServerMessage::Accepted { job: id.to_string() }).await?;
    let files = JobFiles::new(shared, id, request, container);
    let sha256 = upload(reader, &files, request.upload_bytes).await?;
    shared.store.uploaded(id, &sha256).map_err(internal_error)?;
    shared.store.transition(id, JobState::Queued, None).map_err(internal_error)?;
    // One slot per running job bounds the memory (frames) and CPU in use. It is taken only
    // now that the upload is whole, and given back before the result is sent.
    let slot = wait_for(shared.job_slots.acquire(), cancel).await.map_err(|r| cancelled(r, shutdown))?;
    shared.store.transition(id, JobState::Running, None).map_err(internal_error)?;
    let summary = run(reader, writer, shared, (shutdown, cancel), id, request, &files, slot).await?;
    let output_bytes = std::fs::metadata(files.output.path()).map_or(0, |m| m.len());
    shared.store.finished(id, &summary, output_bytes).map_err(internal_error)?;
    send_result(writer, files.output.path(), summary).await
}

/// Hello ⇄ welcome: the protocol version and the token. Returns how the client named itself,
/// and whether it presented the token, for the job store.
async fn handshake<R, W>(
    reader: &mut PacketReader<R>,
    writer: &mut PacketWriter<W>,
    shared: &Shared,
    shutdown: &CancellationToken,
    ticket: &mut Ticket,
) -> Result<String, Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(Packet::Message(ClientMessage::Hello { protocol, client, token })) =
        read_within(reader, HANDSHAKE_TIMEOUT, "hello").await?
    else {
        return Err(refuse(ErrorCode::BadRequest, "the first message must be hello"));
    };
    if protocol != PROTOCOL_VERSION {
        return Err(refuse(
            ErrorCode::VersionMismatch,
            format!("client {client} speaks protocol {protocol}; this server speaks {PROTOCOL_VERSION}"),
        ));
    }
    // The handshake is over either way: the next connection may start its own.
    ticket.handshake_done();
    if let Some(expected) = &shared.token
        && !token.as_ref().is_some_and(|t| t.matches(expected))
    {
        // Each failure from an address makes its next answer wait longer: guessing a token
        // costs seconds a try, not microseconds.
        let delay = shared.admission.failed_token(ticket.address());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {}
        }
        return Err(refuse(ErrorCode::Unauthorized, "missing or wrong token"));
    }
    let server = format!("vpd/{}", env!("CARGO_PKG_VERSION"));
    writer
        .send(&ServerMessage::Welcome { protocol: PROTOCOL_VERSION, server, max_upload_bytes: shared.max_upload })
        .await?;
    let authenticated = if shared.token.is_some() { "token" } else { "no token required" };
    Ok(format!("{} ({authenticated})", client.chars().take(64).collect::<String>()))
}

/// What a client asks for after the handshake.
enum Request {
    /// A job: the request, checked, and its output container.
    Submit(Box<SubmitRequest>, String),
    /// The newest jobs.
    List(u32),
    /// One job's record.
    Show(String),
    /// Cancel a job.
    Cancel(String),
}

/// The first message after the handshake.
async fn first_request<R: AsyncRead + Unpin>(
    reader: &mut PacketReader<R>,
    shared: &Shared,
) -> Result<Request, Refusal> {
    match read_within(reader, SUBMIT_TIMEOUT, "submit").await? {
        Some(Packet::Message(ClientMessage::Submit(request))) => {
            let container = validate(&request, shared)?;
            Ok(Request::Submit(request, container))
        }
        Some(Packet::Message(ClientMessage::List { limit })) => Ok(Request::List(limit)),
        Some(Packet::Message(ClientMessage::Show { job })) => Ok(Request::Show(job)),
        Some(Packet::Message(ClientMessage::CancelJob { job })) => Ok(Request::Cancel(job)),
        _ => Err(refuse(ErrorCode::BadRequest, "expected a submit message")),
    }
}

/// A semaphore's permit, unless the server shuts down first.
async fn wait_for<P>(
    permit: impl std::future::Future<Output = Result<P, tokio::sync::AcquireError>>,
    shutdown: &CancellationToken,
) -> Result<P, Refusal> {
    tokio::select! {
        permit = permit => permit.map_err(|_| refuse(ErrorCode::Internal, "server shutting down")),
        _ = shutdown.cancelled() => Err(refuse(ErrorCode::Cancelled, "server shutting down")),
    }
}

/// A job's files in the work directory, removed when the connection ends, and what hides
/// their paths from the client.
struct JobFiles {
    input: RemoveOnDrop,
    output: RemoveOnDrop,
    scrub: Scrub,
}

impl JobFiles {
    fn new(shared: &Shared, id: &str, request: &SubmitRequest, container: &str) -> Self {
        let input = RemoveOnDrop::new(shared.work_dir.join(format!("{id}.in{}", extension_of(&request.input_name))));
        let output = RemoveOnDrop::new(shared.work_dir.join(format!("{id}.out.{container}")));
        let scrub = Scrub::new(&shared.work_dir, input.path(), &request.input_name, output.path());
        JobFiles { input, output, scrub }
    }
}

/// The upload, into the work directory, against a deadline from its size; returns its sha256.
async fn upload<R: AsyncRead + Unpin>(
    reader: &mut PacketReader<R>,
    files: &JobFiles,
    size: u64,
) -> Result<String, Refusal> {
    let deadline = upload_deadline(size);
    match tokio::time::timeout(deadline, receive_upload(reader, files.input.path(), size)).await {
        Ok(received) => received.map_err(|r| files.scrub.refusal(r)),
        Err(_) => Err(refuse(
            ErrorCode::Timeout,
            format!(
                "the upload of {size} bytes did not finish within {} s (at least {} kB/s is needed)",
                deadline.as_secs(),
                MIN_UPLOAD_RATE >> 10
            ),
        )),
    }
}

/// Opens the upload and tells the client and the dashboards what it holds.
async fn open<W: AsyncWrite + Unpin>(
    writer: &mut PacketWriter<W>,
    shared: &Shared,
    id: &str,
    job: &SubmitRequest,
    files: &JobFiles,
) -> Result<OpenedJob, Refusal> {
    let scrub = &files.scrub;
    let cascade = shared.local_face_cascade.clone();
    let (input_path, output_path, chain) =
        (files.input.path().to_path_buf(), files.output.path().to_path_buf(), job.chain.clone());
    let options = job.output.clone();
    let span = tracing::Span::current();
    let opened = tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            crate::job::open(&input_path, &output_path, &chain, &options, cascade.as_deref(), Writing::Direct)
        })
    })
    .await
    .map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?
    .map_err(|e| refuse(ErrorCode::BadInput, scrub.text(&format!("{e:#}"))))?;
    let info = opened.info();
    writer
        .send(&ServerMessage::Started {
            frames: info.frame_count,
            width: info.width as u32,
            height: info.height as u32,
            fps: info.fps,
        })
        .await?;
    shared
        .publish(JobEvent::Started {
            job: id.to_string(),
            filters: job.chain.to_string(),
            frames: info.frame_count,
            width: info.width as u32,
            height: info.height as u32,
            fps: info.fps,
        })
        .await;

    Ok(opened)
}

/// Runs the opened job, streaming progress to the client and events to the
/// dashboards, until it ends; a cancel or a hang-up from the client stops it.
#[allow(clippy::too_many_arguments)]
async fn run<R, W>(
    reader: &mut PacketReader<R>,
    writer: &mut PacketWriter<W>,
    shared: &Shared,
    (shutdown, cancel): (&CancellationToken, &CancellationToken),
    id: &str,
    job: &SubmitRequest,
    files: &JobFiles,
    slot: tokio::sync::SemaphorePermit<'_>,
) -> Result<JobSummary, Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (id, scrub) = (id.to_string(), &files.scrub);
    let opened = open(writer, shared, &id, job, files).await?;
    let info = opened.info();
    let job_token = cancel.child_token();
    let ctx = JobContext {
        id: id.clone(),
        chain: job.chain.clone(),
        stop: Stop::on_cancel(job_token.clone(), &tokio::runtime::Handle::current()),
        encoding: job.transport,
    };
    let window = shared.window(info.frame_bytes());
    let initial = Progress { total: info.frame_count, ..Progress::default() };
    let (progress_tx, mut progress_rx) = watch::channel(initial);
    let (thumb_tx, mut thumb_rx) = mpsc::channel(3);
    let observer = JobObserver::new(progress_tx, thumb_tx);
    let transport = shared.transport.clone();
    let span = tracing::Span::current();
    let mut running =
        tokio::task::spawn_blocking(move || span.in_scope(|| opened.run(&ctx, &*transport, window, &observer)));

    // While it runs: stream progress and thumbnails, and watch the client for a cancel or a
    // hang-up. The observer already rate-limits both.
    let mut client_gone = false;
    let outcome = loop {
        tokio::select! {
            finished = &mut running => break finished.map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?,
            changed = progress_rx.changed() => {
                if changed.is_err() {
                    continue;
                }
                let p = progress_rx.borrow_and_update().clone();
                if !client_gone {
                    let message = ServerMessage::Progress(p.clone());
                    if !matches!(tokio::time::timeout(PROGRESS_WRITE_TIMEOUT, writer.send(&message)).await, Ok(Ok(()))) {
                        warn!(job = %id, "the client takes no progress messages; cancelling the job");
                        client_gone = true;
                        job_token.cancel();
                    }
                }
                shared.publish(JobEvent::Progress { job: id.clone(), progress: p }).await;
            }
            Some((index, jpeg)) = thumb_rx.recv() => {
                shared.publish(JobEvent::Frame { job: id.clone(), index, jpeg }).await;
            }
            message = reader.read::<ClientMessage>(), if !client_gone => match message {
                Ok(Some(Packet::Message(ClientMessage::Cancel))) => {
                    info!(job = %id, "cancelled by the client");
                    job_token.cancel();
                }
                Ok(Some(_)) => {
                    warn!(job = %id, "unexpected message while the job runs; cancelling it");
                    job_token.cancel();
                }
                Ok(None) | Err(_) => {
                    info!(job = %id, "client went away; cancelling the job");
                    client_gone = true;
                    job_token.cancel();
                }
            },
        }
    };
    job_token.cancel(); // ends the stop's waiting task
    // The job's frames, encoder and decoder are gone: their memory goes back to the system,
    // before the client hears the job ended (a few milliseconds), so the server's footprint
    // between jobs is what a client or an operator sees.
    let _ = tokio::task::spawn_blocking(crate::job::release_freed_memory).await;
    let Finished { summary, latency } = match outcome {
        Ok(finished) => finished,
        Err(JobError::Cancelled) => {
            shared.publish(JobEvent::Cancelled { job: id.clone() }).await;
            let why = if shutdown.is_cancelled() { "server shutting down" } else { "job cancelled" };
            return Err(refuse(ErrorCode::Cancelled, why));
        }
        Err(JobError::Failed(e)) => {
            let message = scrub.text(&format!("{e:#}"));
            shared.publish(JobEvent::Failed { job: id.clone(), error: message.clone() }).await;
            return Err(refuse(ErrorCode::JobFailed, message));
        }
    };
    drop(slot);
    // The last thumbnail, and the final numbers: from the summary, so every view agrees with it.
    while let Ok((index, jpeg)) = thumb_rx.try_recv() {
        shared.publish(JobEvent::Frame { job: id.clone(), index, jpeg }).await;
    }
    let last = summary.progress();
    writer.send(&ServerMessage::Progress(last.clone())).await.ok();
    shared.publish(JobEvent::Progress { job: id.clone(), progress: last }).await;
    shared.publish(JobEvent::Done { job: id.clone(), summary: Box::new(summary.clone()), latency }).await;
    info!(job = %id, frames = summary.frames, fps = format!("{:.1}", summary.fps), "job done");

    Ok(summary)
}

/// The result: its summary, then its bytes; the writer's time limit cuts off a client that
/// stops reading.
async fn send_result<W: AsyncWrite + Unpin>(
    writer: &mut PacketWriter<W>,
    output: &Path,
    summary: JobSummary,
) -> Result<(), Refusal> {
    let internal = |e: std::io::Error| refuse(ErrorCode::Internal, format!("reading the result: {e}"));
    let mut file = tokio::fs::File::open(output).await.map_err(internal)?;
    let size = file.metadata().await.map_err(internal)?.len();
    writer.send(&ServerMessage::Done { summary: Box::new(summary), result_bytes: size }).await?;
    let mut buf = vec![0u8; MAX_CHUNK_BYTES];
    loop {
        let n = file.read(&mut buf).await.map_err(internal)?;
        if n == 0 {
            break;
        }
        writer.send_chunk(&buf[..n]).await?;
    }
    Ok(())
}

/// Checks what deserialising a request could not (the chain and the transport encoding were
/// checked as they were read); returns the output container.
fn validate(r: &SubmitRequest, shared: &Shared) -> Result<String, Refusal> {
    let container = r.container.to_ascii_lowercase();
    if container.is_empty() || container.len() > 16 || !container.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(refuse(ErrorCode::BadRequest, format!("bad container '{}'", r.container)));
    }
    // The encoder exists here (checked when the message was read); it and the options must
    // fit the container.
    check_output(Path::new(&format!("output.{container}")), &r.output)
        .map_err(|e| refuse(ErrorCode::BadRequest, e.to_string()))?;
    if r.upload_bytes == 0 {
        return Err(refuse(ErrorCode::BadInput, "the upload is empty"));
    }
    if r.upload_bytes > shared.max_upload {
        return Err(refuse(
            ErrorCode::TooLarge,
            format!("an upload of {} bytes is over this server's limit of {}", r.upload_bytes, shared.max_upload),
        ));
    }
    Ok(container)
}

/// How long an upload of `size` bytes may take in all.
fn upload_deadline(size: u64) -> Duration {
    UPLOAD_GRACE + Duration::from_secs(size.div_ceil(MIN_UPLOAD_RATE))
}

/// Rewrites messages for the client: the server's paths become the names the client knows.
struct Scrub {
    replacements: Vec<(String, String)>,
    work_dir: String,
}

impl Scrub {
    fn new(work_dir: &Path, input: &Path, input_name: &str, output: &Path) -> Self {
        let input_name =
            Path::new(input_name).file_name().map_or("the upload".into(), |n| n.to_string_lossy().into_owned());
        Scrub {
            replacements: vec![
                (input.display().to_string(), input_name),
                (output.display().to_string(), "the result".into()),
            ],
            work_dir: work_dir.display().to_string(),
        }
    }

    fn text(&self, message: &str) -> String {
        let mut text = message.to_string();
        for (from, to) in &self.replacements {
            text = text.replace(from.as_str(), to);
        }
        // Anything else under the work directory (an encoder's partial file): up to the next
        // separator it is one path, named by what it is for.
        while let Some(at) = text.find(&self.work_dir) {
            let end = text[at..].find([':', ' ', '\'', '"', ',']).map_or(text.len(), |n| at + n);
            text.replace_range(at..end, "the result");
        }
        text
    }

    fn refusal(&self, r: Refusal) -> Refusal {
        Refusal { code: r.code, message: self.text(&r.message) }
    }
}

/// Receives exactly `size` bytes of chunks into `path`.
async fn receive_upload<R: AsyncRead + Unpin>(
    reader: &mut PacketReader<R>,
    path: &Path,
    size: u64,
) -> Result<String, Refusal> {
    use sha2::Digest as _;
    let mut sha256 = sha2::Sha256::new();
    let internal = |e: std::io::Error| refuse(ErrorCode::Internal, format!("writing the upload: {e}"));
    let mut file =
        tokio::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).await.map_err(internal)?;
    let mut received = 0u64;
    while received < size {
        match read_within(reader, UPLOAD_IDLE_TIMEOUT, "upload data").await? {
            Some(Packet::Chunk(data)) => {
                received += data.len() as u64;
                if received > size {
                    return Err(refuse(
                        ErrorCode::BadRequest,
                        format!("upload longer than the announced {size} bytes"),
                    ));
                }
                sha256.update(&data);
                file.write_all(&data).await.map_err(internal)?;
            }
            Some(Packet::Message(ClientMessage::Cancel)) => return Err(refuse(ErrorCode::Cancelled, "job cancelled")),
            Some(Packet::Message(_)) => return Err(refuse(ErrorCode::BadRequest, "expected upload data")),
            None => {
                return Err(refuse(ErrorCode::BadRequest, format!("upload ended after {received} of {size} bytes")));
            }
        }
    }
    file.flush().await.map_err(internal)?;
    Ok(sha256.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `.mp4` from `clip.mp4`: the upload keeps its extension as a container hint for FFmpeg.
fn extension_of(name: &str) -> String {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .filter(|e| !e.is_empty() && e.len() <= 8 && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(|e| format!(".{}", e.to_ascii_lowercase()))
        .unwrap_or_default()
}

/// A job id: `j` and 12 hex digits, random per process and job.
fn new_job_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded from the OS per process; the sequence number separates jobs.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    format!("j{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// Passes the pipeline's progress and a thumbnail now and then to the connection task. Called
/// from pipeline threads: keeps only the latest progress, drops thumbnails nobody took yet.
struct JobObserver {
    progress: watch::Sender<Progress>,
    thumbnails: mpsc::Sender<(u64, Vec<u8>)>,
    /// The index of the last thumbnail made.
    last_index: Mutex<Option<u64>>,
    last_progress: Mutex<Option<Instant>>,
    last_thumbnail: Mutex<Option<Instant>>,
}

impl JobObserver {
    fn new(progress: watch::Sender<Progress>, thumbnails: mpsc::Sender<(u64, Vec<u8>)>) -> Self {
        let (last_progress, last_thumbnail, last_index) = (Mutex::new(None), Mutex::new(None), Mutex::new(None));
        JobObserver { progress, thumbnails, last_index, last_progress, last_thumbnail }
    }
}

/// Whether `interval` has passed since `last`; if so, `last` becomes now.
fn due(last: &Mutex<Option<Instant>>, interval: Duration) -> bool {
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_some_and(|t| t.elapsed() < interval) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

impl Observer for JobObserver {
    fn on_progress(&self, p: &Progress) {
        if due(&self.last_progress, PROGRESS_INTERVAL) {
            self.progress.send_replace(p.clone());
        }
    }

    fn on_frame(&self, index: u64, frame: &Mat) {
        // One slot stays free for the last frame's.
        if self.thumbnails.capacity() > 1 && due(&self.last_thumbnail, THUMBNAIL_INTERVAL) {
            self.send_thumbnail(index, frame);
        }
    }

    fn on_last_frame(&self, index: u64, frame: &Mat) {
        // The dashboard of a finished job shows its last frame.
        if *self.last_index.lock().unwrap_or_else(|p| p.into_inner()) != Some(index) {
            self.send_thumbnail(index, frame);
        }
    }
}

impl JobObserver {
    fn send_thumbnail(&self, index: u64, frame: &Mat) {
        match thumbnail(frame) {
            Ok(jpeg) => {
                if self.thumbnails.try_send((index, jpeg)).is_ok() {
                    *self.last_index.lock().unwrap_or_else(|p| p.into_inner()) = Some(index);
                }
            }
            Err(e) => warn!(error = %e, "cannot make a thumbnail"),
        }
    }
}

/// `frame` scaled down to at most [`THUMBNAIL_WIDTH`] pixels wide, as a JPEG.
fn thumbnail(frame: &Mat) -> opencv::Result<Vec<u8>> {
    use opencv::core::{Size, Vector};
    use opencv::imgcodecs::{IMWRITE_JPEG_QUALITY, imencode};
    use opencv::imgproc::{INTER_AREA, resize};
    use opencv::prelude::*;

    let (w, h) = (frame.cols().max(1), frame.rows().max(1));
    let mut small = Mat::default();
    let scaled = if w > THUMBNAIL_WIDTH {
        let height = (i64::from(h) * i64::from(THUMBNAIL_WIDTH) / i64::from(w)).max(1) as i32;
        resize(frame, &mut small, Size::new(THUMBNAIL_WIDTH, height), 0.0, 0.0, INTER_AREA)?;
        &small
    } else {
        frame
    };
    let mut jpeg = Vector::<u8>::new();
    imencode(".jpg", scaled, &mut jpeg, &Vector::from_slice(&[IMWRITE_JPEG_QUALITY, THUMBNAIL_QUALITY]))?;
    Ok(jpeg.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_are_small_jpegs_of_the_same_aspect() {
        use opencv::core::{CV_8UC3, Scalar};
        use opencv::prelude::*;
        let frame = Mat::new_rows_cols_with_default(720, 1280, CV_8UC3, Scalar::new(10.0, 200.0, 30.0, 0.0)).unwrap();
        let jpeg = thumbnail(&frame).unwrap();
        assert_eq!(&jpeg[..3], &[0xff, 0xd8, 0xff]);
        let back =
            opencv::imgcodecs::imdecode(&opencv::core::Vector::from_slice(&jpeg), opencv::imgcodecs::IMREAD_COLOR)
                .unwrap();
        assert_eq!((back.cols(), back.rows()), (320, 180));
    }

    #[test]
    fn uploads_get_grace_plus_their_size_at_the_minimum_rate() {
        assert_eq!(upload_deadline(1), UPLOAD_GRACE + Duration::from_secs(1));
        // 2 MB at one byte every 20 s would take 460 days; it gets 62 s.
        assert_eq!(upload_deadline(2 << 20), Duration::from_secs(30 + 32));
        assert_eq!(upload_deadline(4 << 30), Duration::from_secs(30 + 65536));
    }

    #[test]
    fn messages_to_clients_name_their_file_not_the_servers_paths() {
        let work = Path::new("/var/lib/vpd/work");
        let scrub = Scrub::new(work, &work.join("j1.in.mp4"), "holiday.mp4", &work.join("j1.out.mp4"));
        assert_eq!(scrub.text("/var/lib/vpd/work/j1.in.mp4: not a video file"), "holiday.mp4: not a video file");
        assert_eq!(
            scrub.text("cannot write /var/lib/vpd/work/.j1.out.mp4.vpd-partial-9-0.mp4: No space left on device"),
            "cannot write the result: No space left on device"
        );
        assert_eq!(
            scrub.text("/var/lib/vpd/work/j1.out.mp4: the encoder wrote 0 frames"),
            "the result: the encoder wrote 0 frames"
        );
    }

    #[test]
    fn rate_limits_let_one_through_per_interval() {
        let last = Mutex::new(None);
        assert!(due(&last, Duration::from_secs(60)));
        assert!(!due(&last, Duration::from_secs(60)), "the second within the interval waits");
        assert!(due(&last, Duration::ZERO));
    }
}

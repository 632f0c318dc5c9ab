//! One client connection: handshake, then one request: a submit (upload, then the job is
//! the server's and the connection follows it), an attach or fetch, or a job query or control.
//!
//! Every way a peer can misbehave ends here in a coded [`ServerMessage::Error`] and a closed
//! connection, never in the server: bad version or token, a message out of turn, garbage
//! bytes, an oversize frame (refused from its length alone), a stalled, trickling or abandoned
//! upload, a client that stops reading. Every read and write has a time limit, and messages
//! to the client name its own file, never a path on the server.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Shared;
use super::admission::Ticket;
use super::clients::{Client, RateLimited, Role, UploadCharge};
use super::jobs::{End, Jobs, Spec, Video};
use super::places::Place;
use crate::media::check_output;
use crate::metrics::JobSummary;
use crate::protocol::codec::{MAX_CHUNK_BYTES, Packet, PacketReader, PacketWriter, ProtocolError};
use crate::protocol::jobs::JobRecord;
use crate::protocol::message::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage, SubmitRequest};
use crate::store::{JobState, NewJob};

/// When a client at its limit of jobs at once is told to try again (its jobs' ends are not
/// known in advance; a client that polls at this pace loses little).
const JOBS_LIMIT_RETRY: Duration = Duration::from_secs(5);
/// Time a client has to say hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to submit after the handshake.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause allowed between upload chunks.
const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The slowest upload accepted, in bytes per second (512 kbit/s): on average over the whole
/// upload (on top of [`UPLOAD_GRACE`]), and over every [`RATE_WINDOW`] of it. An upload that
/// stalls or trickles is cut off within one window, and its place goes to the next.
const MIN_UPLOAD_RATE: u64 = 64 << 10;
/// The window over which an upload must keep [`MIN_UPLOAD_RATE`].
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Time every upload gets besides its size's share at [`MIN_UPLOAD_RATE`].
const UPLOAD_GRACE: Duration = Duration::from_secs(30);
/// Time the client has to take each message or result chunk (at most 1 MiB) the server sends.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time the client has to take a progress message while its job runs (tens of bytes, behind
/// socket buffers of tens of kilobytes): a client that does not is not reading, and its
/// connection is closed (the job goes on).
const PROGRESS_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection ends early: sent to the client as an error, then the connection closes.
struct Refusal {
    code: ErrorCode,
    message: String,
    retry_after: Option<Duration>,
    /// An upload cut off this way is kept for its client to resume: the connection was lost
    /// or stalled, not refused.
    resumable: bool,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal { code, message: message.into(), retry_after: None, resumable: false }
}

/// A cut-off upload its client may resume.
fn lost(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal { resumable: true, ..refuse(code, message) }
}

impl From<RateLimited> for Refusal {
    fn from(r: RateLimited) -> Self {
        Refusal { code: ErrorCode::RateLimited, message: r.message, retry_after: r.retry_after, resumable: false }
    }
}

impl From<ProtocolError> for Refusal {
    fn from(e: ProtocolError) -> Self {
        let (code, lost_connection) = match e {
            ProtocolError::TooLarge { .. } => (ErrorCode::TooLarge, false),
            ProtocolError::WriteTimeout(_) | ProtocolError::Broken => (ErrorCode::Timeout, true),
            ProtocolError::Io(_) | ProtocolError::Truncated => (ErrorCode::Internal, true),
            ProtocolError::BadPacket(_) | ProtocolError::Malformed(_) => (ErrorCode::BadRequest, false),
        };
        Refusal { resumable: lost_connection, ..refuse(code, e.to_string()) }
    }
}

/// Serves one connection to its end; `ticket` is its place under the connection caps.
pub async fn serve<S>(stream: S, peer: String, mut ticket: Ticket, shared: Arc<Shared>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let r = Counting { inner: r, count: Arc::default() };
    let (mut reader, mut writer) = (PacketReader::new(r), PacketWriter::with_timeout(w, WRITE_TIMEOUT));
    let outcome = converse(&mut reader, &mut writer, &shared, &shutdown, &peer, &mut ticket).await;
    if let Err(Refusal { code, message, retry_after, .. }) = outcome {
        info!(%peer, %code, %message, "connection refused or job ended in error");
        // Whole seconds, rounded up: a client that waits that long passes.
        let retry_after_s = retry_after.map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
        let _ = writer.send(&ServerMessage::Error { code, message, retry_after_s }).await;
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
        Err(_) => Err(lost(ErrorCode::Timeout, format!("no {what} within {} s", limit.as_secs()))),
    }
}

async fn converse<R, W>(
    reader: &mut PacketReader<Counting<R>>,
    writer: &mut PacketWriter<W>,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    peer: &str,
    ticket: &mut Ticket,
) -> Result<(), Refusal>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let (who, client) = handshake(reader, writer, shared, shutdown, ticket).await?;
    tracing::Span::current().record("client", who.name.as_str());
    // Without tokens every client is "anonymous": only its address tells it apart.
    let seat =
        Seat { address: ticket.address(), client: shared.clients.clients().requires_token().then(|| who.name.clone()) };
    let not_found = |job: &str| refuse(ErrorCode::NotFound, format!("no job {job} on this server"));
    let request = first_request(reader, shared).await?;
    if who.role == Role::Read
        && matches!(request, Request::Submit(..) | Request::ResumeUpload(..) | Request::Control(..))
    {
        return Err(refuse(ErrorCode::Unauthorized, format!("{} has a read-only token", who.name)));
    }
    match request {
        Request::Submit(request, container) => {
            let id =
                submit(reader, writer, shared, shutdown, (peer, &client, &who), &seat, &request, &container).await?;
            attach(reader, writer, shared, &seat, &id).await
        }
        Request::ResumeUpload(job, upload_bytes) => {
            let id = resume_upload(reader, writer, shared, shutdown, &who, &seat, &job, upload_bytes).await?;
            attach(reader, writer, shared, &seat, &id).await
        }
        Request::Attach(job) => {
            writer.send(&ServerMessage::Accepted { job: job.clone() }).await?;
            attach(reader, writer, shared, &seat, &job).await
        }
        Request::Fetch(job) => match shared.jobs.get(&job) {
            Some(live) => Err(refuse(
                ErrorCode::Conflict,
                format!("job {job} is {}; attach to it to follow it to its result", live.state().as_str()),
            )),
            None => ended(writer, shared, &seat, &job).await,
        },
        Request::List(limit) => {
            let jobs = shared.store.list(limit.clamp(1, MAX_LISTED) as usize).map_err(internal_error)?;
            Ok(writer.send(&ServerMessage::Jobs { jobs }).await?)
        }
        Request::Show(job) => match shared.store.get(&job).map_err(internal_error)? {
            Some(record) => Ok(writer.send(&ServerMessage::Job(Box::new(record))).await?),
            None => Err(not_found(&job)),
        },
        Request::Control(job, control) => {
            let (job, state) = apply(shared, (peer, &client, &who), &job, control)?;
            Ok(writer.send(&ServerMessage::Changed { job, state }).await?)
        }
    }
}

/// A job control: what `vpd jobs cancel|pause|resume|rerun` asks.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Control {
    Cancel,
    Pause,
    Resume,
    Rerun,
}

/// Applies `control` to `job`; returns the job it concerns (a rerun's new one) and its state.
fn apply(
    shared: &Arc<Shared>,
    (peer, client, who): (&str, &str, &Client),
    job: &str,
    control: Control,
) -> Result<(String, JobState), Refusal> {
    let live = shared.jobs.get(job);
    let record = match &live {
        Some(_) => None,
        None => Some(
            shared
                .store
                .get(job)
                .map_err(internal_error)?
                .ok_or_else(|| refuse(ErrorCode::NotFound, format!("no job {job} on this server")))?,
        ),
    };
    let ended = |r: &JobRecord| refuse(ErrorCode::Conflict, format!("job {job} has ended ({})", r.state.as_str()));
    match (control, live, record) {
        (Control::Cancel, Some(live), _) => {
            info!(%job, "cancelling the job, as asked");
            live.cancel();
            Ok((job.to_string(), JobState::Cancelled))
        }
        (Control::Pause, Some(live), _) => {
            info!(%job, "pausing the job, as asked");
            live.set_paused(true);
            Ok((job.to_string(), JobState::Paused))
        }
        (Control::Resume, Some(live), _) => {
            info!(%job, "resuming the job, as asked");
            live.set_paused(false);
            let state = match live.state() {
                JobState::Paused => JobState::Queued,
                other => other,
            };
            Ok((job.to_string(), state))
        }
        (Control::Rerun, Some(live), _) => Err(refuse(
            ErrorCode::Conflict,
            format!("job {job} is {}; rerun it once it has ended", live.state().as_str()),
        )),
        (Control::Rerun, None, Some(r)) => rerun(shared, (peer, client, who), &r).map(|id| (id, JobState::Queued)),
        // A failed job (a full disk, a lost cascade) goes on from its committed segments.
        (Control::Resume, None, Some(r)) if r.state == JobState::Failed => {
            within_jobs_limit(shared, who)?;
            retry(shared, &r).map(|()| (job.to_string(), JobState::Queued))
        }
        (_, None, Some(r)) => Err(ended(&r)),
        (_, None, None) => Err(refuse(ErrorCode::Internal, "a job neither live nor recorded")),
    }
}

/// Whether `who` may start one more job: its own limit of jobs at once (the others' jobs are not
/// counted against it, nor its against them).
fn within_jobs_limit(shared: &Shared, who: &Client) -> Result<(), Refusal> {
    match who.limits.jobs {
        Some(most) if shared.jobs.live_count_of(&who.name) >= most.get() => Err(RateLimited {
            message: format!("{} may have {most} jobs queued or running at once", who.name),
            retry_after: Some(JOBS_LIMIT_RETRY),
        }
        .into()),
        _ => Ok(()),
    }
}

/// Starts a failed job again from its committed segments, on its kept upload.
fn retry(shared: &Arc<Shared>, r: &JobRecord) -> Result<(), Refusal> {
    if r.removed_ms.is_some() || !shared.jobs.input_of(&r.id, &r.input_name).is_file() {
        return Err(refuse(ErrorCode::Expired, format!("job {}'s upload was removed; submit it again", r.id)));
    }
    let spec = Spec::of(r).map_err(internal_error)?;
    info!(job = %r.id, committed_frames = r.committed_frames, "resuming a failed job, as asked");
    shared.store.transition(&r.id, JobState::Queued, None).map_err(internal_error)?;
    Jobs::launch(shared, spec, false);
    Ok(())
}

/// Starts a new job on `of`'s kept upload, with its chain and options; returns its id.
fn rerun(shared: &Arc<Shared>, (peer, client, who): (&str, &str, &Client), of: &JobRecord) -> Result<String, Refusal> {
    within_jobs_limit(shared, who)?;
    let expired = || refuse(ErrorCode::Expired, format!("job {}'s upload was removed; submit it again", of.id));
    if of.removed_ms.is_some() {
        return Err(expired());
    }
    let jobs = &shared.jobs;
    let from = jobs.input_of(&of.id, &of.input_name);
    if !from.is_file() {
        return Err(expired());
    }
    let id = new_job_id();
    let to = jobs.input_of(&id, &of.input_name);
    let internal = |e: std::io::Error| refuse(ErrorCode::Internal, format!("copying the upload: {e}"));
    std::fs::create_dir_all(jobs.dir_of(&id)).map_err(internal)?;
    // A hard link costs nothing, and a job never writes its input.
    if std::fs::hard_link(&from, &to).is_err() {
        std::fs::copy(&from, &to).map_err(internal)?;
    }
    let spec = Spec::of(of).map_err(internal_error)?;
    shared.store.rerun(&of.id, &id, peer, client).map_err(internal_error)?;
    info!(job = %id, of = %of.id, "rerun");
    // The new job is the asker's, as its record says.
    Jobs::launch(shared, Spec { id: id.clone(), client: who.name.clone(), ..spec }, false);
    Ok(id)
}

/// Takes a submitted job's upload into its directory and starts it; returns its id. Until
/// the upload is whole the job is the connection's: a cut-off upload fails it, unless enough
/// of it is safely stored to be worth resuming (see [`upload_ended`]).
#[allow(clippy::too_many_arguments)] // issue 20 cuts the session along the job model
async fn submit<R, W>(
    reader: &mut PacketReader<Counting<R>>,
    writer: &mut PacketWriter<W>,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    (peer, client, who): (&str, &str, &Client),
    seat: &Seat,
    request: &SubmitRequest,
    container: &str,
) -> Result<String, Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let limit = shared.max_jobs * QUEUED_PER_SLOT;
    if shared.jobs.live_count() >= limit {
        return Err(refuse(ErrorCode::Busy, format!("{limit} jobs are queued or running; try later")));
    }
    within_jobs_limit(shared, who)?;
    let mut charge = shared.clients.take_upload(who, request.upload_bytes)?;
    // A place among the uploads, within this peer's share of them.
    let _upload = tokio::select! {
        place = seat.place(shared) => place,
        _ = shutdown.cancelled() => return Err(refuse(ErrorCode::Cancelled, "server shutting down")),
    };
    // The disk: what is free must hold this upload.
    check_disk(shared, request.upload_bytes)?;
    let id = new_job_id();
    info!(%peer, job = %id, filters = %request.chain, upload = request.upload_bytes, "job accepted");
    let options = serde_json::to_string(&request.output).unwrap_or_default();
    let (chain, transport) = (request.chain.to_string(), request.transport.to_string());
    let record = NewJob {
        id: &id,
        peer,
        client,
        input_name: &request.input_name,
        input_bytes: request.upload_bytes,
        chain: &chain,
        output_options: &options,
        container,
        transport: &transport,
    };
    // Claimed before it is recorded: the janitor never takes it for an upload left behind.
    let claim =
        shared.uploads_under_way.claim(&id).ok_or_else(|| refuse(ErrorCode::Internal, "a new job's id in use"))?;
    shared.store.create(&record).map_err(internal_error)?;
    writer.send(&ServerMessage::Accepted { job: id.clone() }).await?;
    let received = receive(reader, shared, (&id, &request.input_name, request.upload_bytes), 0, &mut charge).await;
    drop(claim);
    let spec = Spec {
        id: id.clone(),
        client: who.name.clone(),
        input_name: request.input_name.clone(),
        chain: request.chain.clone(),
        output: request.output.clone(),
        transport: request.transport,
        container: container.to_string(),
    };
    upload_ended(shared, spec, received)?;
    Ok(id)
}

/// After an upload's connection ended: the job starts when the upload is whole; one cut off
/// by a lost or stalled connection with at least [`SYNC_EVERY`] safely stored is kept for its
/// client to resume; anything else ends it. (Keeping less would let a peer that announces
/// large uploads and sends nothing leave a job behind every few seconds.)
fn upload_ended(shared: &Arc<Shared>, spec: Spec, received: Result<(), Refusal>) -> Result<(), Refusal> {
    let id = spec.id.clone();
    let Err(r) = received else {
        Jobs::launch(shared, spec, false);
        return Ok(());
    };
    let held = held_upload(&shared.jobs, &id);
    let recorded = if r.resumable && held > 0 {
        info!(job = %id, held, "upload cut off; kept for its client to resume");
        let note = format!("the upload was cut off with {held} bytes held ({}); its client can resume it", r.message);
        shared.store.transition(&id, JobState::Uploading, Some(&note))
    } else {
        let _ = std::fs::remove_dir_all(shared.jobs.dir_of(&id));
        match r.code {
            ErrorCode::Cancelled => shared.store.transition(&id, JobState::Cancelled, None),
            _ => shared.store.transition(&id, JobState::Failed, Some(&r.message)),
        }
    };
    if let Err(e) = recorded {
        warn!(job = %id, error = %format!("{e:#}"), "cannot record the upload's end in the job store");
    }
    Err(r)
}

/// Bytes of job `id`'s partial upload known to be on disk: what its last fsync recorded,
/// never more than the file holds.
pub(super) fn held_upload(jobs: &Jobs, id: &str) -> u64 {
    let synced = std::fs::read_to_string(jobs.synced_of(id)).ok().and_then(|t| t.trim().parse::<u64>().ok());
    let len = std::fs::metadata(jobs.partial_of(id)).map_or(0, |m| m.len());
    synced.unwrap_or(0).min(len)
}

/// The free disk where uploads grow (the state directory's), against `bytes` more of upload.
fn check_disk(shared: &Shared, bytes: u64) -> Result<(), Refusal> {
    super::places::check_disk(shared.jobs.dir(), bytes)
        .map_err(|e| Refusal { retry_after: Some(Duration::from_secs(60)), ..refuse(ErrorCode::Busy, e) })
}

/// Goes on with job `job`'s upload, cut off earlier: the same client, the same size, no
/// other connection uploading it. Returns the job's id once the upload is whole and the job
/// started.
#[allow(clippy::too_many_arguments)] // issue 20 cuts the session along the job model
async fn resume_upload<R, W>(
    reader: &mut PacketReader<Counting<R>>,
    writer: &mut PacketWriter<W>,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    who: &Client,
    seat: &Seat,
    job: &str,
    upload_bytes: u64,
) -> Result<String, Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let not_found = || refuse(ErrorCode::NotFound, format!("no upload of job {job} to resume on this server"));
    let record = shared.store.get(job).map_err(internal_error)?.ok_or_else(not_found)?;
    // Recorded as `NAME (SOFTWARE)`: another client's upload is not this one's to finish.
    if record.client.split(" (").next() != Some(who.name.as_str()) {
        return Err(not_found());
    }
    if record.state != JobState::Uploading || !shared.jobs.partial_of(job).is_file() {
        return Err(refuse(
            ErrorCode::Conflict,
            format!("job {job} is {}: its upload is not waiting to be resumed", record.state.as_str()),
        ));
    }
    if record.input_bytes != upload_bytes {
        return Err(refuse(
            ErrorCode::BadRequest,
            format!("job {job}'s upload is {} bytes, not {upload_bytes}", record.input_bytes),
        ));
    }
    let Some(claim) = shared.uploads_under_way.claim(job) else {
        // The connection it came on has not ended yet (the rate floor ends a stalled one).
        return Err(Refusal {
            retry_after: Some(Duration::from_secs(2)),
            ..refuse(ErrorCode::Busy, format!("job {job}'s upload is still under way on another connection"))
        });
    };
    let spec = Spec::of(&record).map_err(internal_error)?;
    let offset = held_upload(&shared.jobs, job);
    // The bytes that arrived before the cut were charged then: only the rest now.
    let mut charge = shared.clients.take_upload(who, upload_bytes - offset)?;
    let _upload = tokio::select! {
        place = seat.place(shared) => place,
        _ = shutdown.cancelled() => return Err(refuse(ErrorCode::Cancelled, "server shutting down")),
    };
    check_disk(shared, upload_bytes - offset)?;
    info!(%job, offset, "resuming an upload");
    writer.send(&ServerMessage::UploadFrom { job: job.to_string(), offset }).await?;
    let received = receive(reader, shared, (job, &record.input_name, upload_bytes), offset, &mut charge).await;
    if received.is_ok() {
        shared.store.clear_error(job).map_err(internal_error)?;
    }
    drop(claim);
    upload_ended(shared, spec, received)?;
    Ok(job.to_string())
}

/// The upload from `offset` into the job's directory, then kept as its input.
async fn receive<R>(
    reader: &mut PacketReader<Counting<R>>,
    shared: &Shared,
    (id, input_name, size): (&str, &str, u64),
    offset: u64,
    charge: &mut UploadCharge<'_>,
) -> Result<(), Refusal>
where
    R: AsyncRead + Unpin,
{
    let jobs = &shared.jobs;
    let internal = |e: std::io::Error| refuse(ErrorCode::Internal, format!("keeping the upload: {e}"));
    let partial = jobs.partial_of(id);
    std::fs::create_dir_all(jobs.dir_of(id)).map_err(internal)?;
    let scrub = Scrub::new(&jobs.dir_of(id), &partial, input_name, &partial);
    let mut arrived = 0;
    let target = Upload { path: &partial, synced: &jobs.synced_of(id), size, offset };
    let uploaded = upload(reader, &target, &scrub, &mut arrived).await;
    // The hourly limit counts what crossed the wire: all of it, or what came before a cut-off.
    charge.arrived(arrived);
    let sha256 = uploaded?;
    let (dir, kept, synced) = (jobs.dir_of(id), jobs.input_of(id, input_name), jobs.synced_of(id));
    tokio::task::spawn_blocking(move || {
        std::fs::rename(&partial, &kept)?;
        let _ = std::fs::remove_file(&synced);
        std::fs::File::open(&dir)?.sync_all()
    })
    .await
    .map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?
    .map_err(internal)?;
    shared.store.uploaded(id, &sha256).map_err(internal_error)?;
    shared.store.transition(id, JobState::Queued, None).map_err(internal_error)?;
    Ok(())
}

/// Follows a job: its state, video and progress as they change, then its result or its
/// error. A client that goes away or stops reading leaves the job running; its Cancel
/// cancels it.
async fn attach<R, W>(
    reader: &mut PacketReader<R>,
    writer: &mut PacketWriter<W>,
    shared: &Shared,
    seat: &Seat,
    id: &str,
) -> Result<(), Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(live) = shared.jobs.get(id) else { return ended(writer, shared, seat, id).await };
    let _pin = shared.jobs.pin(id);
    let mut status = live.subscribe();
    let (mut state, mut video) = (None, None);
    loop {
        let now = status.borrow_and_update().clone();
        if let Some(end) = now.end {
            return match end {
                End::Done(summary) => {
                    let record = shared.store.get(id).map_err(internal_error)?;
                    let container = record.map(|r| r.container).unwrap_or_default();
                    send_result(writer, shared, seat, &shared.jobs.result_of(id, &container), *summary).await
                }
                End::Failed(code, message) => Err(refuse(code, message)),
                End::Cancelled => Err(refuse(ErrorCode::Cancelled, "job cancelled")),
                End::Interrupted => Err(refuse(
                    ErrorCode::Unavailable,
                    format!("the server is shutting down; job {id} goes on when it is back"),
                )),
            };
        }
        if state != Some(now.state) {
            state = Some(now.state);
            writer.send(&ServerMessage::State { state: now.state }).await?;
        }
        if let (Some(v), None) = (now.video, video) {
            video = Some(v);
            let Video { frames, width, height, fps } = v;
            writer.send(&ServerMessage::Started { frames, width, height, fps }).await?;
        }
        if video.is_some() && now.state == JobState::Running {
            let message = ServerMessage::Progress(now.progress);
            if !matches!(tokio::time::timeout(PROGRESS_WRITE_TIMEOUT, writer.send(&message)).await, Ok(Ok(()))) {
                info!(job = %id, "the client takes no progress messages; the job goes on without it");
                return Ok(());
            }
        }
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    // The driver is gone: the store has the end.
                    return ended(writer, shared, seat, id).await;
                }
            }
            message = reader.read::<ClientMessage>() => match message {
                Ok(Some(Packet::Message(ClientMessage::Cancel))) => {
                    info!(job = %id, "cancelled by the client");
                    live.cancel();
                }
                Ok(Some(_)) => return Err(refuse(ErrorCode::BadRequest, "only cancel is expected while a job runs")),
                Ok(None) | Err(_) => {
                    info!(job = %id, "client went away; the job goes on");
                    return Ok(());
                }
            },
        }
    }
}

/// An ended job, from its record: its result, or why there is none.
async fn ended<W: AsyncWrite + Unpin>(
    writer: &mut PacketWriter<W>,
    shared: &Shared,
    seat: &Seat,
    id: &str,
) -> Result<(), Refusal> {
    let _pin = shared.jobs.pin(id);
    let Some(r) = shared.store.get(id).map_err(internal_error)? else {
        return Err(refuse(ErrorCode::NotFound, format!("no job {id} on this server")));
    };
    let result = shared.jobs.result_of(id, &r.container);
    match (r.state, r.summary) {
        (JobState::Done, Some(summary)) if r.removed_ms.is_none() && result.is_file() => {
            send_result(writer, shared, seat, &result, summary).await
        }
        (JobState::Done, _) => Err(refuse(
            ErrorCode::Expired,
            format!("job {id}'s result was removed (results are kept for --keep-results, within --max-stored)"),
        )),
        (JobState::Failed, _) => Err(refuse(ErrorCode::JobFailed, r.error.unwrap_or_else(|| "job failed".into()))),
        (JobState::Cancelled, _) => Err(refuse(ErrorCode::Cancelled, "job cancelled")),
        (state, _) => Err(refuse(ErrorCode::Conflict, format!("job {id} is {}", state.as_str()))),
    }
}

/// Most live jobs (queued, running, paused) per job slot: past them, a submit is refused.
const QUEUED_PER_SLOT: usize = 16;

/// Most jobs one `List` returns.
const MAX_LISTED: u32 = 1000;

/// A pending connection closed to make room for a newer one.
fn evicted() -> Refusal {
    Refusal {
        retry_after: Some(Duration::from_secs(1)),
        ..refuse(ErrorCode::Busy, "server busy: this connection waited too long for its handshake; try again")
    }
}

fn internal_error(e: anyhow::Error) -> Refusal {
    refuse(ErrorCode::Internal, format!("the job store: {e:#}"))
}

/// Hello ⇄ welcome: the protocol version and the token. Returns the client the token names,
/// and how it is recorded (its name and its software).
async fn handshake<R, W>(
    reader: &mut PacketReader<R>,
    writer: &mut PacketWriter<W>,
    shared: &Shared,
    shutdown: &CancellationToken,
    ticket: &mut Ticket,
) -> Result<(Arc<Client>, String), Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hello = tokio::select! {
        hello = read_within(reader, HANDSHAKE_TIMEOUT, "hello") => hello?,
        _ = ticket.evicted() => return Err(evicted()),
    };
    let Some(Packet::Message(ClientMessage::Hello { protocol, client, token })) = hello else {
        return Err(refuse(ErrorCode::BadRequest, "the first message must be hello"));
    };
    if protocol != PROTOCOL_VERSION {
        return Err(refuse(
            ErrorCode::VersionMismatch,
            format!("client {client} speaks protocol {protocol}; this server speaks {PROTOCOL_VERSION}"),
        ));
    }
    let Some(who) = shared.clients.clients().identify(token.as_ref()) else {
        // Each failure from an address makes its next answer wait longer: guessing a token
        // costs seconds a try, not microseconds. Meanwhile the connection stays pending, and
        // a newcomer may evict it.
        let delay = shared.admission.failed_token(ticket.address());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {}
            _ = ticket.evicted() => return Err(evicted()),
        }
        return Err(refuse(ErrorCode::Unauthorized, "missing or wrong token"));
    };
    // A good token: this connection is no longer one a newcomer may evict.
    ticket.proven();
    let server = format!("vpd/{}", env!("CARGO_PKG_VERSION"));
    writer
        .send(&ServerMessage::Welcome { protocol: PROTOCOL_VERSION, server, max_upload_bytes: shared.max_upload })
        .await?;
    let software: String = client.chars().take(64).collect();
    let recorded = format!("{} ({software})", who.name);
    Ok((who, recorded))
}

/// What a client asks for after the handshake.
enum Request {
    /// A job: the request, checked, and its output container.
    Submit(Box<SubmitRequest>, String),
    /// Follow a job.
    Attach(String),
    /// Download an ended job's result.
    Fetch(String),
    /// Go on with an upload cut off: the job and the upload's whole size.
    ResumeUpload(String, u64),
    /// The newest jobs.
    List(u32),
    /// One job's record.
    Show(String),
    /// Cancel, pause, resume or rerun a job.
    Control(String, Control),
}

/// The first message after the handshake.
async fn first_request<R: AsyncRead + Unpin>(
    reader: &mut PacketReader<R>,
    shared: &Shared,
) -> Result<Request, Refusal> {
    Ok(match read_within(reader, SUBMIT_TIMEOUT, "request").await? {
        Some(Packet::Message(ClientMessage::Submit(request))) => {
            let container = validate(&request, shared)?;
            Request::Submit(request, container)
        }
        Some(Packet::Message(ClientMessage::Attach { job })) => Request::Attach(job),
        Some(Packet::Message(ClientMessage::Fetch { job })) => Request::Fetch(job),
        Some(Packet::Message(ClientMessage::ResumeUpload { job, upload_bytes })) => {
            Request::ResumeUpload(job, upload_bytes)
        }
        Some(Packet::Message(ClientMessage::List { limit })) => Request::List(limit),
        Some(Packet::Message(ClientMessage::Show { job })) => Request::Show(job),
        Some(Packet::Message(ClientMessage::CancelJob { job })) => Request::Control(job, Control::Cancel),
        Some(Packet::Message(ClientMessage::PauseJob { job })) => Request::Control(job, Control::Pause),
        Some(Packet::Message(ClientMessage::ResumeJob { job })) => Request::Control(job, Control::Resume),
        Some(Packet::Message(ClientMessage::RerunJob { job })) => Request::Control(job, Control::Rerun),
        _ => return Err(refuse(ErrorCode::BadRequest, "expected a submit, resume, attach, fetch or job request")),
    })
}

/// Where an upload goes: `size` bytes in all into `path`, of which `offset` are there already;
/// each fsync of it is recorded in `synced`.
struct Upload<'a> {
    path: &'a Path,
    synced: &'a Path,
    size: u64,
    offset: u64,
}

/// The upload, against a deadline from what is left of it and the rate floor; returns the
/// whole file's sha256.
async fn upload<R: AsyncRead + Unpin>(
    reader: &mut PacketReader<Counting<R>>,
    target: &Upload<'_>,
    scrub: &Scrub,
    arrived: &mut u64,
) -> Result<String, Refusal> {
    let left = target.size - target.offset;
    let deadline = upload_deadline(left);
    let count = reader.get_ref().count.clone();
    let received = tokio::select! {
        received = tokio::time::timeout(deadline, receive_upload(reader, target, arrived)) => received,
        too_slow = rate_floor(&count) => return Err(too_slow),
    };
    match received {
        Ok(received) => received.map_err(|r| scrub.refusal(r)),
        Err(_) => Err(lost(
            ErrorCode::Timeout,
            format!(
                "the upload of {left} bytes did not finish within {} s (at least {} kB/s is needed)",
                deadline.as_secs(),
                MIN_UPLOAD_RATE >> 10
            ),
        )),
    }
}

/// The result: its summary, then its bytes; the writer's time limit cuts off a client that
/// stops reading.
async fn send_result<W: AsyncWrite + Unpin>(
    writer: &mut PacketWriter<W>,
    shared: &Shared,
    seat: &Seat,
    output: &Path,
    summary: JobSummary,
) -> Result<(), Refusal> {
    // A place among the uploads: results being sent count against the same bound.
    let _sending = tokio::select! {
        place = seat.place(shared) => place,
        _ = shared.shutdown.cancelled() => return Err(refuse(ErrorCode::Unavailable, "server shutting down")),
    };
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

/// Returns once the bytes read on the connection (`count`) fall below [`MIN_UPLOAD_RATE`] over
/// the last [`RATE_WINDOW`]; never while the upload keeps the pace.
async fn rate_floor(count: &AtomicU64) -> Refusal {
    const TICKS: u32 = 10;
    let mut tick = tokio::time::interval(RATE_WINDOW / TICKS);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let floor = MIN_UPLOAD_RATE * RATE_WINDOW.as_secs();
    let mut seen = std::collections::VecDeque::with_capacity(TICKS as usize + 1);
    loop {
        tick.tick().await;
        seen.push_back(count.load(Ordering::Relaxed));
        if seen.len() > TICKS as usize {
            let window = seen.back().copied().unwrap_or(0) - seen.pop_front().unwrap_or(0);
            if window < floor {
                return lost(
                    ErrorCode::Timeout,
                    format!(
                        "the upload fell below {} kB/s over {} s ({window} bytes came); it was cut to free its place",
                        MIN_UPLOAD_RATE >> 10,
                        RATE_WINDOW.as_secs()
                    ),
                );
            }
        }
    }
}

/// Who a connection is to the upload places: its address and, where tokens tell clients
/// apart, its client.
struct Seat {
    address: Option<std::net::IpAddr>,
    client: Option<String>,
}

impl Seat {
    /// Waits for a place among the uploads within this seat's share.
    async fn place(&self, shared: &Shared) -> Place {
        shared.uploads.take(self.address, self.client.as_deref()).await
    }
}

/// A reader that counts the bytes it reads: the rate floor watches the bytes that cross the
/// wire, not whole chunks, so a slow link sending large chunks is not mistaken for a stall.
pub(super) struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        self.count.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        polled
    }
}

/// How long an upload of `size` bytes may take in all.
fn upload_deadline(size: u64) -> Duration {
    UPLOAD_GRACE + Duration::from_secs(size.div_ceil(MIN_UPLOAD_RATE))
}

/// Rewrites messages for the client: the server's paths become the names the client knows.
pub(super) struct Scrub {
    replacements: Vec<(String, String)>,
    work_dir: String,
}

impl Scrub {
    pub(super) fn new(work_dir: &Path, input: &Path, input_name: &str, output: &Path) -> Self {
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

    pub(super) fn text(&self, message: &str) -> String {
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
        Refusal { message: self.text(&r.message), ..r }
    }
}

/// Bytes between two fsyncs of an upload: what a server killed may have to be sent again.
const SYNC_EVERY: u64 = 8 << 20;

/// Receives the upload's chunks into its file from its offset, counting this connection's bytes
/// in `received`; fsyncs every [`SYNC_EVERY`] and records how far. Returns the whole file's
/// sha256.
async fn receive_upload<R: AsyncRead + Unpin>(
    reader: &mut PacketReader<R>,
    target: &Upload<'_>,
    received: &mut u64,
) -> Result<String, Refusal> {
    use sha2::Digest as _;
    let Upload { path, synced, size, offset } = *target;
    let mut sha256 = sha2::Sha256::new();
    let internal = |e: std::io::Error| refuse(ErrorCode::Internal, format!("writing the upload: {e}"));
    let mut file = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(offset == 0)
        .mode(0o600)
        .open(path)
        .await
        .map_err(internal)?;
    if offset > 0 {
        // What was held: hashed again, and anything past it (never synced) dropped.
        file.set_len(offset).await.map_err(internal)?;
        let mut held = (&mut file).take(offset);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = held.read(&mut buf).await.map_err(internal)?;
            if n == 0 {
                break;
            }
            sha256.update(&buf[..n]);
        }
    }
    let mut total = offset;
    let mut since_sync = 0;
    while total < size {
        match read_within(reader, UPLOAD_IDLE_TIMEOUT, "upload data").await? {
            Some(Packet::Chunk(data)) => {
                *received += data.len() as u64;
                total += data.len() as u64;
                if total > size {
                    return Err(refuse(
                        ErrorCode::BadRequest,
                        format!("upload longer than the announced {size} bytes"),
                    ));
                }
                sha256.update(&data);
                file.write_all(&data).await.map_err(internal)?;
                since_sync += data.len() as u64;
                if since_sync >= SYNC_EVERY {
                    file.sync_data().await.map_err(internal)?;
                    record_synced(synced, total).await.map_err(internal)?;
                    since_sync = 0;
                }
            }
            Some(Packet::Message(ClientMessage::Cancel)) => return Err(refuse(ErrorCode::Cancelled, "job cancelled")),
            Some(Packet::Message(_)) => return Err(refuse(ErrorCode::BadRequest, "expected upload data")),
            None => return Err(lost(ErrorCode::BadRequest, format!("upload ended after {total} of {size} bytes"))),
        }
    }
    // On disk before the job is recorded queued: a resume after a power loss reads it whole.
    file.sync_all().await.map_err(internal)?;
    Ok(sha256.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Records that `bytes` of an upload are on disk: a new file renamed over the old one.
async fn record_synced(synced: &Path, bytes: u64) -> std::io::Result<()> {
    let next = synced.with_extension("next");
    tokio::fs::write(&next, bytes.to_string()).await?;
    tokio::fs::rename(&next, synced).await
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

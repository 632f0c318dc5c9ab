//! A live job's connection: its client's stream in, as it comes, and the job's result out, as
//! it is encoded, on the one connection the job lives on (see [`crate::media::relay`]).
//!
//! The job is admitted like any other (the server's limit of jobs, its client's), recorded,
//! and driven like any other: queued for a job slot, filtered on the server's threads or its
//! workers, on the dashboard with its live frame, counted in `/metrics`. Its client starts
//! sending once told it runs. Frames are dropped before dispatch when the filters fall behind,
//! as in `vpd run`; a client that reads the result too slowly holds the encoder back, which
//! the same rule turns into drops, not a growing queue. The connection's end is the job's: a
//! client gone cancels it, and a job that ends closes its result's pipe, after which its
//! connection sends `Done`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::clients::UploadCharge;
use super::drive::{Relay, launch_live};
use super::jobs::{End, LiveJob};
use super::refusal::{Refusal, internal_error, read_within, refuse};
use super::shared::Shared;
use super::upload::{Caller, Counting, UPLOAD_IDLE_TIMEOUT, room_for_a_job};
use crate::media::relay::pipe as os_pipe;
use crate::pipeline::live::LiveStats;
use crate::protocol::codec::{MAX_CHUNK_BYTES, Packet, PacketReader, PacketWriter};
use crate::protocol::job::{JobId, JobSpec, JobState};
use crate::protocol::message::{ClientMessage, ErrorCode, ServerMessage};

/// Most progress messages a second: a live job's snapshot changes with every frame.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Bytes of a stream charged to its client's hourly upload limit at a time.
const CHARGE_STEP: u64 = 8 << 20;

/// Runs the live job `spec` over this connection until it ends.
pub(super) async fn live<R, W>(
    reader: &mut PacketReader<Counting<R>>,
    writer: &mut PacketWriter<W>,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    caller: &Caller<'_>,
    spec: JobSpec,
) -> Result<(), Refusal>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin,
{
    let Caller { peer, software, who, .. } = *caller;
    let Some(asked) = spec.live else { return Err(refuse(ErrorCode::BadRequest, "not a live job")) };
    room_for_a_job(shared, who)?;
    if shutdown.is_cancelled() {
        return Err(refuse(ErrorCode::Unavailable, "server shutting down"));
    }
    // The pipes first: a job is recorded only once it can run.
    let pipe_error = |e: std::io::Error| refuse(ErrorCode::Internal, format!("a pipe: {e}"));
    let (input, feed) = os_pipe().map_err(pipe_error)?;
    let (result, output) = os_pipe().map_err(pipe_error)?;
    let feed = pipe::Sender::from_owned_fd(feed).map_err(pipe_error)?;
    let result = pipe::Receiver::from_owned_fd(result).map_err(pipe_error)?;
    let id = JobId::new();
    let spec = JobSpec { client: who.name.clone(), input_bytes: 0, ..spec };
    info!(%peer, job = %id, filters = %spec.chain, software, "live job accepted");
    {
        let (id, peer, software, spec) = (id.clone(), peer.to_string(), software.to_string(), spec.clone());
        shared.off(move |s| s.store.create(&id, &peer, &software, &spec)).await.map_err(internal_error)?;
    }
    let stats = Arc::new(LiveStats::default());
    // As in `vpd run`: a frame waits for dispatch a quarter of the latency allowed.
    let max_wait = Duration::from_millis(asked.max_latency_ms) / 4;
    let job = launch_live(shared, id.clone(), spec, Relay { input, output, stats, max_wait });
    writer.send(&ServerMessage::Accepted { job: id.clone() }).await?;

    let charge = shared.clients.take_upload(who, 0)?;
    let running = Arc::new(tokio::sync::Notify::new());
    let inbound = stream_in(reader, feed, shared, &job, who, charge, running.clone());
    let outbound = stream_out(writer, result, &job, &id, running);
    tokio::pin!(inbound, outbound);
    let mut inbound_done = false;
    loop {
        tokio::select! {
            _ = &mut inbound, if !inbound_done => inbound_done = true,
            ended = &mut outbound => return ended,
        }
    }
}

/// The client's stream into the job's input pipe, until the client ends it (`End`: the pipe
/// is closed, and the job drains), cancels, goes away or stalls (the job is cancelled), or the
/// job ends. Nothing is read before the job runs; from then on the stream must keep coming.
async fn stream_in<'a, R: AsyncRead + Unpin + Send>(
    reader: &mut PacketReader<Counting<R>>,
    mut feed: pipe::Sender,
    shared: &'a Shared,
    job: &LiveJob,
    who: &super::clients::Client,
    mut charge: UploadCharge<'a>,
    running: Arc<tokio::sync::Notify>,
) {
    tokio::select! {
        _ = running.notified() => {}
        _ = job.cancel.cancelled() => return,
        // The client may cancel, or leave, while its job waits for a slot.
        read = reader.read::<ClientMessage>() => {
            if !matches!(read, Ok(Some(Packet::Message(ClientMessage::End)))) {
                info!("the client left or cancelled before its live job ran");
            }
            job.cancel();
            return;
        }
    }
    // Bytes arrived; the step charged now covers those from `step` to `charged`.
    let (mut arrived, mut step, mut charged) = (0u64, 0u64, 0u64);
    loop {
        let read = tokio::select! {
            read = read_within(reader, UPLOAD_IDLE_TIMEOUT, "the live stream") => read,
            // The job ended (or was cancelled): its input is no longer read.
            _ = job.cancel.cancelled() => return,
            _ = shared.shutdown.cancelled() => return,
        };
        match read {
            Ok(Some(Packet::Chunk(data))) => {
                arrived += data.len() as u64;
                // Charged a step at a time as it arrives: the hourly limit holds for a stream
                // of no announced size too.
                while arrived > charged {
                    charge.arrived(charged - step);
                    match shared.clients.take_upload(who, CHARGE_STEP) {
                        Ok(next) => charge = next,
                        Err(limited) => {
                            info!(limit = %limited.message, "the live stream is over its client's upload limit; ending it");
                            return;
                        }
                    }
                    (step, charged) = (charged, charged + CHARGE_STEP);
                }
                charge.arrived(arrived - step);
                if feed.write_all(&data).await.is_err() {
                    // The job stopped reading: it ended, and its connection says how.
                    return;
                }
            }
            Ok(Some(Packet::Message(ClientMessage::End))) => {
                info!(bytes = arrived, "the client ended its live stream");
                return; // the pipe closes: the job reads to its end and drains
            }
            Ok(Some(Packet::Message(ClientMessage::Cancel))) => {
                info!("live job cancelled by its client");
                job.cancel();
                return;
            }
            Ok(Some(Packet::Message(_))) | Err(_) | Ok(None) => {
                info!("the client of a live job went away or broke its stream; cancelling the job");
                job.cancel();
                return;
            }
        }
    }
}

/// The job's state, progress and result to the client until it ends: `State` as it changes
/// (the client starts its stream at `running`), `Started`, progress at most every
/// [`PROGRESS_EVERY`], and the result's bytes as they come out of its pipe; once the pipe is
/// closed and the job has ended, `Done` or why not.
async fn stream_out<W: AsyncWrite + Unpin>(
    writer: &mut PacketWriter<W>,
    mut result: pipe::Receiver,
    job: &LiveJob,
    id: &JobId,
    running: Arc<tokio::sync::Notify>,
) -> Result<(), Refusal> {
    let mut status = job.subscribe();
    let (mut state, mut video, mut result_open) = (None, None, true);
    let mut progress_at: Option<Instant> = None;
    let mut buf = vec![0u8; MAX_CHUNK_BYTES];
    loop {
        let now = status.borrow_and_update().clone();
        if let (Some(end), false) = (&now.end, result_open) {
            return match end.clone() {
                End::Done(summary) => Ok(writer.send(&ServerMessage::Done { summary, result_bytes: 0 }).await?),
                End::Failed(code, message) => Err(refuse(code, message)),
                End::Cancelled => Err(refuse(ErrorCode::Cancelled, "job cancelled")),
                End::Interrupted => Err(refuse(
                    ErrorCode::Unavailable,
                    format!("the server is shutting down; live job {id} ends with it"),
                )),
            };
        }
        if state != Some(now.state) {
            state = Some(now.state);
            writer.send(&ServerMessage::State { state: now.state }).await?;
            if now.state == JobState::Running {
                running.notify_one();
            }
        }
        if let (Some(v), None) = (now.video, video) {
            video = Some(v);
            writer.send(&ServerMessage::Started(v)).await?;
        }
        let due = progress_at.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
        if video.is_some() && now.state == JobState::Running && due && now.end.is_none() {
            progress_at = Some(Instant::now());
            writer.send(&ServerMessage::Progress(now.progress)).await?;
        }
        tokio::select! {
            changed = status.changed(), if now.end.is_none() => {
                if changed.is_err() {
                    return Err(refuse(ErrorCode::Internal, "the live job's driver is gone"));
                }
            }
            n = result.read(&mut buf), if result_open => forward(writer, &buf, n, &mut result_open).await?,
        }
    }
}

/// Sends what a read of the result's pipe gave; its end closes it.
async fn forward<W: AsyncWrite + Unpin>(
    writer: &mut PacketWriter<W>,
    buf: &[u8],
    read: std::io::Result<usize>,
    open: &mut bool,
) -> Result<(), Refusal> {
    match read {
        Ok(0) => *open = false,
        Ok(n) => writer.send_chunk(&buf[..n]).await?,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
        Err(e) => return Err(refuse(ErrorCode::Internal, format!("reading the live result: {e}"))),
    }
    Ok(())
}

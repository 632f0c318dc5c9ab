//! Following a job: its state, video and progress as they change, then its result (a place
//! among the uploads while it is sent) or why there is none.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tracing::info;

use super::jobs::End;
use super::places::Seat;
use super::refusal::{Refusal, internal_error, refuse};
use super::shared::Shared;
use crate::metrics::JobSummary;
use crate::protocol::codec::{MAX_CHUNK_BYTES, Packet, PacketReader, PacketWriter};
use crate::protocol::job::{JobId, JobState};
use crate::protocol::message::{ClientMessage, ErrorCode, ServerMessage};

/// Time the client has to take a progress message while its job runs (tens of bytes, behind
/// socket buffers of tens of kilobytes): a client that does not is not reading, and its
/// connection is closed (the job goes on).
pub(super) const PROGRESS_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Follows a job: its state, video and progress as they change, then its result or its
/// error. A client that goes away or stops reading leaves the job running; its Cancel
/// cancels it.
pub(super) async fn attach<R, W>(
    reader: &mut PacketReader<R>,
    writer: &mut PacketWriter<W>,
    shared: &Arc<Shared>,
    seat: &Seat,
    id: &JobId,
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
                    let job = id.clone();
                    let record = shared.off(move |s| s.store.get(&job)).await.map_err(internal_error)?;
                    let container = record.map(|r| r.spec.container).unwrap_or_default();
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
            writer.send(&ServerMessage::Started(v)).await?;
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
pub(super) async fn ended<W: AsyncWrite + Unpin>(
    writer: &mut PacketWriter<W>,
    shared: &Arc<Shared>,
    seat: &Seat,
    id: &JobId,
) -> Result<(), Refusal> {
    let _pin = shared.jobs.pin(id);
    let job = id.clone();
    let Some(r) = shared.off(move |s| s.store.get(&job)).await.map_err(internal_error)? else {
        return Err(refuse(ErrorCode::NotFound, format!("no job {id} on this server")));
    };
    let result = shared.jobs.result_of(id, &r.spec.container);
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

/// The result: its summary, then its bytes; the writer's time limit cuts off a client that
/// stops reading.
pub(super) async fn send_result<W: AsyncWrite + Unpin>(
    writer: &mut PacketWriter<W>,
    shared: &Shared,
    seat: &Seat,
    output: &Path,
    summary: JobSummary,
) -> Result<(), Refusal> {
    // A place among the uploads: results being sent count against the same bound.
    let _sending = tokio::select! {
        place = seat.place(&shared.uploads) => place,
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

//! One client connection: handshake, then one request: a submit (upload, then the job is
//! the server's and the connection follows it), an attach or fetch, or a job query or control.
//!
//! Every way a peer can misbehave ends here in a coded [`ServerMessage::Error`] and a closed
//! connection, never in the server: bad version or token, a message out of turn, garbage
//! bytes, an oversize frame (refused from its length alone), a stalled, trickling or abandoned
//! upload, a client that stops reading. Every read and write has a time limit, and messages
//! to the client name its own file, never a path on the server.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::admission::Ticket;
use super::clients::{Client, Role};
use super::control::apply;
use super::follow::{attach, ended};
use super::places::Seat;
use super::refusal::{Refusal, evicted, internal_error, read_within, refuse};
use super::shared::Shared;
use super::upload::{Caller, Counting, resume_upload, submit, validate};
use crate::protocol::codec::{Packet, PacketReader, PacketWriter};
use crate::protocol::job::JobControl;
use crate::protocol::message::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage};

/// Time a client has to say hello.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a client has to submit after the handshake.
pub(super) const SUBMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Time the client has to take each message or result chunk (at most 1 MiB) the server sends.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Most jobs one `List` returns.
pub(super) const MAX_LISTED: u32 = 1000;

/// Serves one connection to its end; `ticket` is its place under the connection caps.
pub async fn serve<S>(stream: S, peer: String, mut ticket: Ticket, shared: Arc<Shared>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let r = Counting::new(r);
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

/// The handshake, then the one request, answered.
pub(super) async fn converse<R, W>(
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
    let (who, software) = handshake(reader, writer, shared, shutdown, ticket).await?;
    tracing::Span::current().record("client", who.name.as_str());
    // Without tokens every client is "anonymous": only its address tells it apart.
    let seat =
        Seat { address: ticket.address(), client: shared.clients.clients().requires_token().then(|| who.name.clone()) };
    let request = first_request(reader, shared).await?;
    let changes = matches!(
        request,
        ClientMessage::Submit(..) | ClientMessage::ResumeUpload { .. } | ClientMessage::Control { .. }
    );
    if who.role == Role::Read
        && changes
        && !matches!(request, ClientMessage::Control { control: JobControl::Fetch, .. })
    {
        return Err(refuse(ErrorCode::Unauthorized, format!("{} has a read-only token", who.name)));
    }
    match request {
        ClientMessage::Submit(spec) if spec.live.is_some() => {
            let caller = Caller { peer, software: &software, who: &who, seat: &seat };
            super::live::live(reader, writer, shared, shutdown, &caller, *spec).await
        }
        ClientMessage::Submit(spec) => {
            let caller = Caller { peer, software: &software, who: &who, seat: &seat };
            let id = submit(reader, writer, shared, shutdown, &caller, *spec).await?;
            attach(reader, writer, shared, &seat, &id).await
        }
        ClientMessage::ResumeUpload { job, upload_bytes } => {
            let caller = Caller { peer, software: &software, who: &who, seat: &seat };
            let id = resume_upload(reader, writer, shared, shutdown, &caller, &job, upload_bytes).await?;
            attach(reader, writer, shared, &seat, &id).await
        }
        ClientMessage::Attach { job } if shared.jobs.get(&job).is_some_and(|j| j.streaming) => Err(refuse(
            ErrorCode::Conflict,
            format!("job {job} is a live stream: its result goes to the client that sends it"),
        )),
        ClientMessage::Attach { job } => {
            writer.send(&ServerMessage::Accepted { job: job.clone() }).await?;
            attach(reader, writer, shared, &seat, &job).await
        }
        ClientMessage::Control { job, control: JobControl::Fetch } => match shared.jobs.get(&job) {
            Some(live) => Err(refuse(
                ErrorCode::Conflict,
                format!("job {job} is {}; attach to it to follow it to its result", live.state()),
            )),
            None => ended(writer, shared, &seat, &job).await,
        },
        ClientMessage::Control { job, control } => {
            let (job, state) = apply(shared, (peer, &software, &who), &job, control).await?;
            Ok(writer.send(&ServerMessage::Changed { job, state }).await?)
        }
        ClientMessage::List { limit } => {
            let most = limit.clamp(1, MAX_LISTED) as usize;
            let jobs = shared.off(move |s| s.store.list(most)).await.map_err(internal_error)?;
            Ok(writer.send(&ServerMessage::Jobs { jobs }).await?)
        }
        ClientMessage::Show { job } => match shared
            .off({
                let job = job.clone();
                move |s| s.store.get(&job)
            })
            .await
            .map_err(internal_error)?
        {
            Some(record) => Ok(writer.send(&ServerMessage::Job(Box::new(record))).await?),
            None => Err(refuse(ErrorCode::NotFound, format!("no job {job} on this server"))),
        },
        ClientMessage::Hello { .. } | ClientMessage::Cancel | ClientMessage::End => Err(unexpected()),
    }
}

/// A message out of turn after the handshake.
fn unexpected() -> Refusal {
    refuse(ErrorCode::BadRequest, "expected a submit, resume, attach, fetch or job request")
}

/// Hello ⇄ welcome: the protocol version and the token. Returns the client the token names,
/// and its software (`vpd/0.1.0`), as its hello said.
pub(super) async fn handshake<R, W>(
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
    Ok((who, software))
}

/// The first message after the handshake: a request, its spec checked if it is a submit.
pub(super) async fn first_request<R: AsyncRead + Unpin>(
    reader: &mut PacketReader<R>,
    shared: &Shared,
) -> Result<ClientMessage, Refusal> {
    match read_within(reader, SUBMIT_TIMEOUT, "request").await? {
        Some(Packet::Message(ClientMessage::Submit(mut spec))) => {
            validate(&mut spec, shared)?;
            Ok(ClientMessage::Submit(spec))
        }
        Some(Packet::Message(m))
            if !matches!(m, ClientMessage::Hello { .. } | ClientMessage::Cancel | ClientMessage::End) =>
        {
            Ok(m)
        }
        _ => Err(unexpected()),
    }
}

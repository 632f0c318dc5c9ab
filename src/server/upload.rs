//! A job's upload: a submit takes a place among the uploads (within its address's and
//! client's share) and checks the disk, then the chunks go into the job's directory, fsynced
//! every [`SYNC_EVERY`], against a deadline from the upload's size and a rate floor. A whole
//! upload starts the job; one cut off with enough of it safely stored is kept for its client to
//! resume (`ResumeUpload`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::clients::{Client, UploadCharge};
use super::control::within_jobs_limit;
use super::drive::launch;
use super::jobs::Jobs;
use super::places::Seat;
use super::refusal::{Refusal, Scrub, internal_error, lost, read_within, refuse};
use super::shared::Shared;
use crate::media::check_output;
use crate::protocol::codec::{Packet, PacketReader, PacketWriter};
use crate::protocol::job::{JobId, JobSpec, JobState};
use crate::protocol::message::{ClientMessage, ErrorCode, ServerMessage};

/// Longest pause allowed between upload chunks.
pub(super) const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The slowest upload accepted, in bytes per second (512 kbit/s): on average over the whole
/// upload (on top of [`UPLOAD_GRACE`]), and over every [`RATE_WINDOW`] of it. An upload that
/// stalls or trickles is cut off within one window, and its place goes to the next.
pub(super) const MIN_UPLOAD_RATE: u64 = 64 << 10;

/// The window over which an upload must keep [`MIN_UPLOAD_RATE`].
pub(super) const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Time every upload gets besides its size's share at [`MIN_UPLOAD_RATE`].
pub(super) const UPLOAD_GRACE: Duration = Duration::from_secs(30);

/// Most live jobs (queued, running, paused) per job slot: past them, a submit is refused.
pub(super) const QUEUED_PER_SLOT: usize = 16;

/// Bytes between two fsyncs of an upload: what a server killed may have to be sent again.
pub(super) const SYNC_EVERY: u64 = 8 << 20;

/// Who asks for an upload: the peer's address, the client's software, the client its token
/// names, and its seat among the upload places.
#[derive(Clone, Copy)]
pub(super) struct Caller<'a> {
    /// The peer's address, for logs and the record.
    pub(super) peer: &'a str,
    /// The client's software (`vpd/0.1.0`).
    pub(super) software: &'a str,
    /// The client its token names.
    pub(super) who: &'a Client,
    /// Its seat among the upload places.
    pub(super) seat: &'a Seat,
}

/// Where an upload's bytes come from: the protocol's chunks, or an HTTP request's body.
pub(super) trait ChunkSource {
    /// The bytes read from the peer so far, which the rate floor watches.
    fn count(&self) -> Arc<AtomicU64>;

    /// The next piece of the upload: `Ok(None)` when the peer ended it (early, if the size
    /// is not reached), a refusal for anything else it sent.
    fn chunk(&mut self) -> impl std::future::Future<Output = Result<Option<bytes::Bytes>, Refusal>> + Send;
}

impl<R: AsyncRead + Unpin + Send> ChunkSource for PacketReader<Counting<R>> {
    fn count(&self) -> Arc<AtomicU64> {
        self.get_ref().count.clone()
    }

    async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, Refusal> {
        match read_within(self, UPLOAD_IDLE_TIMEOUT, "upload data").await? {
            Some(Packet::Chunk(data)) => Ok(Some(data.into())),
            Some(Packet::Message(ClientMessage::Cancel)) => Err(refuse(ErrorCode::Cancelled, "job cancelled")),
            Some(Packet::Message(_)) => Err(refuse(ErrorCode::BadRequest, "expected upload data")),
            None => Ok(None),
        }
    }
}

/// A submitted job admitted to upload: its place among the uploads, its charge against its
/// client's hourly limit, its record (state `uploading`) and its claim on the id.
pub(super) struct Admitted<'a> {
    /// The job's id.
    pub(super) id: JobId,
    spec: JobSpec,
    charge: UploadCharge<'a>,
    _place: super::places::Place,
    claim: super::places::Claim,
}

/// The one intake every upload goes through, the protocol's and the web's: the limits on
/// jobs (all of them, and its client's), its client's hourly upload limit, a place among the
/// uploads within its peer's share, the free disk; then the job's record. The spec has been
/// checked ([`validate`]).
pub(super) async fn admit<'a>(
    shared: &'a Arc<Shared>,
    shutdown: &CancellationToken,
    caller: &Caller<'_>,
    spec: JobSpec,
) -> Result<Admitted<'a>, Refusal> {
    let Caller { peer, software, who, seat } = *caller;
    room_for_a_job(shared, who)?;
    let charge = shared.clients.take_upload(who, spec.input_bytes)?;
    // A place among the uploads, within this peer's share of them.
    let place = tokio::select! {
        place = seat.place(&shared.uploads) => place,
        _ = shutdown.cancelled() => return Err(refuse(ErrorCode::Cancelled, "server shutting down")),
    };
    // The disk: what is free must hold this upload.
    check_disk(shared, spec.input_bytes)?;
    let id = JobId::new();
    info!(%peer, job = %id, filters = %spec.chain, upload = spec.input_bytes, software, "job accepted");
    // Claimed before it is recorded: the janitor never takes it for an upload left behind.
    let claim =
        shared.uploads_under_way.claim(&id).ok_or_else(|| refuse(ErrorCode::Internal, "a new job's id in use"))?;
    // The job is the client's its token names, whatever the client said.
    let spec = JobSpec { client: who.name.clone(), ..spec };
    {
        let (id, peer, software, spec) = (id.clone(), peer.to_string(), software.to_string(), spec.clone());
        shared.off(move |s| s.store.create(&id, &peer, &software, &spec)).await.map_err(internal_error)?;
    }
    Ok(Admitted { id, spec, charge, _place: place, claim })
}

/// Whether the server, and `who` within its own limit, may take one more job.
pub(super) fn room_for_a_job(shared: &Shared, who: &Client) -> Result<(), Refusal> {
    let limit = shared.max_jobs * QUEUED_PER_SLOT;
    if shared.jobs.live_count() >= limit {
        return Err(refuse(ErrorCode::Busy, format!("{limit} jobs are queued or running; try later")));
    }
    within_jobs_limit(shared, who)
}

impl Admitted<'_> {
    /// Takes the upload from `source` into the job's directory and starts the job. A cut-off
    /// upload fails it, unless `resumable` and enough of it is safely stored to be worth
    /// resuming (see [`upload_ended`]).
    pub(super) async fn receive<S: ChunkSource>(
        mut self,
        shared: &Arc<Shared>,
        source: &mut S,
        resumable: bool,
    ) -> Result<JobId, Refusal> {
        let (id, spec) = (self.id.clone(), self.spec.clone());
        let mut received =
            receive(source, shared, (&id, &spec.input_name, spec.input_bytes), 0, &mut self.charge).await;
        if let Err(r) = &mut received {
            r.resumable &= resumable;
        }
        drop(self.claim);
        upload_ended(shared, id.clone(), spec, received).await?;
        Ok(id)
    }
}

/// Takes a submitted job's upload into its directory and starts it; returns its id. Until
/// the upload is whole the job is the connection's: a cut-off upload fails it, unless enough
/// of it is safely stored to be worth resuming (see [`upload_ended`]).
pub(super) async fn submit<R, W>(
    reader: &mut PacketReader<Counting<R>>,
    writer: &mut PacketWriter<W>,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    caller: &Caller<'_>,
    spec: JobSpec,
) -> Result<JobId, Refusal>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin,
{
    let admitted = admit(shared, shutdown, caller, spec).await?;
    writer.send(&ServerMessage::Accepted { job: admitted.id.clone() }).await?;
    admitted.receive(shared, reader, true).await
}

/// Checks what deserialising a spec could not (the chain and the transport encoding were
/// checked as they were read); the container is lower-cased.
pub(super) fn validate(r: &mut JobSpec, shared: &Shared) -> Result<(), Refusal> {
    let container = r.container.to_ascii_lowercase();
    if container.is_empty() || container.len() > 16 || !container.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(refuse(ErrorCode::BadRequest, format!("bad container '{}'", r.container)));
    }
    // The encoder exists here (checked when the message was read); it and the options must
    // fit the container.
    check_output(Path::new(&format!("output.{container}")), &r.output)
        .map_err(|e| refuse(ErrorCode::BadRequest, e.to_string()))?;
    if let Some(live) = r.live {
        // No upload to size: the stream comes as it comes.
        if !(1..=60_000).contains(&live.max_latency_ms) {
            return Err(refuse(ErrorCode::BadRequest, "a live job's latency bound is 1 ms to 60 s"));
        }
        r.container = container;
        return Ok(());
    }
    if r.input_bytes == 0 {
        return Err(refuse(ErrorCode::BadInput, "the upload is empty"));
    }
    if r.input_bytes > shared.max_upload {
        return Err(refuse(
            ErrorCode::TooLarge,
            format!("an upload of {} bytes is over this server's limit of {}", r.input_bytes, shared.max_upload),
        ));
    }
    r.container = container;
    Ok(())
}

/// After an upload's connection ended: the job starts when the upload is whole; one cut off
/// by a lost or stalled connection with at least [`SYNC_EVERY`] safely stored is kept for its
/// client to resume; anything else ends it. (Keeping less would let a peer that announces
/// large uploads and sends nothing leave a job behind every few seconds.)
pub(super) async fn upload_ended(
    shared: &Arc<Shared>,
    id: JobId,
    spec: JobSpec,
    received: Result<(), Refusal>,
) -> Result<(), Refusal> {
    let Err(r) = received else {
        launch(shared, id, spec, false);
        return Ok(());
    };
    let (resumable, code, message) = (r.resumable, r.code, r.message.clone());
    let job = id.clone();
    let recorded = shared
        .off(move |s| {
            let held = held_upload(&s.jobs, &id);
            if resumable && held > 0 {
                info!(job = %id, held, "upload cut off; kept for its client to resume");
                let note =
                    format!("the upload was cut off with {held} bytes held ({message}); its client can resume it");
                s.store.transition(&id, JobState::Uploading, Some(&note))
            } else {
                let _ = std::fs::remove_dir_all(s.jobs.dir_of(&id));
                match code {
                    ErrorCode::Cancelled => s.store.transition(&id, JobState::Cancelled, None),
                    _ => s.store.transition(&id, JobState::Failed, Some(&message)),
                }
            }
        })
        .await;
    if let Err(e) = recorded {
        warn!(%job, error = %format!("{e:#}"), "cannot record the upload's end in the job store");
    }
    Err(r)
}

/// Bytes of job `id`'s partial upload known to be on disk: what its last fsync recorded,
/// never more than the file holds.
pub(super) fn held_upload(jobs: &Jobs, id: &JobId) -> u64 {
    let synced = std::fs::read_to_string(jobs.synced_of(id)).ok().and_then(|t| t.trim().parse::<u64>().ok());
    let len = std::fs::metadata(jobs.partial_of(id)).map_or(0, |m| m.len());
    synced.unwrap_or(0).min(len)
}

/// The free disk where uploads grow (the state directory's), against `bytes` more of upload.
pub(super) fn check_disk(shared: &Shared, bytes: u64) -> Result<(), Refusal> {
    super::places::check_disk(shared.jobs.dir(), bytes)
        .map_err(|e| Refusal { retry_after: Some(Duration::from_secs(60)), ..refuse(ErrorCode::Busy, e) })
}

/// Goes on with job `job`'s upload, cut off earlier: the same client, the same size, no
/// other connection uploading it. Returns the job's id once the upload is whole and the job
/// started.
pub(super) async fn resume_upload<R, W>(
    reader: &mut PacketReader<Counting<R>>,
    writer: &mut PacketWriter<W>,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    &Caller { who, seat, .. }: &Caller<'_>,
    job: &JobId,
    upload_bytes: u64,
) -> Result<JobId, Refusal>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin,
{
    let not_found = || refuse(ErrorCode::NotFound, format!("no upload of job {job} to resume on this server"));
    // The record, whether the partial upload is there, and how much of it is safely stored.
    let (record, partial, offset) = {
        let job = job.clone();
        shared
            .off(move |s| Ok((s.store.get(&job)?, s.jobs.partial_of(&job).is_file(), held_upload(&s.jobs, &job))))
            .await
            .map_err(internal_error)?
    };
    let record = record.ok_or_else(not_found)?;
    // Another client's upload is not this one's to finish.
    if record.spec.client != who.name {
        return Err(not_found());
    }
    if record.state != JobState::Uploading || !partial {
        return Err(refuse(
            ErrorCode::Conflict,
            format!("job {job} is {}: its upload is not waiting to be resumed", record.state.as_str()),
        ));
    }
    if record.spec.input_bytes != upload_bytes {
        return Err(refuse(
            ErrorCode::BadRequest,
            format!("job {job}'s upload is {} bytes, not {upload_bytes}", record.spec.input_bytes),
        ));
    }
    let Some(claim) = shared.uploads_under_way.claim(job) else {
        // The connection it came on has not ended yet (the rate floor ends a stalled one).
        return Err(Refusal {
            retry_after: Some(Duration::from_secs(2)),
            ..refuse(ErrorCode::Busy, format!("job {job}'s upload is still under way on another connection"))
        });
    };
    // The bytes that arrived before the cut were charged then: only the rest now.
    let mut charge = shared.clients.take_upload(who, upload_bytes - offset)?;
    let _upload = tokio::select! {
        place = seat.place(&shared.uploads) => place,
        _ = shutdown.cancelled() => return Err(refuse(ErrorCode::Cancelled, "server shutting down")),
    };
    check_disk(shared, upload_bytes - offset)?;
    info!(%job, offset, "resuming an upload");
    writer.send(&ServerMessage::UploadFrom { job: job.clone(), offset }).await?;
    let received = receive(reader, shared, (job, &record.spec.input_name, upload_bytes), offset, &mut charge).await;
    if received.is_ok() {
        let job = job.clone();
        shared.off(move |s| s.store.clear_error(&job)).await.map_err(internal_error)?;
    }
    drop(claim);
    upload_ended(shared, job.clone(), record.spec, received).await?;
    Ok(job.clone())
}

/// The upload from `offset` into the job's directory, then kept as its input.
pub(super) async fn receive<S: ChunkSource>(
    source: &mut S,
    shared: &Arc<Shared>,
    (id, input_name, size): (&JobId, &str, u64),
    offset: u64,
    charge: &mut UploadCharge<'_>,
) -> Result<(), Refusal> {
    let jobs = &shared.jobs;
    let internal = |e: std::io::Error| refuse(ErrorCode::Internal, format!("keeping the upload: {e}"));
    let partial = jobs.partial_of(id);
    tokio::fs::create_dir_all(jobs.dir_of(id)).await.map_err(internal)?;
    let scrub = Scrub::new(&jobs.dir_of(id), &partial, input_name, &partial);
    let mut arrived = 0;
    let target = Upload { path: &partial, synced: &jobs.synced_of(id), size, offset };
    let uploaded = upload(source, &target, &scrub, &mut arrived).await;
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
    let id = id.clone();
    shared
        .off(move |s| {
            s.store.uploaded(&id, &sha256)?;
            s.store.transition(&id, JobState::Queued, None)
        })
        .await
        .map_err(internal_error)
}

/// Where an upload goes: `size` bytes in all into `path`, of which `offset` are there already;
/// each fsync of it is recorded in `synced`.
pub(super) struct Upload<'a> {
    path: &'a Path,
    synced: &'a Path,
    size: u64,
    offset: u64,
}

/// The upload, against a deadline from what is left of it and the rate floor; returns the
/// whole file's sha256.
pub(super) async fn upload<S: ChunkSource>(
    source: &mut S,
    target: &Upload<'_>,
    scrub: &Scrub,
    arrived: &mut u64,
) -> Result<String, Refusal> {
    let left = target.size - target.offset;
    let deadline = upload_deadline(left);
    let count = source.count();
    let started = std::time::Instant::now();
    let received = tokio::select! {
        received = tokio::time::timeout(deadline, receive_upload(source, target, arrived)) => received,
        too_slow = rate_floor(&count) => return Err(too_slow),
    };
    match received {
        Ok(Ok(sha256)) => {
            let seconds = started.elapsed().as_secs_f64();
            let mb_per_s = (*arrived as f64 / 1e6 / seconds.max(1e-9) * 10.0).round() / 10.0;
            info!(bytes = *arrived, seconds = (seconds * 1e3).round() / 1e3, mb_per_s, "upload received");
            Ok(sha256)
        }
        Ok(Err(r)) => Err(scrub.refusal(r)),
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

/// Returns once the bytes read on the connection (`count`) fall below [`MIN_UPLOAD_RATE`] over
/// the last [`RATE_WINDOW`]; never while the upload keeps the pace.
pub(super) async fn rate_floor(count: &AtomicU64) -> Refusal {
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

/// A reader that counts the bytes it reads: the rate floor watches the bytes that cross the
/// wire, not whole chunks, so a slow link sending large chunks is not mistaken for a stall.
pub(super) struct Counting<R> {
    inner: R,
    pub(super) count: Arc<AtomicU64>,
}

impl<R> Counting<R> {
    /// Counts what is read from `inner`.
    pub(super) fn new(inner: R) -> Self {
        Counting { inner, count: Arc::default() }
    }
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
pub(super) fn upload_deadline(size: u64) -> Duration {
    UPLOAD_GRACE + Duration::from_secs(size.div_ceil(MIN_UPLOAD_RATE))
}

/// Receives the upload's chunks into its file from its offset, counting this connection's bytes
/// in `received`; fsyncs every [`SYNC_EVERY`] and records how far. Returns the whole file's
/// sha256.
pub(super) async fn receive_upload<S: ChunkSource>(
    source: &mut S,
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
        match source.chunk().await? {
            Some(data) => {
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
            None => return Err(lost(ErrorCode::BadRequest, format!("upload ended after {total} of {size} bytes"))),
        }
    }
    // On disk before the job is recorded queued: a resume after a power loss reads it whole.
    file.sync_all().await.map_err(internal)?;
    Ok(sha256.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Records that `bytes` of an upload are on disk: a new file renamed over the old one.
pub(super) async fn record_synced(synced: &Path, bytes: u64) -> std::io::Result<()> {
    let next = synced.with_extension("next");
    tokio::fs::write(&next, bytes.to_string()).await?;
    tokio::fs::rename(&next, synced).await
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
}

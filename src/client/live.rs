//! `vpd client LIVE-INPUT --server …`: a live stream filtered by a server, on its threads or its
//! workers. The client opens the input, submits a live job, and once the server runs it sends
//! the input's video as it comes while writing the result as it comes back (see
//! [`crate::media::relay`]). Ctrl-C (or the input's end) ends the stream: the server processes
//! what is in flight, the last of the result arrives, and a file output is moved into place
//! whole. The connection is the job's: a live job is not followed again after it is lost.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{ClientConfig, ClientError, ClientJob, Followed, Stream, open, server_error};
use crate::filters::Chain;
use crate::media::relay::{LiveSender, RELAY_FORMAT, ReadTimes, pipe as os_pipe, receive_live};
use crate::media::{check_output, check_output_path};
use crate::metrics::LatencyHistogram;
use crate::progress::ProgressView;
use crate::protocol::codec::{MAX_CHUNK_BYTES, Packet};
use crate::protocol::job::{JobSpec, JobState, LiveSpec};
use crate::protocol::message::{ClientMessage, ErrorCode, ServerMessage};
use crate::protocol::segment::Split;

/// The connection's halves.
type Reader = crate::protocol::codec::PacketReader<tokio::io::ReadHalf<Box<dyn Stream>>>;
type Writer = crate::protocol::codec::PacketWriter<tokio::io::WriteHalf<Box<dyn Stream>>>;

/// After the stream's end, time the server has to send the rest and `Done`.
const END_GRACE: Duration = Duration::from_secs(30);

/// Runs `input` live through the server until Ctrl-C or its end; returns the job's summary.
pub async fn run(cfg: &ClientConfig, shutdown: CancellationToken) -> Result<Followed, ClientError> {
    let ClientJob::Submit { input, chain, live: Some(max_latency), .. } = &cfg.job else {
        return Err(anyhow!("not a live job").into());
    };
    let (input, max_latency) = (input.as_path(), *max_latency);
    let target = check_output_path(input, &cfg.output).map_err(anyhow::Error::from)?;
    check_output(&cfg.output, &cfg.output_options).map_err(anyhow::Error::from)?;
    // The input opens before anything is asked of the server: one that does not is an error now.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = open_input(input, &stop, &shutdown).await?;
    let (mut reader, mut writer) = submit(cfg, input, chain, max_latency, &shutdown).await?;

    // Running: the stream goes out, the result comes back.
    let times = Arc::new(ReadTimes::default());
    let reconnects = Arc::new(AtomicU64::new(0));
    let (stream_out, stream_in) = os_pipe().context("a pipe")?;
    let sending = {
        let (reconnects, times) = (reconnects.clone(), times.clone());
        tokio::task::spawn_blocking(move || sender.send(stream_in, &reconnects, &times))
    };
    let (result_out, result_in) = os_pipe().context("a pipe")?;
    let latency = Arc::new(Mutex::new(LatencyHistogram::default()));
    let abandon = Arc::new(AtomicBool::new(false));
    let receiving = {
        let (target, options) = (target.clone(), cfg.output_options.clone());
        let (times, latency, abandon) = (times.clone(), latency.clone(), abandon.clone());
        tokio::task::spawn_blocking(move || {
            let mut back = |t| latency.lock().unwrap_or_else(|p| p.into_inner()).record(t);
            receive_live(result_out, &target, &options, &times, &mut back, &abandon)
        })
    };
    let mut stream_out = pipe::Receiver::from_owned_fd(stream_out).context("a pipe")?;
    let mut result_in = Some(pipe::Sender::from_owned_fd(result_in).context("a pipe")?);
    let mut sending = Some(sending);
    let mut progress: Option<ProgressView> = None;
    let mut buf = vec![0u8; MAX_CHUNK_BYTES];
    let (mut streaming, mut give_up) = (true, None);
    // What ended it: the summary, or why not.
    let outcome: Result<Box<crate::metrics::JobSummary>, ClientError> = loop {
        tokio::select! {
            n = stream_out.read(&mut buf), if streaming => match n {
                Ok(n) if n > 0 => {
                    if let Err(e) = writer.send_chunk(&buf[..n]).await {
                        break Err(anyhow!(e).context("sending the stream").into());
                    }
                }
                _ => {
                    // The relay ended: the input's end, Ctrl-C, or an input that broke.
                    streaming = false;
                    if let Err(e) = end_stream(sending.take(), &mut writer).await {
                        break Err(e);
                    }
                    give_up = Some(tokio::time::Instant::now() + END_GRACE);
                }
            },
            message = reader.read::<ServerMessage>() => match message {
                Ok(Some(Packet::Chunk(data))) => {
                    let written = match result_in.as_mut() {
                        Some(pipe) => pipe.write_all(&data).await,
                        None => Ok(()),
                    };
                    if written.is_err() {
                        // The output stopped taking it: its own error says why.
                        result_in = None;
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                Ok(Some(Packet::Message(ServerMessage::Started(video)))) => {
                    progress.get_or_insert_with(|| {
                        let view = ProgressView::new(None, !cfg.quiet);
                        debug!(width = video.width, height = video.height, fps = video.fps, "live job started");
                        view
                    });
                }
                Ok(Some(Packet::Message(ServerMessage::Progress(p)))) => {
                    if let Some(view) = &progress {
                        view.update_live(&p, reconnects.load(Ordering::Relaxed));
                    }
                }
                Ok(Some(Packet::Message(ServerMessage::State { .. }))) => {}
                Ok(Some(Packet::Message(ServerMessage::Done { summary, .. }))) => break Ok(summary),
                Ok(Some(Packet::Message(ServerMessage::Error { code: ErrorCode::Cancelled, .. })))
                    if stop.load(Ordering::Relaxed) && shutdown.is_cancelled() =>
                {
                    break Err(ClientError::Cancelled);
                }
                Ok(Some(Packet::Message(ServerMessage::Error { code, message, retry_after_s }))) => {
                    break Err(server_error(code, &message, retry_after_s));
                }
                Ok(Some(other)) => break Err(anyhow!("unexpected message from the server: {other:?}").into()),
                Ok(None) => break Err(anyhow!("the server closed the connection during the live job").into()),
                Err(e) => break Err(anyhow!(e).context("reading from the server").into()),
            },
            _ = shutdown.cancelled(), if !stop.load(Ordering::Relaxed) => {
                // Ctrl-C ends the input, not the job: what is in flight still comes back.
                debug!("interrupted: ending the live stream");
                stop.store(true, Ordering::Relaxed);
            }
            _ = tokio::time::sleep_until(give_up.unwrap_or_else(tokio::time::Instant::now)), if give_up.is_some() => {
                break Err(anyhow!("the server sent no end of the job within {} s of the stream's end", END_GRACE.as_secs()).into());
            }
        }
    };
    stop.store(true, Ordering::Relaxed);
    if let Some(view) = progress.take() {
        view.finish();
    }
    if outcome.is_err() {
        abandon.store(true, Ordering::Relaxed);
    }
    // The result's end: the output is finished (or abandoned) once the last of it is in.
    drop(result_in);
    let received = receiving.await.map_err(|e| anyhow!("{e}"))?;
    if let Some(s) = sending.take() {
        let _ = s.await;
    }
    let mut summary = outcome?;
    let packets = received.map_err(anyhow::Error::from)?;
    debug!(packets, "the live output is written");
    if let Some(live) = summary.live.as_mut() {
        live.reconnects += reconnects.load(Ordering::Relaxed);
        let latency = latency.lock().unwrap_or_else(|p| p.into_inner());
        live.end_to_end_ms = (latency.count() > 0).then(|| latency.percentiles());
    }
    summary.input = shown_input(input);
    summary.output = cfg.output.display().to_string();
    Ok(Followed::Finished(summary))
}

/// Opens the live input (off the runtime's threads); Ctrl-C meanwhile stops it.
async fn open_input(
    input: &Path,
    stop: &Arc<AtomicBool>,
    shutdown: &CancellationToken,
) -> Result<LiveSender, ClientError> {
    let opening = {
        let (input, stop) = (input.to_path_buf(), stop.clone());
        tokio::task::spawn_blocking(move || LiveSender::open(&input, stop))
    };
    tokio::select! {
        opened = opening => Ok(opened.map_err(|e| anyhow!("{e}"))?.map_err(anyhow::Error::from)?),
        _ = shutdown.cancelled() => {
            stop.store(true, Ordering::Relaxed);
            Err(ClientError::Cancelled)
        }
    }
}

/// The relay ended: says so to the server once it ended well (`End`: the server finishes the
/// job), or cancels the job with the relay's error.
async fn end_stream(
    sending: Option<tokio::task::JoinHandle<Result<u64, crate::media::MediaError>>>,
    writer: &mut Writer,
) -> Result<(), ClientError> {
    let sent = match sending {
        Some(s) => s.await.map_err(|e| anyhow!("{e}")).and_then(|r| r.map_err(anyhow::Error::from)),
        None => Ok(0),
    };
    match sent {
        Ok(packets) => {
            debug!(packets, "the stream ended; the server finishes the job");
            writer.send(&ClientMessage::End).await.context("ending the stream")?;
            Ok(())
        }
        Err(e) => {
            let _ = writer.send(&ClientMessage::Cancel).await;
            Err(e.into())
        }
    }
}

/// Connects, submits the live job, and waits for the server to run it; Ctrl-C meanwhile
/// cancels it.
async fn submit(
    cfg: &ClientConfig,
    input: &Path,
    chain: &Chain,
    max_latency: Duration,
    shutdown: &CancellationToken,
) -> Result<(Reader, Writer), ClientError> {
    let (mut reader, mut writer, _) = open(&cfg.server, cfg.tls.as_ref(), cfg.token.clone()).await?;
    let spec = JobSpec {
        chain: chain.clone(),
        // The server writes the relay's container; the output's is this client's.
        output: crate::media::OutputOptions { format: None, ..cfg.output_options.clone() },
        container: RELAY_FORMAT.into(),
        transport: cfg.transport,
        split: Split::Frames,
        input_name: shown_input(input),
        input_bytes: 0,
        client: String::new(),
        live: Some(LiveSpec { max_latency_ms: max_latency.as_millis().clamp(1, 60_000) as u64 }),
    };
    writer.send(&ClientMessage::Submit(Box::new(spec))).await.context("submitting the live job")?;

    // Accepted, then states until it runs; Ctrl-C meanwhile cancels it.
    loop {
        let message = tokio::select! {
            m = reader.read::<ServerMessage>() => m.context("reading from the server")?,
            _ = shutdown.cancelled() => {
                let _ = writer.send(&ClientMessage::Cancel).await;
                return Err(ClientError::Cancelled);
            }
        };
        match message {
            Some(Packet::Message(ServerMessage::Accepted { job })) => debug!(%job, "live job accepted"),
            Some(Packet::Message(ServerMessage::State { state: JobState::Running })) => return Ok((reader, writer)),
            Some(Packet::Message(ServerMessage::State { state })) => debug!(%state, "live job waits"),
            Some(Packet::Message(ServerMessage::Error { code, message, retry_after_s })) => {
                return Err(server_error(code, &message, retry_after_s));
            }
            Some(other) => return Err(anyhow!("unexpected message from the server: {other:?}").into()),
            None => return Err(anyhow!("the server closed the connection").into()),
        }
    }
}

/// The input as the server may record it: a URL without its user and password.
fn shown_input(input: &Path) -> String {
    let text = input.display().to_string();
    match text.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            if path.is_empty() && !rest.contains('/') {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{host}/{path}")
            }
        }
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_input_never_carries_a_password() {
        assert_eq!(shown_input(Path::new("rtsp://user:secret@cam.local:554/stream")), "rtsp://cam.local:554/stream");
        assert_eq!(shown_input(Path::new("srt://0.0.0.0:9000?mode=listener")), "srt://0.0.0.0:9000?mode=listener");
        assert_eq!(shown_input(Path::new("/dev/video0")), "/dev/video0");
    }
}

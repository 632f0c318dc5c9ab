//! Live inputs in the pipeline: the newest frame, never a queue.
//!
//! A [`LiveFeed`] owns the input on a thread of its own that reads and decodes without pause.
//! It hands the pipeline the newest frame it has: when the pipeline cannot take a frame (its
//! window is full because the filters are slower than the stream), the frame waiting is
//! dropped for the newer one and counted. So frames are dropped before dispatch, never after,
//! no queue grows, and the frames that are processed keep their own timestamps (monotonic,
//! with gaps where frames were dropped). A lost network input or device is opened again with
//! backoff. Each frame's latency is measured from when its packet was read to when its encoded
//! packet was written ([`LiveSink`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TrySendError, bounded, select};
use opencv::core::Mat;
use tracing::{info, warn};

use crate::cancel::Stop;
use crate::media::{FrameSink, FrameSource, MediaSource};
pub use crate::metrics::LiveSummary;
use crate::metrics::{LatencyHistogram, Percentiles};

/// The most latency allowed when none is asked for (`--max-latency`).
pub const DEFAULT_MAX_LATENCY: Duration = Duration::from_secs(1);

/// What a live job counts as it runs, shared between the feed, the sink and the views.
#[derive(Default)]
pub struct LiveStats {
    /// Frames read from the input.
    pub read: AtomicU64,
    /// Frames dropped before dispatch, to keep up.
    pub dropped: AtomicU64,
    /// Times the input was lost and opened again.
    pub reconnects: AtomicU64,
    latency: Mutex<LatencyHistogram>,
    /// Each dispatched frame's read time, oldest first, until its encoded packet is written.
    in_flight: Mutex<std::collections::VecDeque<Instant>>,
}

impl LiveStats {
    /// Latency from read to written, so far.
    pub fn latency(&self) -> Percentiles {
        self.latency.lock().unwrap_or_else(|p| p.into_inner()).percentiles()
    }

    /// The summary's part: counts and latency.
    pub fn summary(&self) -> LiveSummary {
        LiveSummary {
            read: self.read.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            latency_ms: self.latency(),
        }
    }
}

/// A frame read, with when its packet was read and its place in the side queue.
struct Read {
    frame: Mat,
    at: Instant,
    seq: u64,
}

/// The newest frame of a live input, for the pipeline to take as it can.
pub struct LiveFeed {
    frames: Receiver<Read>,
    stats: Arc<LiveStats>,
    reader: Option<thread::JoinHandle<anyhow::Result<()>>>,
    done: Arc<AtomicBool>,
    /// Ends the reader's blocking read at once.
    interrupt: Arc<AtomicBool>,
    /// Dropped with the feed: ends the thread watching the stop.
    _ended: crossbeam_channel::Sender<()>,
}

impl LiveFeed {
    /// Starts reading `source` (its first frame is already decoded) on a thread of its own,
    /// until `stop` fires or the input ends; a network input or a device that is lost is
    /// opened again, with backoff, for as long as the job runs.
    pub fn start(mut source: MediaSource, stop: Stop, stats: Arc<LiveStats>) -> anyhow::Result<Self> {
        // The stop (or the feed's end) interrupts a read blocked on the network at once.
        let interrupt = source.interrupt();
        let (ended_tx, ended_rx) = bounded::<()>(0);
        let watched = stop.clone();
        let flag = interrupt.clone();
        thread::Builder::new().name("vpd-live-stop".into()).spawn(move || {
            select! {
                recv(watched.receiver()) -> _ => {},
                recv(ended_rx) -> _ => {},
            }
            flag.store(true, Ordering::Relaxed);
        })?;
        // One frame waits at most: a newer one replaces it.
        let (tx, rx) = bounded::<Read>(1);
        let take_back = rx.clone();
        let done = Arc::new(AtomicBool::new(false));
        let reader_done = done.clone();
        let reader_stats = stats.clone();
        let reader = thread::Builder::new().name("vpd-live-read".into()).spawn(move || {
            let stats = reader_stats;
            let mut seq = 0u64;
            let mut backoff = Duration::from_millis(250);
            loop {
                if stop.is_stopped() || reader_done.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let next = source.next_frame();
                let frame = match next {
                    Ok(Some(frame)) => frame,
                    Ok(None) if !source.is_network() => return Ok(()),
                    // A device or a stream that ended or broke: open it again, with backoff.
                    lost => {
                        if stop.is_stopped() || reader_done.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        let why = match lost {
                            Err(e) => format!("{e:#}"),
                            _ => "the stream ended".into(),
                        };
                        warn!(input = %source.shown().display(), %why, "the live input was lost; opening it again");
                        loop {
                            if stop.receiver().recv_timeout(backoff).is_ok() || stop.is_stopped() {
                                return Ok(());
                            }
                            match source.reopen() {
                                Ok(fresh) => {
                                    source = fresh;
                                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                                    backoff = Duration::from_millis(250);
                                    info!(input = %source.shown().display(), "the live input is back");
                                    break;
                                }
                                Err(e) => {
                                    backoff = (backoff * 2).min(Duration::from_secs(5));
                                    tracing::debug!(error = %e, "reopening the live input failed");
                                }
                            }
                        }
                        continue;
                    }
                };
                stats.read.fetch_add(1, Ordering::Relaxed);
                let read = Read { frame, at: source.last_read_at().unwrap_or_else(Instant::now), seq };
                seq += 1;
                let mut read = read;
                loop {
                    match tx.try_send(read) {
                        Ok(()) => break,
                        Err(TrySendError::Disconnected(_)) => return Ok(()),
                        Err(TrySendError::Full(back)) => {
                            read = back;
                            // The one waiting is older: it goes, and its timestamp with it.
                            if let Ok(old) = take_back.try_recv() {
                                source.drop_frame(old.seq);
                                stats.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        })?;
        Ok(LiveFeed { frames: rx, stats, reader: Some(reader), done, interrupt, _ended: ended_tx })
    }

    /// What the feed counts.
    pub fn stats(&self) -> &Arc<LiveStats> {
        &self.stats
    }

    fn finish_reader(&mut self) -> anyhow::Result<()> {
        self.done.store(true, Ordering::Relaxed);
        match self.reader.take() {
            Some(r) => r.join().map_err(|_| anyhow::anyhow!("the live reader panicked"))?,
            None => Ok(()),
        }
    }
}

impl FrameSource for LiveFeed {
    fn next_frame(&mut self) -> anyhow::Result<Option<Mat>> {
        match self.frames.recv() {
            Ok(read) => {
                self.stats.in_flight.lock().unwrap_or_else(|p| p.into_inner()).push_back(read.at);
                Ok(Some(read.frame))
            }
            // The reader ended: a stop, the end of the input, or a failure it reports.
            Err(_) => {
                self.finish_reader()?;
                Ok(None)
            }
        }
    }
}

impl Drop for LiveFeed {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        self.interrupt.store(true, Ordering::Relaxed);
        // Unblocks a reader handing a frame over.
        while self.frames.try_recv().is_ok() {}
        let _ = self.finish_reader();
    }
}

/// A sink that measures each frame's latency as its encoded packet is written.
pub struct LiveSink<'a> {
    inner: &'a mut dyn FrameSink,
    stats: Arc<LiveStats>,
}

impl<'a> LiveSink<'a> {
    /// Measures what `inner` writes against `stats`' read times.
    pub fn new(inner: &'a mut dyn FrameSink, stats: Arc<LiveStats>) -> Self {
        LiveSink { inner, stats }
    }
}

impl FrameSink for LiveSink<'_> {
    fn write(&mut self, frame: &Mat) -> anyhow::Result<()> {
        self.inner.write(frame)?;
        let read = self.stats.in_flight.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        if let Some(at) = read {
            self.stats.latency.lock().unwrap_or_else(|p| p.into_inner()).record(at.elapsed());
        }
        Ok(())
    }
}

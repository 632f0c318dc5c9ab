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
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select};
use opencv::core::Mat;
use tracing::{info, warn};

use crate::cancel::Stop;
use crate::media::{FrameSink, FrameSource, MediaSource};
use crate::metrics::{LatencyHistogram, LiveSummary, Percentiles};

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
    /// Each frame's encode and write: the encoder's own part of the latency.
    encode: Mutex<LatencyHistogram>,
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
            encode_ms: self.encode.lock().unwrap_or_else(|p| p.into_inner()).percentiles(),
            clips: None,
            end_to_end_ms: None,
        }
    }
}

/// A frame read, with when its packet was read, its presentation time in seconds, and its
/// place in the side queue.
struct Read {
    frame: Mat,
    at: Instant,
    time: Option<f64>,
    seq: u64,
}

/// Bytes of decoded frames a live feed holds waiting for dispatch, at most.
const WAITING_BYTES: usize = 128 << 20;

/// Frames read and not yet dispatched, oldest first.
#[derive(Default)]
struct Waiting {
    frames: std::collections::VecDeque<Read>,
    /// The reader has ended: nothing more will come.
    ended: bool,
}

/// The frames of a live input as they come, for the pipeline to take as it can; those that
/// waited too long go.
pub struct LiveFeed {
    waiting: Arc<(Mutex<Waiting>, Condvar)>,
    stats: Arc<LiveStats>,
    /// How long a frame may wait for dispatch before a newer one takes its place.
    max_wait: Duration,
    /// Forgets a dropped frame's entry in the sink's side queue.
    forget: Box<dyn Fn(u64) + Send + Sync>,
    reader: Option<thread::JoinHandle<anyhow::Result<()>>>,
    /// Marks each frame dispatched for `--record-on`.
    trigger: Option<super::trigger::Trigger>,
    done: Arc<AtomicBool>,
    /// Ends the reader's blocking read at once.
    interrupt: Arc<AtomicBool>,
    /// Dropped with the feed: ends the thread watching the stop.
    _ended: crossbeam_channel::Sender<()>,
}

impl LiveFeed {
    /// Starts reading `source` (its first frame is already decoded) on a thread of its own,
    /// until `stop` fires or the input ends; a network input or a device that is lost is
    /// opened again, with backoff, for as long as the job runs. A frame waits for dispatch at
    /// most `max_wait` while a newer one is there: bursts are taken in, a backlog is not.
    /// A `trigger` looks at each frame as it is dispatched.
    pub fn start(
        mut source: MediaSource,
        stop: Stop,
        stats: Arc<LiveStats>,
        max_wait: Duration,
        trigger: Option<super::trigger::Trigger>,
    ) -> anyhow::Result<Self> {
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
        let info = source.info();
        // Enough frames for a burst of `max_wait`, within WAITING_BYTES.
        let by_time = (info.fps * max_wait.as_secs_f64()).ceil() as usize + 2;
        let cap = by_time.min(WAITING_BYTES / info.frame_bytes().max(1)).max(2);
        let waiting = Arc::new((Mutex::new(Waiting::default()), Condvar::new()));
        let forget = source.frame_forgetter();
        let done = Arc::new(AtomicBool::new(false));
        let (reader_done, reader_stats, queue) = (done.clone(), stats.clone(), waiting.clone());
        let reader = thread::Builder::new().name("vpd-live-read".into()).spawn(move || {
            let read = read_live(&mut source, &stop, &reader_done, &reader_stats, &queue, (cap, max_wait));
            let (lock, ready) = &*queue;
            lock.lock().unwrap_or_else(|p| p.into_inner()).ended = true;
            ready.notify_all();
            read
        })?;
        Ok(LiveFeed {
            waiting,
            stats,
            max_wait,
            forget,
            reader: Some(reader),
            trigger,
            done,
            interrupt,
            _ended: ended_tx,
        })
    }

    fn finish_reader(&mut self) -> anyhow::Result<()> {
        self.done.store(true, Ordering::Relaxed);
        match self.reader.take() {
            Some(r) => r.join().map_err(|_| anyhow::anyhow!("the live reader panicked"))?,
            None => Ok(()),
        }
    }

    /// Counts frame `read` as dropped, and forgets it.
    fn drop_read(&self, read: Read) {
        (self.forget)(read.seq);
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// The reader: frames from `source` into `queue`, a lost input opened again, until the stop,
/// the feed's end, or the end of a file or pipe. The queue holds at most `cap` frames and
/// `max_wait` of the stream's time: a burst (FFmpeg hands over what it read while probing the
/// stream all at once) keeps its newest frames.
fn read_live(
    source: &mut MediaSource,
    stop: &Stop,
    done: &AtomicBool,
    stats: &LiveStats,
    queue: &(Mutex<Waiting>, Condvar),
    (cap, max_wait): (usize, Duration),
) -> anyhow::Result<()> {
    let forget = source.frame_forgetter();
    let mut seq = 0u64;
    let mut backoff = Duration::from_millis(250);
    loop {
        if stop.is_stopped() || done.load(Ordering::Relaxed) {
            return Ok(());
        }
        let frame = match source.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) if !source.is_network() => return Ok(()),
            // A device or a stream that ended or broke: open it again, with backoff.
            lost => {
                if stop.is_stopped() || done.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let why = match lost {
                    Err(e) => format!("{e:#}"),
                    _ => "the stream ended".into(),
                };
                warn!(input = %source.shown().display(), %why, "the live input was lost; opening it again");
                loop {
                    if stop.receiver().recv_timeout(backoff).is_ok()
                        || stop.is_stopped()
                        || done.load(Ordering::Relaxed)
                    {
                        return Ok(());
                    }
                    match source.reopen() {
                        Ok(fresh) => {
                            *source = fresh;
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
        let time = source.last_time();
        let read = Read { frame, at: source.last_read_at().unwrap_or_else(Instant::now), time, seq };
        seq += 1;
        let (lock, ready) = queue;
        let mut waiting = lock.lock().unwrap_or_else(|p| p.into_inner());
        waiting.frames.push_back(read);
        let behind = |w: &Waiting| match (w.frames.front().and_then(|r| r.time), time) {
            (Some(oldest), Some(newest)) => newest - oldest > max_wait.as_secs_f64(),
            _ => false,
        };
        while waiting.frames.len() > cap || (waiting.frames.len() > 1 && behind(&waiting)) {
            if let Some(old) = waiting.frames.pop_front() {
                forget(old.seq);
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(waiting);
        ready.notify_one();
    }
}

impl FrameSource for LiveFeed {
    fn next_frame(&mut self) -> anyhow::Result<Option<Mat>> {
        let next = {
            let (lock, ready) = &*self.waiting;
            let mut waiting = lock.lock().unwrap_or_else(|p| p.into_inner());
            while waiting.frames.is_empty() && !waiting.ended {
                waiting = ready.wait(waiting).unwrap_or_else(|p| p.into_inner());
            }
            // Frames that waited too long go while a newer one is there: the newest is taken.
            let mut stale = Vec::new();
            while waiting.frames.len() > 1 && waiting.frames.front().is_some_and(|r| r.at.elapsed() > self.max_wait) {
                stale.extend(waiting.frames.pop_front());
            }
            let next = waiting.frames.pop_front();
            drop(waiting);
            for read in stale {
                self.drop_read(read);
            }
            next
        };
        match next {
            Some(read) => {
                if let Some(trigger) = self.trigger.as_mut() {
                    trigger.observe(&read.frame, read.time)?;
                }
                self.stats.in_flight.lock().unwrap_or_else(|p| p.into_inner()).push_back(read.at);
                Ok(Some(read.frame))
            }
            // The reader ended: a stop, the end of the input, or a failure it reports.
            None => {
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
        let writing = Instant::now();
        let before = self.inner.packets_out();
        self.inner.write(frame)?;
        // The frames whose packets came out: in order (a live encoder reorders nothing), the
        // oldest first. A sink that does not count takes its frame in as written.
        let out = match (before, self.inner.packets_out()) {
            (Some(b), Some(a)) => a.saturating_sub(b),
            _ => 1,
        };
        if out > 0 {
            self.stats.encode.lock().unwrap_or_else(|p| p.into_inner()).record(writing.elapsed());
        }
        for _ in 0..out {
            let read = self.stats.in_flight.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            if let Some(at) = read {
                self.stats.latency.lock().unwrap_or_else(|p| p.into_inner()).record(at.elapsed());
            }
        }
        Ok(())
    }
}

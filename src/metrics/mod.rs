//! Per-job numbers: one source for the progress bar, the summary, job events, the dashboard and
//! `/metrics`.
//!
//! Latencies go into fixed-size HDR histograms, so a job's memory does not grow with the
//! length of the video; at the end of a job they are folded into Prometheus buckets
//! ([`Buckets`]) that views can add up across jobs. [`exposition`] writes the Prometheus text
//! format.

pub mod exposition;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Per-frame latencies, recorded in microseconds from 1 µs to one hour at 3 significant digits.
#[derive(Debug, Clone)]
pub struct LatencyHistogram(Histogram<u64>);

impl Default for LatencyHistogram {
    fn default() -> Self {
        // 1 µs .. 1 h at 3 significant digits: ~30 kB, bounded whatever the job length.
        LatencyHistogram(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid"))
    }
}

impl LatencyHistogram {
    /// Records one latency; values beyond an hour are clamped to an hour.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, 3_600_000_000);
        self.0.saturating_record(micros);
    }

    /// Adds every latency `other` recorded.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Both have the same bounds, so nothing is out of range.
        let _ = self.0.add(&other.0);
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The recorded latencies in the cumulative buckets of [`LATENCY_BOUNDS`].
    pub fn buckets(&self) -> Buckets {
        let bounds = LATENCY_BOUNDS;
        let counts = bounds
            .iter()
            .map(|b| {
                let micros = (b * 1e6) as u64;
                self.0.iter_recorded().filter(|v| v.value_iterated_to() <= micros).map(|v| v.count_at_value()).sum()
            })
            .collect();
        let sum =
            self.0.iter_recorded().map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64).sum::<f64>() / 1e6;
        Buckets { counts, sum, count: self.0.len() }
    }

    /// p50/p95/p99/max in milliseconds; all zero when nothing was recorded.
    pub fn percentiles(&self) -> Percentiles {
        if self.0.is_empty() {
            return Percentiles::default();
        }
        let ms = |q: f64| self.0.value_at_quantile(q) as f64 / 1000.0;
        Percentiles { p50: ms(0.50), p95: ms(0.95), p99: ms(0.99), max: self.0.max() as f64 / 1000.0 }
    }
}

/// Upper bounds, in seconds, of the per-frame latency buckets every view uses.
pub const LATENCY_BOUNDS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Upper bounds, in seconds, of the job duration buckets.
pub const DURATION_BOUNDS: &[f64] = &[1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// A histogram as Prometheus carries it: cumulative counts per upper bound, sum and count.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Buckets {
    /// Observations at or below each bound, in the order of the bounds.
    pub counts: Vec<u64>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Buckets {
    /// Empty buckets for `bounds`.
    pub fn empty(bounds: &[f64]) -> Self {
        Buckets { counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    /// Adds another histogram over the same bounds.
    pub fn add(&mut self, other: &Buckets) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// Observations in each bucket alone, not cumulative, and a last bar for those above
    /// every bound: what a bar chart shows (see [`LATENCY_BARS`]).
    pub fn bars(&self) -> Vec<u64> {
        let mut below = 0;
        let mut bars: Vec<u64> = self
            .counts
            .iter()
            .map(|&c| {
                let n = c.saturating_sub(below);
                below = below.max(c);
                n
            })
            .collect();
        bars.push(self.count.saturating_sub(below));
        bars
    }

    /// Adds one observation.
    pub fn observe(&mut self, bounds: &[f64], value: f64) {
        if self.counts.len() < bounds.len() {
            self.counts.resize(bounds.len(), 0);
        }
        for (c, b) in self.counts.iter_mut().zip(bounds) {
            if value <= *b {
                *c += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest recorded value.
    pub max: f64,
}

/// Counters a job accumulates while its results come back.
#[derive(Debug, Clone, Default)]
pub struct JobStats {
    /// Frames whose result has been collected (processed or failed).
    pub done: u64,
    /// Frames written as the original because the chain failed on them.
    pub failed: u64,
    /// Results dropped because the frame's result had already arrived.
    pub duplicates: u64,
    /// Redeliveries, re-dispatches and retries, counted from the results that report them.
    pub retries: u64,
    /// Time each frame spent in the filter chain.
    pub filter_latency: LatencyHistogram,
    /// Time from dispatch to result, queueing and transport included.
    pub latency: LatencyHistogram,
    /// Frames per worker.
    pub per_worker: BTreeMap<WorkerId, u64>,
    /// [`JobStats::latency`] as frames per bucket of [`LATENCY_BOUNDS`] and one over them all,
    /// kept apart so that each progress snapshot carries it without walking the histogram.
    pub latency_bars: [u64; LATENCY_BARS],
}

/// Bars of a latency chart: one per bound of [`LATENCY_BOUNDS`], and one over them all.
pub const LATENCY_BARS: usize = LATENCY_BOUNDS.len() + 1;

/// The bar of [`LATENCY_BOUNDS`] that `latency` falls in.
pub fn latency_bar(latency: Duration) -> usize {
    let s = latency.as_secs_f64();
    LATENCY_BOUNDS.iter().position(|&b| s <= b).unwrap_or(LATENCY_BOUNDS.len())
}

impl JobStats {
    /// Adds what `other` counted (a part of the job run on its own).
    pub fn merge(&mut self, other: JobStats) {
        self.done += other.done;
        self.failed += other.failed;
        self.duplicates += other.duplicates;
        self.retries += other.retries;
        self.filter_latency.merge(&other.filter_latency);
        self.latency.merge(&other.latency);
        for (bar, n) in self.latency_bars.iter_mut().zip(other.latency_bars) {
            *bar += n;
        }
        for (worker, n) in other.per_worker {
            *self.per_worker.entry(worker).or_default() += n;
        }
    }

    /// The job's numbers now, as the progress bar, the protocol, job events and the dashboard
    /// carry them: `total` frames if known, `in_flight` not yet back, `elapsed` since the start.
    pub fn progress(&self, total: Option<u64>, in_flight: u64, elapsed: Duration) -> Progress {
        Progress {
            done: self.done,
            failed: self.failed,
            total,
            retries: self.retries,
            in_flight,
            elapsed_ms: elapsed.as_millis() as u64,
            workers: self.per_worker.clone(),
            latency: self.latency_bars.to_vec(),
            live: None,
        }
    }

    /// Counts one collected result.
    pub fn record(&mut self, worker: &WorkerId, filter_time: Duration, latency: Duration, failed: bool) {
        self.done += 1;
        self.failed += u64::from(failed);
        self.filter_latency.record(filter_time);
        self.latency.record(latency);
        self.latency_bars[latency_bar(latency)] += 1;
        *self.per_worker.entry(worker.clone()).or_default() += 1;
    }
}

/// A running job's numbers at one moment: what the observer is told, what the protocol's
/// progress message and the progress event carry, and what the dashboard's job view holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Frames collected so far (processed or failed).
    pub done: u64,
    /// Of those, frames whose filter failed.
    pub failed: u64,
    /// Frames in the video, when the container says.
    pub total: Option<u64>,
    /// Redeliveries, re-dispatches and retries so far.
    pub retries: u64,
    /// Frames dispatched and not yet collected.
    pub in_flight: u64,
    /// Milliseconds since the job started.
    pub elapsed_ms: u64,
    /// Frames done per worker.
    pub workers: BTreeMap<WorkerId, u64>,
    /// Dispatch-to-result latencies so far: frames per bucket of [`LATENCY_BOUNDS`], each
    /// counted once (not cumulative), the last one holding those over every bound. Empty where
    /// nobody measured them (a finished job's view from its summary).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency: Vec<u64>,
    /// A live job's counts so far: frames read and dropped, input losses, latency from read
    /// to written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Box<LiveSummary>>,
}

/// Throughput samples kept per job: past it, every other one goes, so that the chart still
/// spans the whole job at half the detail.
pub const MAX_SAMPLES: usize = 600;

/// What a job's charts are drawn from, live on the board and kept in the job store after.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Charts {
    /// Throughput over time: `[seconds since the start, frames per second]`, at most
    /// [`MAX_SAMPLES`].
    pub throughput: Vec<[f64; 2]>,
    /// Frames per latency bar ([`crate::metrics::LATENCY_BARS`]: one per bound of
    /// [`LATENCY_BOUNDS`], then those above them all).
    pub latency: Vec<u64>,
    /// The bars' upper bounds, in seconds.
    pub latency_bounds: Vec<f64>,
    /// Frames per worker.
    pub workers: BTreeMap<String, u64>,
}

impl Charts {
    /// Adds a throughput sample, halving the detail when the samples are full.
    pub fn sample(&mut self, seconds: f64, fps: f64) {
        if self.throughput.len() >= MAX_SAMPLES {
            let kept: Vec<[f64; 2]> = self.throughput.iter().copied().step_by(2).collect();
            self.throughput = kept;
        }
        self.throughput.push([seconds, fps]);
    }
}

/// The end-of-job report: printed by `vpd run`, sent to clients, stored with the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    /// The input file.
    pub input: String,
    /// Where the result was written.
    pub output: String,
    /// The filter chain, parameters spelled out.
    pub filters: String,
    /// The output codec.
    pub codec: String,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// The input's (and output's) frame rate.
    pub video_fps: f64,
    /// Frames written.
    pub frames: u64,
    /// Frames written as the original because the filter failed on them.
    pub failed_frames: u64,
    /// Redeliveries and re-dispatches.
    pub retries: u64,
    /// Results that arrived more than once and were dropped.
    pub duplicates: u64,
    /// Wall-clock time of the whole job, decoding and encoding included.
    pub wall_seconds: f64,
    /// Frames per second over the whole job.
    pub fps: f64,
    /// Time each frame spent in the filter chain.
    pub filter_latency_ms: Percentiles,
    /// Time from dispatch to result.
    pub latency_ms: Percentiles,
    /// Frames per worker.
    pub workers: BTreeMap<String, u64>,
    /// Bytes of frame tasks sent to workers (re-dispatches included); 0 in-process.
    pub wire_bytes_sent: u64,
    /// Bytes of results received from workers (duplicates included); 0 in-process.
    pub wire_bytes_received: u64,
    /// Where a resumed job started: frames before it were committed by an earlier run and not
    /// decoded, filtered or encoded again (`frames` counts them too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at_frame: Option<u64>,
    /// How the frames reached the workers (`frames` or `segments`), where a server chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// Why it chose that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_why: Option<String>,
    /// How its frames were cut into tiles (`2x2, a margin of 12 px`), or why not, where it
    /// asked for tiles or its frames are large.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiles: Option<String>,
    /// A live job's reads, drops, reconnects and latency from read to written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveSummary>,
}

impl JobSummary {
    /// The finished job's numbers as a last progress snapshot, so every view agrees with the
    /// summary.
    pub fn progress(&self) -> Progress {
        Progress {
            done: self.frames,
            failed: self.failed_frames,
            total: Some(self.frames),
            retries: self.retries,
            in_flight: 0,
            elapsed_ms: (self.wall_seconds * 1000.0) as u64,
            workers: self.workers.iter().map(|(w, n)| (WorkerId::new(w.as_str()), *n)).collect(),
            latency: Vec::new(),
            live: self.live.clone().map(Box::new),
        }
    }
}

/// Who processed a frame: a thread of this process, or a remote worker.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(Arc<str>);

impl WorkerId {
    /// A worker id from its display form.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        WorkerId(id.into())
    }

    /// This process's id as workers report it and brokers show it: `hostname:pid`.
    pub fn this_process() -> Self {
        WorkerId::on_this_host(&std::process::id().to_string())
    }

    /// `hostname:name`: a worker named by its operator (a systemd instance, `vpd-worker@3`).
    pub fn on_this_host(name: &str) -> Self {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most buf.len() bytes into the buffer it is given.
        let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        let host = if ok { String::from_utf8_lossy(&buf[..end]).into_owned() } else { "unknown".into() };
        WorkerId::new(format!("{host}:{name}"))
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for WorkerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WorkerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(WorkerId::new)
    }
}

impl fmt::Debug for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_recorded_values() {
        let mut h = LatencyHistogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p = h.percentiles();
        assert_eq!(h.count(), 100);
        // 3 significant digits: within 0.1 % of the exact order statistic.
        assert!((p.p50 - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p95 - 95.0).abs() < 0.1, "{p:?}");
        assert!((p.p99 - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.max - 100.0).abs() < 0.1, "{p:?}");
    }

    #[test]
    fn buckets_are_cumulative_and_add_up() {
        let mut h = LatencyHistogram::default();
        for ms in [1u64, 3, 3, 40, 2000] {
            h.record(Duration::from_millis(ms));
        }
        let b = h.buckets();
        // Bounds: 1 ms, 2.5 ms, 5 ms, 10 ms, 25 ms, 50 ms, … 2.5 s …
        assert_eq!(&b.counts[..6], &[1, 1, 3, 3, 3, 4]);
        assert_eq!(b.counts[LATENCY_BOUNDS.iter().position(|x| *x == 2.5).unwrap()], 5);
        assert_eq!(b.count, 5);
        assert!((b.sum - 2.047).abs() < 0.01, "{}", b.sum);
        let mut total = Buckets::empty(LATENCY_BOUNDS);
        total.add(&b);
        total.add(&b);
        assert_eq!((total.counts[2], total.count), (6, 10));
        let mut d = Buckets::empty(DURATION_BOUNDS);
        d.observe(DURATION_BOUNDS, 7.0);
        assert_eq!(&d.counts[..3], &[0, 0, 1]);
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        assert_eq!(LatencyHistogram::default().percentiles(), Percentiles::default());
    }

    #[test]
    fn stats_count_failures_and_workers() {
        let mut s = JobStats::default();
        let (a, b) = (WorkerId::new("a"), WorkerId::new("b"));
        s.record(&a, Duration::from_millis(2), Duration::from_millis(3), false);
        s.record(&b, Duration::from_millis(2), Duration::from_millis(3), true);
        s.record(&a, Duration::from_millis(2), Duration::from_millis(3), false);
        assert_eq!((s.done, s.failed), (3, 1));
        assert_eq!(s.per_worker[&a], 2);
        assert_eq!(s.per_worker[&b], 1);
    }
}

/// A live job's counts, in its summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveSummary {
    /// Frames read from the input.
    pub read: u64,
    /// Frames dropped before dispatch because the filters could not keep up.
    pub dropped: u64,
    /// Times the input was lost and opened again.
    pub reconnects: u64,
    /// From a frame's packet being read to its encoded packet being written.
    pub latency_ms: Percentiles,
    /// Of that, the encoder's and the muxer's own part: from a filtered frame going to the
    /// encoder to its packet being written.
    #[serde(default)]
    pub encode_ms: Percentiles,
    /// Clips written under `--record-on` (none without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clips: Option<u64>,
    /// Through a server (`vpd client`): from a packet being read by the client to the
    /// server's packet of the same frame being written by the client, both ways over the
    /// network included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_to_end_ms: Option<Percentiles>,
}

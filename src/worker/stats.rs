//! What a worker has done, for its own `/metrics` (`vpd worker --metrics ADDR`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::metrics::exposition::{Exposition, Kind};
use crate::metrics::{Buckets, LATENCY_BOUNDS};

/// A worker's counters, shared by its filter threads and its broker loop.
#[derive(Default)]
pub struct WorkerStats {
    processed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    redelivered: AtomicU64,
    in_hand: AtomicU64,
    connected: AtomicBool,
    filter_time: Mutex<Buckets>,
}

impl WorkerStats {
    /// A frame's result was published and its task acked.
    pub fn processed(&self) {
        self.processed.fetch_add(1, Ordering::Relaxed);
    }

    /// A frame was given up on and dead-lettered: its filters failed on every attempt, or its
    /// task did not decode.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// A failed frame was published again for another attempt.
    pub fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    /// A task arrived that the broker had delivered before (to a worker that died, say).
    pub fn redelivered(&self) {
        self.redelivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Tasks taken from the broker and not yet acked.
    pub fn set_in_hand(&self, n: usize) {
        self.in_hand.store(n as u64, Ordering::Relaxed);
    }

    /// Whether the broker connection is up.
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// Time one frame spent in its filter chain.
    pub fn filter_time(&self, time: Duration) {
        let mut b = self.filter_time.lock().unwrap_or_else(|p| p.into_inner());
        b.observe(LATENCY_BOUNDS, time.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let mut e = Exposition::new();
        e.single(
            Kind::Counter,
            "vpd_worker_frames_processed_total",
            "Frames filtered, published and acked.",
            get(&self.processed),
        );
        e.single(
            Kind::Counter,
            "vpd_worker_frames_failed_total",
            "Frames given up on and dead-lettered (filters failed on every attempt, or undecodable).",
            get(&self.failed),
        );
        e.single(
            Kind::Counter,
            "vpd_worker_frames_retried_total",
            "Failed frames published again for another attempt.",
            get(&self.retried),
        );
        e.single(
            Kind::Counter,
            "vpd_worker_tasks_redelivered_total",
            "Tasks received that RabbitMQ had delivered before.",
            get(&self.redelivered),
        );
        let filter = self.filter_time.lock().unwrap_or_else(|p| p.into_inner()).clone();
        e.histogram("vpd_worker_filter_seconds", "Time each frame spent in its filter chain.", LATENCY_BOUNDS, &filter);
        e.single(
            Kind::Gauge,
            "vpd_worker_tasks_in_hand",
            "Tasks taken from RabbitMQ and not yet acked.",
            get(&self.in_hand),
        );
        let up = f64::from(u8::from(self.connected.load(Ordering::Relaxed)));
        e.single(Kind::Gauge, "vpd_worker_broker_connected", "1 while the connection to RabbitMQ is up.", up);
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_in_the_exposition() {
        let s = WorkerStats::default();
        s.processed();
        s.processed();
        s.retried();
        s.set_in_hand(3);
        s.filter_time(Duration::from_millis(20));
        let text = s.render();
        assert!(text.contains("\nvpd_worker_frames_processed_total 2\n"), "{text}");
        assert!(text.contains("\nvpd_worker_frames_retried_total 1\n"), "{text}");
        assert!(text.contains("\nvpd_worker_tasks_in_hand 3\n"), "{text}");
        assert!(text.contains("vpd_worker_filter_seconds_bucket{le=\"0.01\"} 0\n"), "{text}");
        assert!(text.contains("vpd_worker_filter_seconds_bucket{le=\"0.025\"} 1\n"), "{text}");
        assert!(text.contains("\nvpd_worker_filter_seconds_count 1\n"), "{text}");
    }
}

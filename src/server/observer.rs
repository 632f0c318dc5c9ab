//! What a running job's pipeline tells its driver: the latest progress, ten times a second at
//! most, and a thumbnail now and then, for the board, the store's record and attached clients.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opencv::core::Mat;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::clients::Pace;
use crate::media::thumbnail;
use crate::pipeline::{Observer, Progress};

/// Shortest time between two progress messages or events of a job.
pub(super) const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Shortest time between two thumbnails of a job.
pub(super) const THUMBNAIL_INTERVAL: Duration = Duration::from_millis(400);

/// Passes the pipeline's progress and a thumbnail now and then to the driver. Called from
/// pipeline threads: keeps only the latest progress, drops thumbnails nobody took yet.
pub(super) struct JobObserver {
    progress: watch::Sender<Progress>,
    thumbnails: mpsc::Sender<(u64, Vec<u8>)>,
    /// The index of the last thumbnail made.
    last_index: Mutex<Option<u64>>,
    last_progress: Mutex<Option<Instant>>,
    last_thumbnail: Mutex<Option<Instant>>,
    /// The client's frames-per-second limit, shared with its other jobs.
    pace: Option<Arc<Pace>>,
}

impl JobObserver {
    pub(super) fn new(
        progress: watch::Sender<Progress>,
        thumbnails: mpsc::Sender<(u64, Vec<u8>)>,
        pace: Option<Arc<Pace>>,
    ) -> Self {
        let (last_progress, last_thumbnail, last_index) = (Mutex::new(None), Mutex::new(None), Mutex::new(None));
        JobObserver { progress, thumbnails, last_index, last_progress, last_thumbnail, pace }
    }

    fn send_thumbnail(&self, index: u64, frame: &Mat) {
        match thumbnail(frame) {
            Ok(jpeg) => {
                if self.thumbnails.try_send((index, jpeg)).is_ok() {
                    *self.last_index.lock().unwrap_or_else(|p| p.into_inner()) = Some(index);
                }
            }
            Err(e) => warn!(error = %e, "cannot make a thumbnail"),
        }
    }
}

/// Whether `interval` has passed since `last`; if so, `last` becomes now.
pub(super) fn due(last: &Mutex<Option<Instant>>, interval: Duration) -> bool {
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_some_and(|t| t.elapsed() < interval) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

impl Observer for JobObserver {
    fn on_progress(&self, p: &Progress) {
        if due(&self.last_progress, PROGRESS_INTERVAL) {
            self.progress.send_replace(p.clone());
        }
    }

    fn on_frame(&self, index: u64, frame: &Mat) {
        // A client over its frames per second waits here, on the writer thread: the window
        // fills and the dispatch of its frames waits with it; other clients' jobs go on.
        if let Some(pace) = &self.pace {
            std::thread::sleep(pace.next_slot());
        }
        // One slot stays free for the last frame's.
        if self.thumbnails.capacity() > 1 && due(&self.last_thumbnail, THUMBNAIL_INTERVAL) {
            self.send_thumbnail(index, frame);
        }
    }

    fn on_segment(&self, last: u64, frames: u64, jpeg: &[u8]) {
        // The client's frames per second hold in segment mode too: its segments' commits wait,
        // and with them the segments sent after them.
        if let Some(pace) = &self.pace {
            let wait: Duration = (0..frames).map(|_| pace.next_slot()).max().unwrap_or_default();
            std::thread::sleep(wait);
        }
        if !jpeg.is_empty() && self.thumbnails.try_send((last, jpeg.to_vec())).is_ok() {
            *self.last_index.lock().unwrap_or_else(|p| p.into_inner()) = Some(last);
        }
    }

    fn on_last_frame(&self, index: u64, frame: &Mat) {
        // The dashboard of a finished job shows its last frame.
        if *self.last_index.lock().unwrap_or_else(|p| p.into_inner()) != Some(index) {
            self.send_thumbnail(index, frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_let_one_through_per_interval() {
        let last = Mutex::new(None);
        assert!(due(&last, Duration::from_secs(60)));
        assert!(!due(&last, Duration::from_secs(60)), "the second within the interval waits");
        assert!(due(&last, Duration::ZERO));
    }
}

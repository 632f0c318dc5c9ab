//! What a running job's pipeline tells its driver: the latest progress, ten times a second at
//! most, and a thumbnail now and then, for the board, the store's record and attached clients.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opencv::core::Mat;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::clients::Pace;
use crate::pipeline::{Observer, Progress};

/// Shortest time between two progress messages or events of a job.
pub(super) const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Shortest time between two thumbnails of a job.
pub(super) const THUMBNAIL_INTERVAL: Duration = Duration::from_millis(400);

/// Thumbnails are at most this wide.
pub(super) const THUMBNAIL_WIDTH: i32 = 320;

/// JPEG quality of thumbnails.
pub(super) const THUMBNAIL_QUALITY: i32 = 75;

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

    fn on_last_frame(&self, index: u64, frame: &Mat) {
        // The dashboard of a finished job shows its last frame.
        if *self.last_index.lock().unwrap_or_else(|p| p.into_inner()) != Some(index) {
            self.send_thumbnail(index, frame);
        }
    }
}

/// `frame` scaled down to at most [`THUMBNAIL_WIDTH`] pixels wide, as a JPEG.
pub(super) fn thumbnail(frame: &Mat) -> opencv::Result<Vec<u8>> {
    use opencv::core::{Size, Vector};
    use opencv::imgcodecs::{IMWRITE_JPEG_QUALITY, imencode};
    use opencv::imgproc::{INTER_AREA, resize};
    use opencv::prelude::*;

    let (w, h) = (frame.cols().max(1), frame.rows().max(1));
    let mut small = Mat::default();
    let scaled = if w > THUMBNAIL_WIDTH {
        let height = (i64::from(h) * i64::from(THUMBNAIL_WIDTH) / i64::from(w)).max(1) as i32;
        resize(frame, &mut small, Size::new(THUMBNAIL_WIDTH, height), 0.0, 0.0, INTER_AREA)?;
        &small
    } else {
        frame
    };
    let mut jpeg = Vector::<u8>::new();
    imencode(".jpg", scaled, &mut jpeg, &Vector::from_slice(&[IMWRITE_JPEG_QUALITY, THUMBNAIL_QUALITY]))?;
    Ok(jpeg.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_are_small_jpegs_of_the_same_aspect() {
        use opencv::core::{CV_8UC3, Scalar};
        use opencv::prelude::*;
        let frame = Mat::new_rows_cols_with_default(720, 1280, CV_8UC3, Scalar::new(10.0, 200.0, 30.0, 0.0)).unwrap();
        let jpeg = thumbnail(&frame).unwrap();
        assert_eq!(&jpeg[..3], &[0xff, 0xd8, 0xff]);
        let back =
            opencv::imgcodecs::imdecode(&opencv::core::Vector::from_slice(&jpeg), opencv::imgcodecs::IMREAD_COLOR)
                .unwrap();
        assert_eq!((back.cols(), back.rows()), (320, 180));
    }

    #[test]
    fn rate_limits_let_one_through_per_interval() {
        let last = Mutex::new(None);
        assert!(due(&last, Duration::from_secs(60)));
        assert!(!due(&last, Duration::from_secs(60)), "the second within the interval waits");
        assert!(due(&last, Duration::ZERO));
    }
}

//! What starts a clip under `--record-on`: a detector run on each frame dispatched, apart from
//! the filter chain, on a small copy of the source frame.
//!
//! Motion compares a frame with the one dispatched before it (not the frame before it in the
//! stream: a dropped frame is never seen), downscaled to at most 320 pixels across, with
//! the `motion` filter's own detector and defaults. Faces run the `faces` filter's detector at
//! most 5 times a second of stream time; a frame between two looks keeps the
//! last answer.

use std::sync::Arc;

use opencv::core::{Mat, Size};
use opencv::imgproc;
use opencv::prelude::*;
use serde::{Deserialize, Serialize};

use crate::filters::{FaceDetector, FacesParams, FilterEnv, FilterParams, MotionParams, MotionScratch, detect_motion};
use crate::media::clips::Marks;

/// Width the motion detector looks at, at most: a few hundred microseconds a frame.
const WIDTH: i32 = 320;

/// Face detections a second, at most (the cascade takes tens of milliseconds on a frame).
const FACES_PER_SECOND: f64 = 5.0;

/// The detector `--record-on` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RecordOn {
    /// Something moved since the frame before.
    Motion,
    /// A face is in the frame.
    Faces,
}

enum Detector {
    Motion { params: MotionParams, scratch: MotionScratch, previous: Option<Mat>, small: Mat },
    Faces { detector: Box<FaceDetector>, last_look: Option<f64>, seen: bool },
}

/// Marks each frame dispatched: whether the detector fired on it.
pub struct Trigger {
    detector: Detector,
    marks: Arc<Marks>,
}

impl Trigger {
    /// A trigger on `on`, marking into `marks`; faces need `env`'s cascade.
    pub fn new(on: RecordOn, env: &FilterEnv, marks: Arc<Marks>) -> anyhow::Result<Self> {
        let detector = match on {
            RecordOn::Motion => Detector::Motion {
                params: MotionParams::defaults(),
                scratch: MotionScratch::default(),
                previous: None,
                small: Mat::default(),
            },
            RecordOn::Faces => Detector::Faces {
                detector: Box::new(FaceDetector::new(&FacesParams::defaults(), &env.face_cascade)?),
                last_look: None,
                seen: false,
            },
        };
        Ok(Trigger { detector, marks })
    }

    /// Looks at `frame` (at `time` seconds of the stream, if known) and marks it.
    pub fn observe(&mut self, frame: &Mat, time: Option<f64>) -> anyhow::Result<()> {
        let fired = match &mut self.detector {
            Detector::Motion { params, scratch, previous, small } => {
                let scale = (f64::from(WIDTH) / f64::from(frame.cols().max(1))).min(1.0);
                let size = Size::new(
                    ((f64::from(frame.cols()) * scale).round() as i32).max(1),
                    ((f64::from(frame.rows()) * scale).round() as i32).max(1),
                );
                imgproc::resize(frame, small, size, 0.0, 0.0, imgproc::INTER_AREA)?;
                // The smallest region counts in the full frame's pixels.
                let p =
                    MotionParams { min_area: ((f64::from(params.min_area) * scale * scale).round() as u32), ..*params };
                let fired = match previous.as_ref() {
                    Some(before) if before.size()? == small.size()? => {
                        !detect_motion(before, small, &p, scratch)?.is_empty()
                    }
                    _ => false,
                };
                *previous = Some(small.clone());
                fired
            }
            Detector::Faces { detector, last_look, seen } => {
                let due = match (time, *last_look) {
                    (Some(t), Some(last)) => t - last >= 1.0 / FACES_PER_SECOND || t < last,
                    _ => true,
                };
                if due {
                    *seen = !detector.detect(frame)?.is_empty();
                    *last_look = time;
                }
                *seen
            }
        };
        self.marks.push(fired);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use opencv::core::{CV_8UC3, Rect, Scalar};

    use super::*;
    use crate::filters::test_support::astronaut;

    fn marks_of(on: RecordOn, frames: &[(Mat, f64)]) -> Vec<bool> {
        let marks = Arc::new(Marks::default());
        let mut trigger = Trigger::new(on, &FilterEnv::default(), marks.clone()).unwrap();
        for (frame, time) in frames {
            trigger.observe(frame, Some(*time)).unwrap();
        }
        (0..frames.len()).map(|_| marks.pop()).collect()
    }

    /// A 1280x720 grey frame with a white square at `x`.
    fn square_at(x: i32) -> Mat {
        let mut m = Mat::new_rows_cols_with_default(720, 1280, CV_8UC3, Scalar::all(90.0)).unwrap();
        imgproc::rectangle(&mut m, Rect::new(x, 300, 120, 120), Scalar::all(255.0), -1, imgproc::LINE_8, 0).unwrap();
        m
    }

    #[test]
    fn motion_fires_on_a_frame_that_moved_from_the_one_before_and_not_on_a_still_one() {
        let frames = [(square_at(100), 0.0), (square_at(100), 0.04), (square_at(300), 0.08), (square_at(300), 0.12)];
        assert_eq!(marks_of(RecordOn::Motion, &frames), [false, false, true, false]);
    }

    #[test]
    fn faces_fire_on_a_face_and_hold_the_answer_between_looks() {
        let face = astronaut();
        let blank = Mat::new_rows_cols_with_default(512, 512, CV_8UC3, Scalar::all(90.0)).unwrap();
        // Looks at 0 s and 0.2 s; the frame at 0.1 s keeps 0 s's answer, face or not.
        let frames = [(face.clone(), 0.0), (blank.clone(), 0.1), (blank.clone(), 0.2), (face.clone(), 0.25)];
        assert_eq!(marks_of(RecordOn::Faces, &frames), [true, true, false, false]);
    }
}

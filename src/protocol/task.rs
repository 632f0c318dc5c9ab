//! A frame's trip through a transport: [`FrameTask`] out, [`FrameResult`] back.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opencv::core::Mat;
use opencv::prelude::*;

pub use crate::metrics::WorkerId;

/// A decoded frame, shared without copying between the task that filters it, the next frame's
/// task (as `motion`'s previous frame) and the pipeline (which writes it if filtering fails).
pub type Frame = Arc<Mat>;

/// One frame to filter.
pub struct FrameTask {
    /// Position of the frame in the video, from 0.
    pub index: u64,
    /// The source frame.
    pub frame: Frame,
    /// The source frame before it, when the chain needs it (`motion`) and there is one.
    pub previous: Option<Frame>,
}

/// What filtering a frame gave.
pub enum FrameOutcome {
    /// The filtered frame.
    Processed(Mat),
    /// The chain failed on this frame; the pipeline writes the original instead.
    Failed(String),
}

/// The result of one [`FrameTask`].
pub struct FrameResult {
    /// The task's frame index.
    pub index: u64,
    /// The filtered frame, or why there is none.
    pub outcome: FrameOutcome,
    /// Time spent in the filter chain.
    pub filter_time: Duration,
    /// Who did the work.
    pub worker: WorkerId,
    /// Extra deliveries the frame needed before this result (redelivery, re-dispatch, retry).
    pub retries: u32,
}

/// Which frame of which job a broker message is about, as its AMQP correlation id
/// (`job:index`): a task and its result carry the same one. It routes a message without opening
/// its body; the body's header repeats it, and a body under another frame's id is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Correlation {
    /// The job's id.
    pub job: String,
    /// The frame's index.
    pub index: u64,
}

impl Correlation {
    /// Frame `index` of `job`.
    pub fn new(job: impl Into<String>, index: u64) -> Self {
        Correlation { job: job.into(), index }
    }
}

impl fmt::Display for Correlation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.job, self.index)
    }
}

impl std::str::FromStr for Correlation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.rsplit_once(':') {
            Some((job, index)) if !job.is_empty() => match index.parse() {
                Ok(index) => Ok(Correlation::new(job, index)),
                Err(_) => Err(format!("correlation id '{s}' has no frame index")),
            },
            _ => Err(format!("correlation id '{s}' is not job:index")),
        }
    }
}

/// Prints a frame as `<1280x720 bgr, 2.6 MB>`: logs never carry pixels.
pub struct FrameShape<'a>(pub &'a Mat);

impl fmt::Display for FrameShape<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        let kind = match m.channels() {
            1 => "grey",
            3 => "bgr",
            _ => "other",
        };
        let bytes = m.total() * m.elem_size().unwrap_or(0);
        write!(f, "<{}x{} {kind}, {:.1} MB>", m.cols(), m.rows(), bytes as f64 / 1e6)
    }
}

impl fmt::Debug for FrameTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameTask")
            .field("index", &self.index)
            .field("frame", &format_args!("{}", FrameShape(&self.frame)))
            .field("previous", &self.previous.as_ref().map(|p| format!("{}", FrameShape(p))))
            .finish()
    }
}

impl fmt::Debug for FrameOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameOutcome::Processed(m) => write!(f, "Processed({})", FrameShape(m)),
            FrameOutcome::Failed(e) => write!(f, "Failed({e:?})"),
        }
    }
}

impl fmt::Debug for FrameResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameResult")
            .field("index", &self.index)
            .field("outcome", &self.outcome)
            .field("filter_time", &self.filter_time)
            .field("worker", &self.worker)
            .field("retries", &self.retries)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core::{CV_8UC3, Scalar};

    #[test]
    fn correlation_ids_round_trip_and_refuse_what_is_not_job_index() {
        let c: Correlation = "j0123:42".parse().unwrap();
        assert_eq!(c, Correlation::new("j0123", 42));
        assert_eq!(c.to_string(), "j0123:42");
        // A job id may hold colons; the index is after the last one.
        assert_eq!("a:b:7".parse::<Correlation>().unwrap(), Correlation::new("a:b", 7));
        for bad in ["", "j1", ":3", "j1:", "j1:x", "j1:-1"] {
            assert!(bad.parse::<Correlation>().is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_never_prints_pixels() {
        let m = Mat::new_rows_cols_with_default(720, 1280, CV_8UC3, Scalar::all(7.0)).unwrap();
        let task = FrameTask { index: 3, frame: Arc::new(m), previous: None };
        let s = format!("{task:?}");
        assert_eq!(s, "FrameTask { index: 3, frame: <1280x720 bgr, 2.8 MB>, previous: None }");
    }
}

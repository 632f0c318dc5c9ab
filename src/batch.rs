//! A batch's report: how each input ended and the totals, whatever ran the jobs (`vpd run`
//! one after another, `vpd client` several at once).

use std::path::Path;

use serde::Serialize;

use crate::metrics::JobSummary;

/// How one input of a batch ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchRow {
    /// The input file.
    pub input: String,
    /// Its output file.
    pub output: String,
    /// `done`, `skipped` (its output was there already), `failed`, `cancelled` or `not started`.
    pub outcome: &'static str,
    /// Frames written.
    pub frames: Option<u64>,
    /// Frames per second of wall time.
    pub fps: Option<f64>,
    /// Frames written unchanged because their filters failed.
    pub failed_frames: Option<u64>,
    /// The output's size in bytes.
    pub output_bytes: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A batch's report: a row per input, in order.
#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    /// The inputs.
    pub files: Vec<BatchRow>,
    /// Inputs done, skipped, failed, cancelled or not started.
    pub done: usize,
    /// Inputs whose output was complete already.
    pub skipped: usize,
    /// Inputs that failed.
    pub failed: usize,
    /// Inputs cancelled or never started (Ctrl-C).
    pub cancelled: usize,
    /// Frames written in all.
    pub frames: u64,
    /// Wall time of the batch.
    pub wall_seconds: f64,
}

impl BatchReport {
    /// Whether every input is done or was done before.
    pub fn all_ok(&self) -> bool {
        self.failed == 0 && self.cancelled == 0
    }
    /// The report of `rows`, in input order, for a batch that took `wall_seconds`.
    pub fn new(rows: Vec<BatchRow>, wall_seconds: f64) -> Self {
        let count = |outcomes: &[&str]| rows.iter().filter(|r| outcomes.contains(&r.outcome)).count();
        BatchReport {
            done: count(&["done"]),
            skipped: count(&["skipped"]),
            failed: count(&["failed"]),
            cancelled: count(&["cancelled", "not started"]),
            frames: rows.iter().filter_map(|r| r.frames).sum(),
            wall_seconds,
            files: rows,
        }
    }
}

impl BatchRow {
    /// The row of `input` into `output` that ended as `outcome`, with no numbers.
    pub fn new(input: String, output: &Path, outcome: &'static str, error: Option<String>) -> Self {
        BatchRow {
            input,
            output: output.display().to_string(),
            outcome,
            frames: None,
            fps: None,
            failed_frames: None,
            output_bytes: None,
            error,
        }
    }

    /// An input whose output was complete already: left as it is.
    pub fn skipped(input: String, output: &Path) -> Self {
        BatchRow { output_bytes: Self::bytes(output), ..Self::new(input, output, "skipped", None) }
    }

    /// An input done, with its summary's numbers.
    pub fn done(input: String, output: &Path, s: &JobSummary) -> Self {
        BatchRow {
            frames: Some(s.frames),
            fps: Some(s.fps),
            failed_frames: Some(s.failed_frames),
            output_bytes: Self::bytes(output),
            ..Self::new(input, output, "done", None)
        }
    }

    /// Whether `output` is a whole output already (outputs appear only once complete).
    pub fn is_complete(output: &Path) -> bool {
        std::fs::metadata(output).is_ok_and(|m| m.is_file())
    }

    fn bytes(output: &Path) -> Option<u64> {
        std::fs::metadata(output).ok().map(|m| m.len())
    }
}

//! A job's record as the job store keeps it and the protocol carries it (`vpd jobs`).

use serde::{Deserialize, Serialize};

use crate::metrics::JobSummary;

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted, waiting for its upload.
    Uploading,
    /// Uploaded, waiting for a job slot.
    Queued,
    /// Frames are being processed.
    Running,
    /// Stopped by `vpd jobs pause`: no frames in flight, no job slot; `resume` goes on.
    Paused,
    /// Finished; the result is kept for `--keep-results`.
    Done,
    /// Failed; `error` says why.
    Failed,
    /// Cancelled by its client or by the server shutting down.
    Cancelled,
}

impl JobState {
    /// Its name in the store and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Uploading => "uploading",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Paused => "paused",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The state named `s`; an unknown name reads as failed.
    pub fn parse(s: &str) -> JobState {
        match s {
            "uploading" => JobState::Uploading,
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "paused" => JobState::Paused,
            "done" => JobState::Done,
            "cancelled" => JobState::Cancelled,
            _ => JobState::Failed,
        }
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Cancelled)
    }
}

/// One state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// The state entered.
    pub state: JobState,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// Everything recorded of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its id.
    pub id: String,
    /// Where it stands.
    pub state: JobState,
    /// When it was accepted (ms since the Unix epoch).
    pub created_ms: i64,
    /// When it last changed.
    pub updated_ms: i64,
    /// Every state it went through, in order.
    pub transitions: Vec<Transition>,
    /// The client's address.
    pub peer: String,
    /// The client as its token names it, and its software: `alice (vpd/0.1.0)`.
    pub client: String,
    /// The input's name, size and sha256 (once uploaded).
    pub input_name: String,
    /// The upload's size.
    pub input_bytes: u64,
    /// The upload's sha256, hex, once it is whole.
    pub input_sha256: Option<String>,
    /// The filter chain.
    pub chain: String,
    /// The output options (codec, quality, …), as the client sent them.
    pub output_options: serde_json::Value,
    /// The output container.
    pub container: String,
    /// The result's size.
    pub output_bytes: Option<u64>,
    /// Frames written.
    pub frames: Option<u64>,
    /// Frames written unchanged because their filters failed.
    pub failed_frames: Option<u64>,
    /// Redeliveries, re-dispatches and retries.
    pub retries: Option<u64>,
    /// The summary the client printed (frames per worker included).
    pub summary: Option<JobSummary>,
    /// Why it failed.
    pub error: Option<String>,
    /// Times a restarted server resumed it from its committed segments.
    #[serde(default)]
    pub resumes: u32,
    /// Segments committed (of a job not yet done).
    #[serde(default)]
    pub committed_frames: u64,
    /// The job this one reruns.
    #[serde(default)]
    pub rerun_of: Option<String>,
    /// When its upload and result were removed (`--keep-results`, `--max-stored`).
    #[serde(default)]
    pub removed_ms: Option<i64>,
    /// How frames travel to workers.
    #[serde(default)]
    pub transport: String,
}

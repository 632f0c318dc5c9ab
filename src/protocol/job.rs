//! The job: its id, what it is ([`JobSpec`]), where it stands ([`JobState`]), what can be done
//! to it ([`JobControl`]) and everything recorded of it ([`JobRecord`]). One definition of
//! each, shared by the command line, the protocol, the server, the job store and the board.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::filters::Chain;
use crate::media::OutputOptions;
use crate::media::clips::ClipRecord;
use crate::metrics::JobSummary;
use crate::protocol::segment::Split;
use crate::protocol::wire::TransportEncoding;

/// A job's id: `j` and 12 hex digits for the jobs a server makes; any 1 to 64 ASCII letters,
/// digits, `-` and `_` are read, so that an id is always safe as a file name and a log field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

/// The longest id read.
const MAX_ID_LEN: usize = 64;

impl JobId {
    /// A new id, random per process and job.
    pub fn new() -> JobId {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEQ: AtomicU64 = AtomicU64::new(0);
        // RandomState is seeded from the OS per process; the sequence number separates jobs.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        JobId(format!("j{:012x}", h.finish() & 0xffff_ffff_ffff))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for JobId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fits = !s.is_empty()
            && s.len() <= MAX_ID_LEN
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if fits { Ok(JobId(s.to_string())) } else { Err(format!("'{s}' is not a job id (as `vpd jobs` lists them)")) }
    }
}

impl TryFrom<String> for JobId {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl std::borrow::Borrow<str> for JobId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// What a job is: what its client submitted, and whose it is. Recorded whole when the job is
/// accepted; a restarted server opens the job again from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The filters (checked as they are read, like every chain).
    pub chain: Chain,
    /// How the result is encoded: codec, quality, preset, … (the encoder is checked to exist
    /// as they are read).
    pub output: OutputOptions,
    /// The result's container extension (`mp4`, `mkv`, …), from the client's output path.
    pub container: String,
    /// How frames travel to remote workers (`auto`, `raw`, `lz4`, `jpeg:90`).
    pub transport: TransportEncoding,
    /// Frames or segments to the workers (`auto`: the server picks).
    #[serde(default)]
    pub split: Split,
    /// The input file's name, as the client gave it: for logs, messages and as a container hint.
    pub input_name: String,
    /// The upload's exact size, in bytes.
    pub input_bytes: u64,
    /// The client it is counted against: its name in the tokens file (`anonymous` without
    /// tokens). Set by the server from the token, never taken from the client.
    #[serde(default)]
    pub client: String,
    /// A live stream, relayed as it comes (`input_bytes` is then 0: no size is announced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveSpec>,
}

/// What a live job asks for beyond a file's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveSpec {
    /// The most a frame may wait, from its packet read to its encoded packet written, before
    /// newer frames take its place (`--max-latency`), in milliseconds.
    pub max_latency_ms: u64,
}

/// What a client may do to a job, from `vpd jobs ACTION JOB` to the server's handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobControl {
    /// `cancel` (its help: [`JobControl::help`], which `vpd jobs --help` shows).
    Cancel,
    /// `pause`.
    Pause,
    /// `resume`.
    Resume,
    /// `rerun`.
    Rerun,
    /// `fetch`.
    Fetch,
}

impl JobControl {
    /// Every control, in the order `--help` lists them.
    pub const ALL: [JobControl; 5] =
        [JobControl::Cancel, JobControl::Pause, JobControl::Resume, JobControl::Rerun, JobControl::Fetch];

    /// Its name on the command line and the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            JobControl::Cancel => "cancel",
            JobControl::Pause => "pause",
            JobControl::Resume => "resume",
            JobControl::Rerun => "rerun",
            JobControl::Fetch => "fetch",
        }
    }

    /// One line of help: the one description of what the control does.
    pub fn help(self) -> &'static str {
        match self {
            JobControl::Cancel => "Cancel a queued, running or paused job (its client is told, as for its own Ctrl-C)",
            JobControl::Pause => {
                "Pause a queued or running job: nothing of it stays in flight and its job slot is freed; frames \
                 after its last committed segment are done again on resume"
            }
            JobControl::Resume => {
                "Let a paused job go on, or a failed one (a full disk, say) from its committed segments"
            }
            JobControl::Rerun => "Run an ended job again on its kept upload, as a new job; prints the new job's id",
            JobControl::Fetch => "Download an ended job's kept result",
        }
    }
}

impl fmt::Display for JobControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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

    /// The state named `s` (as [`JobState::as_str`] writes it); an unknown name reads as failed.
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

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
    pub id: JobId,
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
    /// The client's software (`vpd/0.1.0`), as its hello said.
    pub software: String,
    /// What the job is, its client's name included.
    #[serde(flatten)]
    pub spec: JobSpec,
    /// The upload's sha256, hex, once it is whole.
    pub input_sha256: Option<String>,
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
    pub rerun_of: Option<JobId>,
    /// When its upload and result were removed (`--keep-results`, `--max-stored`).
    #[serde(default)]
    pub removed_ms: Option<i64>,
    /// The clips a `--record-on` job wrote, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clips: Vec<ClipRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_safe_file_names() {
        let id = JobId::new();
        assert_eq!(id.as_str().len(), 13);
        assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
        assert_ne!(JobId::new(), JobId::new());
        for bad in ["", "../etc", "a/b", "j 1", &"x".repeat(65)] {
            assert!(bad.parse::<JobId>().is_err(), "{bad:?}");
            assert!(serde_json::from_str::<JobId>(&format!("{bad:?}")).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_record_reads_as_flat_json_with_its_spec() {
        let spec = JobSpec {
            chain: "blur:ksize=5".parse().unwrap(),
            output: OutputOptions::default(),
            container: "mp4".into(),
            transport: TransportEncoding::Auto,
            split: Split::Auto,
            input_name: "in.mp4".into(),
            input_bytes: 12,
            client: "alice".into(),
            live: None,
        };
        let record = JobRecord {
            id: "j1".parse().unwrap(),
            state: JobState::Queued,
            created_ms: 1,
            updated_ms: 2,
            transitions: vec![],
            peer: "127.0.0.1".into(),
            software: "vpd/0.1.0".into(),
            spec,
            input_sha256: None,
            output_bytes: None,
            frames: None,
            failed_frames: None,
            retries: None,
            summary: None,
            error: None,
            resumes: 0,
            committed_frames: 0,
            rerun_of: None,
            removed_ms: None,
            clips: vec![],
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["client"], "alice");
        assert_eq!(json["chain"], "blur:ksize=5:sigma=0");
        assert_eq!(json["state"], "queued");
        assert!(json.get("clips").is_none(), "a job of no clips says nothing of them");
        assert_eq!(serde_json::from_value::<JobRecord>(json).unwrap(), record);
    }
}

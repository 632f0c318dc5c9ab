//! Segment tasks, their results and their progress as message bodies (postcard), and how a job
//! is split (`--split`).
//!
//! ```text
//! segment task:     version, job, chain, output options, container, output size, SegmentInput
//!                   (the segment's compressed packets and how to decode them)
//! segment result:   version, job, number, worker, retries, and either the segment file's bytes
//!                   with its frame count, filter time and a small JPEG, or why it failed
//! segment progress: version, job, number, worker, frames done so far
//! ```
//!
//! The correlation id is `job:number`, with the message's kind (its AMQP `type`)
//! telling a segment from a frame. Every body's length is checked against a bound before it is
//! parsed, and postcard allocates nothing its input does not hold.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::filters::Chain;
use crate::media::OutputOptions;
use crate::media::packets::SegmentInput;

/// Version of the segment bodies; a worker refuses bodies of another (2: the part of Canny an
/// `edges` step runs, in the chain).
pub const SEGMENT_VERSION: u8 = 2;

/// The largest segment task a worker reads: RabbitMQ 3's default `max_message_size`. The
/// server keeps its tasks under its own `--max-message`, 8 MiB unless set.
pub const MAX_TASK_BYTES: usize = 128 << 20;

/// How a job's frames reach the workers (`--split`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Segments when the input has at least [`AUTO_MIN_SEGMENTS`] and can be cut as packets,
    /// frames otherwise. The default.
    #[default]
    Auto,
    /// Every frame decoded by the server and sent as pixels.
    Frames,
    /// Segments of compressed packets that workers decode, filter and encode.
    Segments,
}

/// Segments an input needs for `auto` to choose segment mode.
pub const AUTO_MIN_SEGMENTS: u64 = 3;

impl Split {
    /// Its name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Auto => "auto",
            Split::Frames => "frames",
            Split::Segments => "segments",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Split::Auto),
            "frames" => Ok(Split::Frames),
            "segments" => Ok(Split::Segments),
            _ => Err(format!("unknown split '{s}' (use auto, frames or segments)")),
        }
    }
}

/// One segment to decode, filter and encode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentTask {
    /// [`SEGMENT_VERSION`].
    pub version: u8,
    /// The job.
    pub job: String,
    /// The filters.
    pub chain: Chain,
    /// The job's encoder settings.
    pub output: OutputOptions,
    /// The output's container extension (`mp4`, `mkv`, …): the encoder is opened for it.
    pub container: String,
    /// The frames' size after the filters, where they change it.
    pub size: Option<(u32, u32)>,
    /// The largest result to put in one message: a larger one goes on a stream of its own,
    /// and a [`SegmentRef`] to it is the reply.
    pub max_message: u64,
    /// The segment's packets and how to decode them.
    pub input: SegmentInput,
}

/// A segment task too large for one message: it lies in `parts` messages on the stream
/// `blob`, and the worker reads it from there. The reference is signed like every task, and
/// carries the task's SHA-256, so the parts need no signature of their own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentRef {
    /// [`SEGMENT_VERSION`].
    pub version: u8,
    /// The job.
    pub job: String,
    /// The segment's number.
    pub number: u64,
    /// The stream.
    pub blob: String,
    /// Its messages.
    pub parts: u32,
    /// The task's length in bytes.
    pub len: u64,
    /// The task's SHA-256.
    pub sha256: [u8; 32],
}

impl Versioned for SegmentRef {
    fn version(&self) -> u8 {
        self.version
    }
}

/// What became of a segment task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SegmentOutcome {
    /// The segment, encoded.
    Encoded {
        /// The segment file's bytes.
        file: Vec<u8>,
        /// Frames in it.
        frames: u64,
        /// Time in the filter chain, all its frames together, in microseconds.
        filter_us: u64,
        /// Its last filtered frame as a small JPEG, for the dashboards.
        thumbnail: Vec<u8>,
    },
    /// The chain, the decoder or the encoder failed; why.
    Failed(String),
}

/// The result of one [`SegmentTask`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentResult {
    /// [`SEGMENT_VERSION`].
    pub version: u8,
    /// The job.
    pub job: String,
    /// The segment's number.
    pub number: u64,
    /// Who did it (`hostname:pid`).
    pub worker: String,
    /// Extra deliveries the segment needed before this result.
    pub retries: u32,
    /// The segment or the failure.
    pub outcome: SegmentOutcome,
}

/// A worker's word on how far into a segment it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentProgress {
    /// [`SEGMENT_VERSION`].
    pub version: u8,
    /// The job.
    pub job: String,
    /// The segment's number.
    pub number: u64,
    /// Who is doing it.
    pub worker: String,
    /// Its frames filtered so far.
    pub done: u64,
}

/// Why a segment body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SegmentWireError {
    /// Over the bound for its kind.
    #[error("a {0}-byte segment message is over the {1}-byte limit")]
    TooLarge(usize, usize),
    /// Not a body of this kind.
    #[error("malformed segment message: {0}")]
    Malformed(String),
    /// Another version.
    #[error("segment message version {0}, this vpd reads version {SEGMENT_VERSION}")]
    Version(u8),
}

/// Serialises a body.
pub fn encode<T: Serialize>(body: &T) -> Vec<u8> {
    postcard::to_stdvec(body).expect("segment bodies serialise")
}

/// Reads a body of at most `limit` bytes.
pub fn decode<'a, T: Deserialize<'a> + Versioned>(bytes: &'a [u8], limit: usize) -> Result<T, SegmentWireError> {
    if bytes.len() > limit {
        return Err(SegmentWireError::TooLarge(bytes.len(), limit));
    }
    // The version is the first byte of each body: checked before the rest is parsed, so that a
    // body of another version says so rather than failing to parse.
    match bytes.first() {
        Some(&v) if v != SEGMENT_VERSION => return Err(SegmentWireError::Version(v)),
        None => return Err(SegmentWireError::Malformed("empty".into())),
        _ => {}
    }
    let body: T = postcard::from_bytes(bytes).map_err(|e| SegmentWireError::Malformed(e.to_string()))?;
    debug_assert_eq!(body.version(), SEGMENT_VERSION);
    Ok(body)
}

/// A body that starts with its version.
pub trait Versioned {
    /// Its version field.
    fn version(&self) -> u8;
}

impl Versioned for SegmentTask {
    fn version(&self) -> u8 {
        self.version
    }
}

impl Versioned for SegmentResult {
    fn version(&self) -> u8 {
        self.version
    }
}

impl Versioned for SegmentProgress {
    fn version(&self) -> u8 {
        self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress() -> SegmentProgress {
        SegmentProgress { version: SEGMENT_VERSION, job: "j1".into(), number: 4, worker: "w:1".into(), done: 12 }
    }

    #[test]
    fn bodies_round_trip_and_are_checked_before_they_are_parsed() {
        let body = encode(&progress());
        assert_eq!(decode::<SegmentProgress>(&body, 1024).unwrap(), progress());
        let err = decode::<SegmentProgress>(&body, 4).unwrap_err().to_string();
        assert_eq!(err, format!("a {}-byte segment message is over the 4-byte limit", body.len()));
        let mut other = body.clone();
        other[0] = 9;
        assert_eq!(
            decode::<SegmentProgress>(&other, 1024).unwrap_err().to_string(),
            "segment message version 9, this vpd reads version 2"
        );
        assert!(decode::<SegmentProgress>(&body[..body.len() - 1], 1024).is_err(), "cut short");
        assert!(decode::<SegmentResult>(&[], 1024).is_err());
    }

    #[test]
    fn splits_read_as_typed() {
        for s in [Split::Auto, Split::Frames, Split::Segments] {
            assert_eq!(s.as_str().parse::<Split>().unwrap(), s);
        }
        assert_eq!("chunks".parse::<Split>().unwrap_err(), "unknown split 'chunks' (use auto, frames or segments)");
        assert_eq!(Split::default(), Split::Auto);
    }
}

//! The client ⇄ server conversation, one enum per direction.
//!
//! ```text
//! client                                   server
//!   Hello {protocol, token}        ──▶
//!                                  ◀──     Welcome {protocol, limits}   (or Error, then close)
//!   Submit {chain, output, …}      ──▶
//!                                  ◀──     Accepted {job}               (or Error)
//!   chunk, chunk, … (upload_bytes) ──▶
//!                                  ◀──     Started {frames, size, fps}
//!                                  ◀──     Progress {done, …}  (while frames are processed)
//!                                  ◀──     Done {summary, result_bytes}, then the result's chunks
//!   Cancel (any time after Submit) ──▶     Error {code: cancelled}
//! ```
//!
//! A live job (`Submit` with a spec's `live`) has no upload of known size: its stream goes
//! both ways at once, and its connection is the job's, for as long as it runs.
//!
//! ```text
//!   Submit {live, …}               ──▶
//!                                  ◀──     Accepted {job}, State {queued}…, State {running}
//!   chunk, chunk, … (as it comes)  ──▶     (from running on)
//!                                  ◀──     Started, then Progress and the result's chunks
//!                                          as they are encoded
//!   End (the input ended)          ──▶
//!                                  ◀──     the last chunks, then Done {summary, result_bytes: 0}
//! ```
//!
//! An upload cut off (the server killed, the connection lost) is kept: `ResumeUpload {job}`
//! from the same client is answered `UploadFrom {job, offset}`, and the chunks from that
//! offset on complete it, as after `Accepted`.
//!
//! A job belongs to the server once its upload is whole: a connection that ends leaves it
//! running. `Attach {job}` follows it again (`Accepted`, `Started`, progress, `Done` and the
//! result, as above). `Control {job, control}` changes a job (`cancel`, `pause`, `resume`,
//! `rerun`: `Changed` answers) or downloads an ended job's result (`fetch`: `Done`, then its
//! chunks). `List` and `Show` each get one answer.
//!
//! Control messages are JSON; the video travels as binary chunks (see [`super::codec`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::media::VideoInfo;
use crate::metrics::{JobSummary, Progress};
use crate::protocol::job::{JobControl, JobId, JobRecord, JobSpec, JobState};

/// The protocol version both sides must speak; bumped on any incompatible change (2: the
/// output options of `Submit`; 3: a typed chain and transport in `Submit`, one progress
/// snapshot in `Progress`; 4: `List`, `Show` and `CancelJob`, the job history; 5: durable
/// jobs: `Attach`, `Fetch`, `PauseJob`, `ResumeJob`, `RerunJob`, `State`, `expired`; 6: the
/// `rate_limited` code and an error's `retry_after_s`; 7: `ResumeUpload` and `UploadFrom`; 8: one
/// job model: `Submit` carries a [`JobSpec`], one `Control` message for every job control; 9:
/// live jobs: a spec's `live`, `End`, a progress snapshot's live counts).
pub const PROTOCOL_VERSION: u32 = 9;

/// A shared secret presented in the handshake. Never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Token(String);

impl Token {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Token(secret.into())
    }

    /// Compares in time independent of where the secrets differ, and of their lengths: their
    /// SHA-256 digests are compared whole.
    pub fn matches(&self, other: &Token) -> bool {
        use subtle::ConstantTimeEq as _;
        self.digest().ct_eq(&other.digest()).into()
    }

    /// The secret's SHA-256, what the server keeps and compares.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(self.0.as_bytes()).into()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Client → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First message on a connection.
    Hello {
        /// [`PROTOCOL_VERSION`] of the client.
        protocol: u32,
        /// `vpd/<version>`, for logs.
        client: String,
        /// The shared secret, when the server requires one.
        token: Option<Token>,
    },
    /// Starts a job; `input_bytes` of upload chunks follow. Its `client` is set by the server.
    Submit(Box<JobSpec>),
    /// Asks for the newest `limit` jobs of the server's history (`Jobs` answers).
    List {
        /// At most this many (the server caps it).
        limit: u32,
    },
    /// Asks for everything recorded of one job (`Job` answers, or `not_found`).
    Show {
        /// The job's id.
        job: JobId,
    },
    /// Applies a job control: `Changed` answers, or for `fetch` an ended job's result
    /// (`Done`, then its chunks).
    Control {
        /// The job's id.
        job: JobId,
        /// What to do.
        control: JobControl,
    },
    /// Follows a job: `Accepted`, then what a submitting client hears from `Started` on.
    Attach {
        /// The job's id.
        job: JobId,
    },
    /// Goes on with an upload that was cut off: `UploadFrom`, then the chunks from there.
    ResumeUpload {
        /// The job's id (from its `Accepted`).
        job: JobId,
        /// The whole upload's size, as submitted.
        upload_bytes: u64,
    },
    /// Stops the job; the server answers with an `Error` coded `cancelled`.
    Cancel,
    /// A live job's input ended (its client's Ctrl-C, or the stream's end): what is in flight
    /// is still processed and sent, then `Done`.
    End,
}

/// Why the server refused or ended something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Bad or missing token.
    Unauthorized,
    /// The client speaks another protocol version.
    VersionMismatch,
    /// A malformed, unexpected or invalid message (unknown filter, bad codec, …).
    BadRequest,
    /// Over a size limit (message, upload, frame).
    TooLarge,
    /// The upload is not a video the server can decode.
    BadInput,
    /// The job failed while running.
    JobFailed,
    /// The job was cancelled (by the client or a shutting-down server).
    Cancelled,
    /// The peer was too slow.
    Timeout,
    /// Too many connections (from the server's clients, or from this address): try later.
    Busy,
    /// The client is over one of its limits (jobs at once, uploads an hour); `retry_after_s`
    /// says when to try again.
    RateLimited,
    /// No such job (or no longer recorded).
    NotFound,
    /// The job's upload and result were removed (`--keep-results`, `--max-stored`).
    Expired,
    /// The job is not in a state that allows this (cancel an ended job, fetch a running one).
    Conflict,
    /// The server is shutting down; a job it holds goes on when it is back.
    Unavailable,
    /// Something broke on the server.
    Internal,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        f.write_str(&s)
    }
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The handshake succeeded.
    Welcome {
        /// The server's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// `vpd/<version>`.
        server: String,
        /// The largest upload the server accepts.
        max_upload_bytes: u64,
    },
    /// The submitted job was accepted; send the upload.
    Accepted {
        /// The job's id.
        job: JobId,
    },
    /// The server holds this much of an upload cut off: send the rest, from `offset`.
    UploadFrom {
        /// The job's id.
        job: JobId,
        /// Bytes the server holds, safely stored.
        offset: u64,
    },
    /// The upload decoded; processing starts.
    Started(VideoInfo),
    /// The job's numbers so far (the same snapshot job events carry).
    Progress(Progress),
    /// The server's history, newest first.
    Jobs {
        /// The jobs.
        jobs: Vec<JobRecord>,
    },
    /// One job's record.
    Job(Box<JobRecord>),
    /// A job control was applied: `job` is now `state` (for a rerun, `job` is the new job).
    Changed {
        /// The job's id.
        job: JobId,
        /// Where it stands now.
        state: JobState,
    },
    /// The attached job changed state: queued (waiting for a slot), paused, running again.
    State {
        /// Where it stands now.
        state: JobState,
    },
    /// The job finished; `result_bytes` of result chunks follow.
    Done {
        /// The job's report.
        summary: Box<JobSummary>,
        /// Exact size of the result that follows.
        result_bytes: u64,
    },
    /// Something went wrong; the server closes the connection after it.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// For humans.
        message: String,
        /// With `rate_limited`: seconds until the same request would pass (absent: not as it
        /// stands, or not a limit).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_s: Option<u64>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_print_and_compare_exactly() {
        let t = Token::new("hunter2");
        assert_eq!(format!("{t:?}"), "***");
        let hello = ClientMessage::Hello { protocol: 1, client: "vpd".into(), token: Some(t.clone()) };
        assert!(!format!("{hello:?}").contains("hunter2"));
        assert!(t.matches(&Token::new("hunter2")));
        assert!(!t.matches(&Token::new("hunter3")));
        assert!(!t.matches(&Token::new("hunter22")));
    }

    #[test]
    fn messages_are_tagged_json() {
        let m = ClientMessage::Cancel;
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"type":"cancel"}"#);
        let e = ServerMessage::Error { code: ErrorCode::VersionMismatch, message: "x".into(), retry_after_s: None };
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"type":"error","code":"version_mismatch","message":"x"}"#);
        assert_eq!(ErrorCode::TooLarge.to_string(), "too_large");
        let back: ServerMessage = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }
}

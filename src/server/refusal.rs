//! Why a connection ends early, as the client is told: a coded error, its message in the
//! client's terms (its own file's name, never a path on the server), and whether an upload
//! cut off this way is kept for resuming.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncRead;

use super::clients::RateLimited;
use crate::protocol::codec::{Packet, PacketReader, ProtocolError};
use crate::protocol::message::{ClientMessage, ErrorCode};

/// Why a connection ends early: sent to the client as an error, then the connection closes.
pub(super) struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after: Option<Duration>,
    /// An upload cut off this way is kept for its client to resume: the connection was lost
    /// or stalled, not refused.
    pub resumable: bool,
}

pub(super) fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal { code, message: message.into(), retry_after: None, resumable: false }
}

/// A cut-off upload its client may resume.
pub(super) fn lost(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal { resumable: true, ..refuse(code, message) }
}

impl From<RateLimited> for Refusal {
    fn from(r: RateLimited) -> Self {
        Refusal { code: ErrorCode::RateLimited, message: r.message, retry_after: r.retry_after, resumable: false }
    }
}

impl From<ProtocolError> for Refusal {
    fn from(e: ProtocolError) -> Self {
        let (code, lost_connection) = match e {
            ProtocolError::TooLarge { .. } => (ErrorCode::TooLarge, false),
            ProtocolError::WriteTimeout(_) | ProtocolError::Broken => (ErrorCode::Timeout, true),
            ProtocolError::Io(_) | ProtocolError::Truncated => (ErrorCode::Internal, true),
            ProtocolError::BadPacket(_) | ProtocolError::Malformed(_) => (ErrorCode::BadRequest, false),
        };
        Refusal { resumable: lost_connection, ..refuse(code, e.to_string()) }
    }
}

/// A pending connection closed to make room for a newer one.
pub(super) fn evicted() -> Refusal {
    Refusal {
        retry_after: Some(Duration::from_secs(1)),
        ..refuse(ErrorCode::Busy, "server busy: this connection waited too long for its handshake; try again")
    }
}

pub(super) fn internal_error(e: anyhow::Error) -> Refusal {
    refuse(ErrorCode::Internal, format!("the job store: {e:#}"))
}

/// Rewrites messages for the client: the server's paths become the names the client knows.
pub(super) struct Scrub {
    replacements: Vec<(String, String)>,
    work_dir: String,
}

impl Scrub {
    pub(super) fn new(work_dir: &Path, input: &Path, input_name: &str, output: &Path) -> Self {
        let input_name =
            Path::new(input_name).file_name().map_or("the upload".into(), |n| n.to_string_lossy().into_owned());
        Scrub {
            replacements: vec![
                (input.display().to_string(), input_name),
                (output.display().to_string(), "the result".into()),
            ],
            work_dir: work_dir.display().to_string(),
        }
    }

    pub(super) fn text(&self, message: &str) -> String {
        let mut text = message.to_string();
        for (from, to) in &self.replacements {
            text = text.replace(from.as_str(), to);
        }
        // Anything else under the work directory (an encoder's partial file): up to the next
        // separator it is one path, named by what it is for.
        while let Some(at) = text.find(&self.work_dir) {
            let end = text[at..].find([':', ' ', '\'', '"', ',']).map_or(text.len(), |n| at + n);
            text.replace_range(at..end, "the result");
        }
        text
    }

    pub(super) fn refusal(&self, r: Refusal) -> Refusal {
        Refusal { message: self.text(&r.message), ..r }
    }
}

pub(super) async fn read_within<R: AsyncRead + Unpin>(
    reader: &mut PacketReader<R>,
    limit: Duration,
    what: &str,
) -> Result<Option<Packet<ClientMessage>>, Refusal> {
    match tokio::time::timeout(limit, reader.read::<ClientMessage>()).await {
        Ok(frame) => Ok(frame?),
        Err(_) => Err(lost(ErrorCode::Timeout, format!("no {what} within {} s", limit.as_secs()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_to_clients_name_their_file_not_the_servers_paths() {
        let work = Path::new("/var/lib/vpd/work");
        let scrub = Scrub::new(work, &work.join("j1.in.mp4"), "holiday.mp4", &work.join("j1.out.mp4"));
        assert_eq!(scrub.text("/var/lib/vpd/work/j1.in.mp4: not a video file"), "holiday.mp4: not a video file");
        assert_eq!(
            scrub.text("cannot write /var/lib/vpd/work/.j1.out.mp4.vpd-partial-9-0.mp4: No space left on device"),
            "cannot write the result: No space left on device"
        );
        assert_eq!(
            scrub.text("/var/lib/vpd/work/j1.out.mp4: the encoder wrote 0 frames"),
            "the result: the encoder wrote 0 frames"
        );
    }
}

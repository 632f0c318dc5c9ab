//! A file served to a browser: `HEAD`, one `Range` (206, or 416 when it cannot be met), and a
//! `Content-Disposition` with a sanitised name (RFC 6266 and RFC 5987's `filename*`), so that
//! `<video>` can seek and a download keeps its name. The bytes are read off the runtime's
//! threads, a bounded few chunks ahead of the connection.

use std::io::{Read, Seek, SeekFrom};

use http_body_util::BodyExt as _;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::reply::{ChannelBody, Reply, body};

/// Bytes read at a time.
const CHUNK: usize = 256 << 10;
/// Chunks read ahead of the connection.
const AHEAD: usize = 4;

/// A file opened for serving: the open file keeps its bytes readable even if its job's
/// files are removed meanwhile.
#[derive(Debug)]
pub struct ServedFile {
    /// The open file.
    pub file: std::fs::File,
    /// Its length.
    pub len: u64,
    /// The name a download gets (any characters: it is sanitised here).
    pub name: String,
    /// Its media type.
    pub content_type: &'static str,
}

/// The media type of a container, by its extension.
pub fn content_type(container: &str) -> &'static str {
    match container.to_ascii_lowercase().as_str() {
        "mp4" | "m4v" => "video/mp4",
        "mov" => "video/quicktime",
        "mkv" => "video/x-matroska",
        "webm" => "video/webm",
        "avi" => "video/x-msvideo",
        "ts" | "mts" => "video/mp2t",
        "ogv" => "video/ogg",
        _ => "application/octet-stream",
    }
}

/// The part of a file a `Range` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranged {
    /// The whole file: no header, or one this server does not take (several ranges, another
    /// unit, a malformed one).
    Whole,
    /// Bytes `first..=last`.
    Part(u64, u64),
    /// A range past the end.
    Unsatisfiable,
}

/// One byte range of a file of `len` bytes, as `Range: bytes=…` asks.
pub fn range(header: Option<&str>, len: u64) -> Ranged {
    match parse_range(header, len) {
        Ok(Some((first, last))) => Ranged::Part(first, last),
        Ok(None) => Ranged::Whole,
        Err(Unsatisfiable) => Ranged::Unsatisfiable,
    }
}

struct Unsatisfiable;

fn parse_range(header: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return Ok(None) };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.is_empty(), last.is_empty()) {
        // The last N bytes.
        (true, false) => match last.parse::<u64>() {
            Ok(0) => return Err(Unsatisfiable),
            Ok(n) => (len.saturating_sub(n), len.checked_sub(1).ok_or(Unsatisfiable)?),
            Err(_) => return Ok(None),
        },
        (false, _) => {
            let Ok(first) = first.parse::<u64>() else { return Ok(None) };
            let last = if last.is_empty() { Some(u64::MAX) } else { last.parse::<u64>().ok() };
            let Some(last) = last else { return Ok(None) };
            if last < first {
                return Ok(None);
            }
            if first >= len {
                return Err(Unsatisfiable);
            }
            (first, last.min(len - 1))
        }
        (true, true) => return Ok(None),
    };
    Ok(Some(parsed))
}

/// `filename*=UTF-8''…` with everything but RFC 5987's attr-chars percent-encoded, and an
/// ASCII `filename` beside it for old clients.
pub fn disposition(kind: &str, name: &str) -> String {
    // Control characters, path separators and quotes never reach a header or a path.
    let clean: String =
        name.chars().map(|c| if c.is_control() || matches!(c, '/' | '\\' | '"') { '_' } else { c }).collect();
    let clean = clean.trim().trim_start_matches('.');
    let clean = if clean.is_empty() { "download" } else { clean };
    let ascii: String = clean.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '_' }).collect();
    const ATTR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'!')
        .remove(b'#')
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b'-')
        .remove(b'.')
        .remove(b'^')
        .remove(b'_')
        .remove(b'`')
        .remove(b'|')
        .remove(b'~');
    let encoded = percent_encoding::utf8_percent_encode(clean, ATTR);
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// Answers `request` (GET or HEAD, perhaps with a `Range`) with `file`. `?download=1` asks for
/// an attachment; otherwise it plays inline.
pub fn serve(file: ServedFile, request: &Request<Incoming>) -> Reply {
    let len = file.len;
    let asked = request.headers().get(header::RANGE).and_then(|v| v.to_str().ok());
    let download = request
        .uri()
        .query()
        .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "download" && v == "1"));
    let (status, first, last) = match range(asked, len) {
        Ranged::Part(first, last) => (StatusCode::PARTIAL_CONTENT, first, last),
        Ranged::Whole => (StatusCode::OK, 0, len.saturating_sub(1)),
        Ranged::Unsatisfiable => {
            let mut reply =
                body(StatusCode::RANGE_NOT_SATISFIABLE, "text/plain; charset=utf-8", "range not satisfiable\n");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                reply.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return reply;
        }
    };
    let count = if len == 0 { 0 } else { last - first + 1 };
    let mut reply = if request.method() == Method::HEAD || count == 0 {
        Response::new(http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed())
    } else {
        Response::new(read(file.file, first, count).boxed())
    };
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(file.content_type));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}"))
    {
        headers.insert(header::CONTENT_RANGE, v);
    }
    let kind = if download { "attachment" } else { "inline" };
    if let Ok(v) = HeaderValue::from_str(&disposition(kind, &file.name)) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    reply
}

/// `count` bytes of `file` from `first`, read on a blocking thread a few chunks ahead; the
/// reading stops when the connection goes.
fn read(mut file: std::fs::File, first: u64, count: u64) -> ChannelBody {
    let (tx, rx) = mpsc::channel(AHEAD);
    tokio::task::spawn_blocking(move || {
        if file.seek(SeekFrom::Start(first)).is_err() {
            return;
        }
        let mut left = count;
        while left > 0 {
            let mut buf = vec![0u8; CHUNK.min(left as usize)];
            match file.read(&mut buf) {
                Ok(0) | Err(_) => return, // shorter than it was: the body ends short, and the client sees it
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    if tx.blocking_send(Bytes::from(buf)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    ChannelBody(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(range(None, 100), Ranged::Whole);
        assert_eq!(range(Some("bytes=0-9"), 100), Ranged::Part(0, 9));
        assert_eq!(range(Some("bytes=90-"), 100), Ranged::Part(90, 99));
        assert_eq!(range(Some("bytes=90-500"), 100), Ranged::Part(90, 99));
        assert_eq!(range(Some("bytes=-10"), 100), Ranged::Part(90, 99));
        assert_eq!(range(Some("bytes=-500"), 100), Ranged::Part(0, 99));
        assert_eq!(range(Some("bytes=100-"), 100), Ranged::Unsatisfiable);
        assert_eq!(range(Some("bytes=-0"), 100), Ranged::Unsatisfiable);
        assert_eq!(range(Some("bytes=5-2"), 100), Ranged::Whole, "invalid: ignored, the whole file");
        assert_eq!(range(Some("bytes=0-1,5-6"), 100), Ranged::Whole, "several: the whole file");
        assert_eq!(range(Some("items=0-1"), 100), Ranged::Whole);
        assert_eq!(range(Some("bytes=x-1"), 100), Ranged::Whole);
        assert_eq!(range(Some("bytes=0-"), 0), Ranged::Unsatisfiable);
    }

    #[test]
    fn download_names_are_sanitised() {
        assert_eq!(disposition("attachment", "out.mp4"), "attachment; filename=\"out.mp4\"; filename*=UTF-8''out.mp4");
        let d = disposition("inline", "../../etc/pass\"wd\r\n.mp4");
        assert!(!d.contains('/') && !d.contains('\r') && !d.contains('\n'), "{d}");
        assert!(HeaderValue::from_str(&d).is_ok());
        let d = disposition("attachment", "été 2026.mp4");
        assert_eq!(d, "attachment; filename=\"_t_ 2026.mp4\"; filename*=UTF-8''%C3%A9t%C3%A9%202026.mp4");
        assert!(disposition("attachment", "...").contains("filename=\"download\""));
    }
}

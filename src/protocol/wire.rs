//! Frame tasks and results as message bodies on the broker.
//!
//! ```text
//! body := header_len: u32 LE | header (postcard) | payload…
//! task header:   version, job, frame index, chain, transport encoding, and for the frame (and
//!                the previous frame, for `motion`) its size and how its bytes are encoded
//! result header: version, job, frame index, worker, filter time, retries, and the filtered
//!                frame's encoding or why filtering failed
//! ```
//!
//! A message's correlation id ([`Correlation`](super::task::Correlation)) routes it without
//! opening the body; the header repeats the job and frame so that a body under another frame's
//! id is refused. Each body is parsed once, where it is decoded, and its version checked there.
//!
//! Pixels travel raw, LZ4-compressed (both lossless) or as JPEG (lossy, opt-in). The default,
//! [`TransportEncoding::Auto`], compresses a stream's frames only while LZ4 roughly halves them:
//! on a 2-core machine LZ4 costs 6.8 ms to save half of a noisy 720p camera frame, more than
//! moving the other half through RabbitMQ, but 2 ms to shrink an edge map to 7 %.
//! Every size in a header is checked before memory is allocated for it, and a JPEG's own
//! header must announce the size the message header does before it is decoded: a 2 kB JPEG
//! can claim 30 000 × 30 000 pixels.

use std::fmt;
use std::str::FromStr;

use opencv::core::{CV_8UC3, Mat, Scalar, Vector};
use opencv::imgcodecs;
use opencv::prelude::*;
use serde::{Deserialize, Serialize};

use crate::filters::Chain;

/// Version of the body layout; a worker refuses bodies of another (2: the transport encoding
/// as its text; 3: the denoise, sharpen, grade and scale filters in a task's chain; 4: the part
/// of Canny an `edges` step runs, for tiles).
pub const WIRE_VERSION: u8 = 4;
/// Largest frame accepted anywhere, in pixels (8192 × 8192: 8K video with room to spare).
pub const MAX_FRAME_PIXELS: u64 = 8192 * 8192;
/// Largest header, in bytes.
const MAX_HEADER_BYTES: usize = 64 << 10;

/// How frames are encoded for the trip to a worker and back (`--transport`). It travels as
/// the text a user types (`jpeg:90`), checked again wherever it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum TransportEncoding {
    /// Lossless: LZ4 while it halves the frames of a stream, raw otherwise. The default.
    Auto,
    /// Lossless, uncompressed BGR.
    Raw,
    /// Lossless, LZ4 always.
    Lz4,
    /// Lossy JPEG at the given quality (1–100).
    Jpeg(u8),
}

impl TransportEncoding {
    /// Whether frames arrive exactly as sent.
    pub fn is_lossless(self) -> bool {
        !matches!(self, TransportEncoding::Jpeg(_))
    }
}

impl FromStr for TransportEncoding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(TransportEncoding::Auto),
            "raw" => Ok(TransportEncoding::Raw),
            "lz4" => Ok(TransportEncoding::Lz4),
            _ => match s.strip_prefix("jpeg:").map(str::parse::<u8>) {
                Some(Ok(q)) if (1..=100).contains(&q) => Ok(TransportEncoding::Jpeg(q)),
                _ => Err(format!(
                    "unknown transport encoding '{s}' (use auto, raw, lz4 or jpeg:QUALITY with QUALITY 1-100)"
                )),
            },
        }
    }
}

impl TryFrom<String> for TransportEncoding {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<TransportEncoding> for String {
    fn from(e: TransportEncoding) -> String {
        e.to_string()
    }
}

impl fmt::Display for TransportEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportEncoding::Auto => f.write_str("auto"),
            TransportEncoding::Raw => f.write_str("raw"),
            TransportEncoding::Lz4 => f.write_str("lz4"),
            TransportEncoding::Jpeg(q) => write!(f, "jpeg:{q}"),
        }
    }
}

/// How one payload's bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayloadEncoding {
    /// BGR bytes, row by row.
    Raw,
    /// LZ4 block of the BGR bytes.
    Lz4,
    /// A JPEG file.
    Jpeg,
    /// LZ4 block of the byte-wise difference (mod 256) from the task's source frame, which the
    /// receiver holds: a result that changes little of its frame (boxes drawn by `faces` or
    /// `motion`) is nearly all zeros.
    Lz4Delta,
}

/// A frame's place in a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// How the bytes are encoded.
    pub encoding: PayloadEncoding,
    /// Length of the encoded bytes.
    pub len: u64,
}

/// The header of a task body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskHeader {
    /// [`WIRE_VERSION`].
    pub version: u8,
    /// The job the frame belongs to.
    pub job: String,
    /// The frame's index in the video.
    pub index: u64,
    /// The filters to apply.
    pub chain: Chain,
    /// How results must be encoded.
    pub encoding: TransportEncoding,
    /// The frame.
    pub frame: Payload,
    /// The previous source frame (for `motion`).
    pub previous: Option<Payload>,
}

/// How a task ended, in a result header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResultOutcome {
    /// The filtered frame follows.
    Frame(Payload),
    /// The chain failed; why.
    Failed(String),
}

/// The header of a result body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultHeader {
    /// [`WIRE_VERSION`].
    pub version: u8,
    /// The job.
    pub job: String,
    /// The frame's index.
    pub index: u64,
    /// Who processed it (`hostname:pid`).
    pub worker: String,
    /// Time in the filter chain, in microseconds.
    pub filter_us: u64,
    /// Extra deliveries this frame needed before this result (redelivery, re-dispatch, retry).
    pub retries: u32,
    /// The filtered frame or the failure.
    pub outcome: ResultOutcome,
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Shorter than its header says, or a header that does not parse.
    #[error("malformed message body: {0}")]
    Malformed(String),
    /// Another layout version.
    #[error("message body version {0}, this vpd reads version {WIRE_VERSION}")]
    Version(u8),
    /// A frame over [`MAX_FRAME_PIXELS`].
    #[error("a {0}x{1} frame is over the size limit")]
    TooLarge(u32, u32),
    /// A frame over what this worker was allowed to take (`--max-frame-pixels`).
    #[error("a {0}x{1} frame is over this worker's --max-frame-pixels of {2}")]
    OverWorkerLimit(u32, u32, u64),
    /// A frame of another size than the one expected (a result for a frame of the job).
    #[error("a {0}x{1} frame where {2}x{3} was expected")]
    WrongSize(u32, u32, u32, u32),
    /// The pixels do not decode to the announced frame.
    #[error("frame data does not decode: {0}")]
    Corrupt(String),
    /// OpenCV failed.
    #[error("opencv: {0}")]
    OpenCv(#[from] opencv::Error),
}

/// Chooses, frame by frame, how one stream of frames is encoded.
///
/// Under [`TransportEncoding::Auto`], every 16th frame is compressed to measure the stream: the
/// 15 after it are compressed only if that one shrank to half or less.
#[derive(Debug, Clone)]
pub struct Encoder {
    mode: TransportEncoding,
    frames: u64,
    compress: bool,
    delta: Vec<u8>,
}

const PROBE_EVERY: u64 = 16;
/// Encode against the base frame when at most this share of a sample of bytes differs.
const DELTA_MAX_CHANGED: f64 = 0.2;
/// Sample every this-many-th byte to estimate the share: a prime, so the sample does not line up
/// with rows or channels. 2.7 MB of 720p frame gives 45 000 samples, a few microseconds.
const DELTA_SAMPLE_STRIDE: usize = 61;

impl Encoder {
    /// An encoder for one stream in `mode`.
    pub fn new(mode: TransportEncoding) -> Self {
        Encoder { mode, frames: 0, compress: true, delta: Vec::new() }
    }

    /// Like [`Encoder::encode`], but in the lossless modes encodes `frame` as its difference from
    /// `base` (which the receiver holds) when only a small part of it differs.
    pub fn encode_against(&mut self, frame: &Mat, base: &Mat, out: &mut Vec<u8>) -> Result<Payload, WireError> {
        let lossless = matches!(self.mode, TransportEncoding::Auto | TransportEncoding::Lz4);
        if !lossless || frame.size()? != base.size()? || base.typ() != CV_8UC3 || !base.is_continuous() {
            return self.encode(frame, out);
        }
        let (bytes, base_bytes) = (frame_bytes(frame)?, base.data_bytes()?);
        let sampled = bytes.iter().zip(base_bytes).step_by(DELTA_SAMPLE_STRIDE);
        let (changed, total) = sampled.fold((0usize, 0usize), |(c, t), (a, b)| (c + usize::from(a != b), t + 1));
        if changed as f64 > DELTA_MAX_CHANGED * total.max(1) as f64 {
            return self.encode(frame, out);
        }
        self.delta.clear();
        self.delta.extend(bytes.iter().zip(base_bytes).map(|(a, b)| a.wrapping_sub(*b)));
        let start = out.len();
        lz4(&self.delta, out);
        Ok(Payload {
            width: frame.cols() as u32,
            height: frame.rows() as u32,
            encoding: PayloadEncoding::Lz4Delta,
            len: (out.len() - start) as u64,
        })
    }

    /// Appends `frame`'s bytes to `out` and says how they are encoded.
    pub fn encode(&mut self, frame: &Mat, out: &mut Vec<u8>) -> Result<Payload, WireError> {
        let (width, height) = (frame.cols() as u32, frame.rows() as u32);
        let bytes = frame_bytes(frame)?;
        let start = out.len();
        let encoding = match self.mode {
            TransportEncoding::Raw => raw(bytes, out),
            TransportEncoding::Lz4 => lz4(bytes, out),
            TransportEncoding::Jpeg(q) => {
                let mut buf = Vector::<u8>::new();
                let params = Vector::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, i32::from(q)]);
                imgcodecs::imencode(".jpg", frame, &mut buf, &params)?;
                out.extend_from_slice(buf.as_slice());
                PayloadEncoding::Jpeg
            }
            TransportEncoding::Auto => {
                let probe = self.frames % PROBE_EVERY == 0;
                self.frames += 1;
                if probe || self.compress {
                    lz4(bytes, out);
                    let ratio = (out.len() - start) as f64 / bytes.len().max(1) as f64;
                    if probe {
                        self.compress = ratio <= 0.5;
                    }
                    if ratio < 1.0 {
                        PayloadEncoding::Lz4
                    } else {
                        out.truncate(start);
                        raw(bytes, out)
                    }
                } else {
                    raw(bytes, out)
                }
            }
        };
        Ok(Payload { width, height, encoding, len: (out.len() - start) as u64 })
    }
}

fn raw(bytes: &[u8], out: &mut Vec<u8>) -> PayloadEncoding {
    out.extend_from_slice(bytes);
    PayloadEncoding::Raw
}

fn lz4(bytes: &[u8], out: &mut Vec<u8>) -> PayloadEncoding {
    let start = out.len();
    out.resize(start + lz4_flex::block::get_maximum_output_size(bytes.len()), 0);
    // The buffer was just sized for the worst case.
    let n = lz4_flex::block::compress_into(bytes, &mut out[start..]).expect("sized for the worst case");
    out.truncate(start + n);
    PayloadEncoding::Lz4
}

/// The pixels of an 8-bit BGR frame, refusing anything else.
fn frame_bytes(frame: &Mat) -> Result<&[u8], WireError> {
    if frame.typ() != CV_8UC3 || !frame.is_continuous() {
        return Err(WireError::Corrupt("frames must be continuous 8-bit BGR".into()));
    }
    Ok(frame.data_bytes()?)
}

/// Decodes one payload into a new frame, checking its size first. `base` is the frame an
/// [`PayloadEncoding::Lz4Delta`] payload was encoded against.
pub fn decode_frame(p: &Payload, bytes: &[u8], base: Option<&Mat>) -> Result<Mat, WireError> {
    let pixels = u64::from(p.width) * u64::from(p.height);
    if pixels == 0 || pixels > MAX_FRAME_PIXELS {
        return Err(WireError::TooLarge(p.width, p.height));
    }
    let expected = (pixels * 3) as usize;
    // The payload's length must be one the announced frame could have, before a byte is
    // allocated for it: a few bytes announcing a huge frame cost nothing.
    match p.encoding {
        PayloadEncoding::Raw if bytes.len() != expected => {
            return Err(WireError::Corrupt(format!("{} bytes for {expected}", bytes.len())));
        }
        PayloadEncoding::Lz4 | PayloadEncoding::Lz4Delta if bytes.len() < min_lz4_len(expected) => {
            return Err(WireError::Corrupt(format!(
                "{} bytes of LZ4 cannot hold a {}x{} frame",
                bytes.len(),
                p.width,
                p.height
            )));
        }
        _ => {}
    }
    let check = |m: &Mat| -> Result<(), WireError> {
        if m.cols() as u32 != p.width || m.rows() as u32 != p.height || m.typ() != CV_8UC3 {
            return Err(WireError::Corrupt(format!("payload is not a {}x{} BGR frame", p.width, p.height)));
        }
        Ok(())
    };
    let mut mat = match p.encoding {
        PayloadEncoding::Jpeg => {
            // Checked before decoding: imdecode would allocate whatever the JPEG claims.
            match jpeg_dimensions(bytes) {
                Some(dims) if dims == (p.width, p.height) => {}
                Some((w, h)) => {
                    return Err(WireError::Corrupt(format!("a {w}x{h} JPEG announced as {}x{}", p.width, p.height)));
                }
                None => return Err(WireError::Corrupt("not a baseline or progressive JPEG".into())),
            }
            let m = imgcodecs::imdecode(&Vector::<u8>::from_slice(bytes), imgcodecs::IMREAD_COLOR)?;
            check(&m)?;
            return Ok(m);
        }
        _ => Mat::new_rows_cols_with_default(p.height as i32, p.width as i32, CV_8UC3, Scalar::all(0.0))?,
    };
    let dst = mat.data_bytes_mut()?;
    match p.encoding {
        PayloadEncoding::Raw if bytes.len() == expected => dst.copy_from_slice(bytes),
        PayloadEncoding::Raw => return Err(WireError::Corrupt(format!("{} bytes for {expected}", bytes.len()))),
        PayloadEncoding::Lz4 | PayloadEncoding::Lz4Delta => match lz4_flex::block::decompress_into(bytes, dst) {
            Ok(n) if n == expected => {}
            Ok(n) => return Err(WireError::Corrupt(format!("LZ4 gave {n} bytes for {expected}"))),
            Err(e) => return Err(WireError::Corrupt(e.to_string())),
        },
        PayloadEncoding::Jpeg => unreachable!("returned above"),
    }
    if p.encoding == PayloadEncoding::Lz4Delta {
        let base = base.filter(|b| b.cols() as u32 == p.width && b.rows() as u32 == p.height && b.typ() == CV_8UC3);
        let base = base.ok_or_else(|| WireError::Corrupt("a delta without the frame it was taken against".into()))?;
        for (d, b) in dst.iter_mut().zip(base.data_bytes()?) {
            *d = d.wrapping_add(*b);
        }
    }
    check(&mat)?;
    Ok(mat)
}

/// The fewest bytes of an LZ4 block that decompress to `len` bytes: each sequence of at most
/// 255 literal-length or match-length bytes costs at least one byte (LZ4 expands at most
/// about 255 to 1).
fn min_lz4_len(len: usize) -> usize {
    len / 256
}

/// The width and height a JPEG's frame header (SOFn) announces, read without decoding it:
/// `None` when there is none before the scan starts, or the header is cut short.
pub fn jpeg_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.get(..2)? != [0xff, 0xd8] {
        return None;
    }
    let mut at = 2;
    loop {
        // A marker: 0xff, any number of 0xff fill bytes, then its code.
        if *bytes.get(at)? != 0xff {
            return None;
        }
        while *bytes.get(at)? == 0xff {
            at += 1;
        }
        let code = *bytes.get(at)?;
        at += 1;
        match code {
            // Stand-alone markers carry no length.
            0x01 | 0xd0..=0xd7 => continue,
            // Start of scan, or end of image, before any frame header.
            0xd9 | 0xda => return None,
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]));
        if len < 2 {
            return None;
        }
        // Every SOFn but DHT (c4), JPG (c8) and DAC (cc).
        if matches!(code, 0xc0..=0xcf) && !matches!(code, 0xc4 | 0xc8 | 0xcc) {
            let sof = bytes.get(at + 2..at + 7)?;
            let height = u32::from(u16::from_be_bytes([sof[1], sof[2]]));
            let width = u32::from(u16::from_be_bytes([sof[3], sof[4]]));
            // A height of 0 defers to a later DNL marker: refused, as no encoder here writes one.
            return (width > 0 && height > 0).then_some((width, height));
        }
        at += len;
    }
}

/// The largest result body an honest worker sends for a `width`x`height` frame: a header and
/// the frame raw, or LZ4 at its worst. A result over it is refused without being decoded.
pub fn max_result_body(width: u32, height: u32) -> usize {
    let frame = (u64::from(width) * u64::from(height)).min(MAX_FRAME_PIXELS) as usize * 3;
    4 + MAX_HEADER_BYTES + lz4_flex::block::get_maximum_output_size(frame)
}

/// A body header, which carries the layout version it was written in.
trait Versioned {
    fn version(&self) -> u8;
}

impl Versioned for TaskHeader {
    fn version(&self) -> u8 {
        self.version
    }
}

impl Versioned for ResultHeader {
    fn version(&self) -> u8 {
        self.version
    }
}

/// Splits a body into its header, checked to be of [`WIRE_VERSION`], and the bytes after it.
fn split_body<H: for<'a> Deserialize<'a> + Versioned>(body: &[u8]) -> Result<(H, &[u8]), WireError> {
    let len = body.get(..4).ok_or_else(|| WireError::Malformed("shorter than its length prefix".into()))?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_HEADER_BYTES || 4 + len > body.len() {
        return Err(WireError::Malformed(format!("header of {len} bytes in a body of {}", body.len())));
    }
    let header: H = postcard::from_bytes(&body[4..4 + len]).map_err(|e| WireError::Malformed(e.to_string()))?;
    if header.version() != WIRE_VERSION {
        return Err(WireError::Version(header.version()));
    }
    Ok((header, &body[4 + len..]))
}

fn start_body<H: Serialize>(header: &H, capacity: usize) -> Result<Vec<u8>, WireError> {
    let header = postcard::to_stdvec(header).map_err(|e| WireError::Malformed(e.to_string()))?;
    let mut body = Vec::with_capacity(4 + header.len() + capacity);
    body.extend_from_slice(&(header.len() as u32).to_le_bytes());
    body.extend_from_slice(&header);
    Ok(body)
}

/// Takes `len` bytes off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], len: u64) -> Result<&'a [u8], WireError> {
    let len = usize::try_from(len).map_err(|_| WireError::Malformed("payload length".into()))?;
    if len > rest.len() {
        return Err(WireError::Malformed(format!("payload of {len} bytes, {} left in the body", rest.len())));
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    Ok(head)
}

/// What a task needs besides its pixels.
#[derive(Debug, Clone)]
pub struct TaskMeta<'a> {
    /// The job.
    pub job: &'a str,
    /// The frame's index.
    pub index: u64,
    /// The filters.
    pub chain: &'a Chain,
    /// How to encode frames, both ways.
    pub encoding: TransportEncoding,
}

/// Encodes a task body: the frame and, for `motion`, the previous one.
pub fn encode_task(
    meta: &TaskMeta<'_>,
    frame: &Mat,
    previous: Option<&Mat>,
    enc: &mut Encoder,
) -> Result<Vec<u8>, WireError> {
    let mut pixels = Vec::new();
    let frame_payload = enc.encode(frame, &mut pixels)?;
    let previous_payload = previous.map(|p| enc.encode(p, &mut pixels)).transpose()?;
    let header = TaskHeader {
        version: WIRE_VERSION,
        job: meta.job.to_string(),
        index: meta.index,
        chain: meta.chain.clone(),
        encoding: meta.encoding,
        frame: frame_payload,
        previous: previous_payload,
    };
    let mut body = start_body(&header, pixels.len())?;
    body.extend_from_slice(&pixels);
    Ok(body)
}

/// Decodes a task body into its header, frame and previous frame; a frame over `max_pixels`
/// is refused before anything is allocated for it.
pub fn decode_task(body: &[u8], max_pixels: u64) -> Result<(TaskHeader, Mat, Option<Mat>), WireError> {
    let (header, mut rest): (TaskHeader, _) = split_body(body)?;
    let (w, h) = (header.frame.width, header.frame.height);
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(WireError::OverWorkerLimit(w, h, max_pixels));
    }
    if let Some(p) = &header.previous
        && (p.width, p.height) != (header.frame.width, header.frame.height)
    {
        return Err(WireError::WrongSize(p.width, p.height, header.frame.width, header.frame.height));
    }
    let frame = decode_frame(&header.frame, take(&mut rest, header.frame.len)?, None)?;
    let previous = match &header.previous {
        Some(p) => Some(decode_frame(p, take(&mut rest, p.len)?, None)?),
        None => None,
    };
    Ok((header, frame, previous))
}

/// What a result body says besides its pixels.
#[derive(Debug, Clone, Copy)]
pub struct ResultMeta<'a> {
    /// The job.
    pub job: &'a str,
    /// The frame's index.
    pub index: u64,
    /// Who processed it.
    pub worker: &'a str,
    /// Time in the filter chain, in microseconds.
    pub filter_us: u64,
    /// Extra deliveries the frame needed.
    pub retries: u32,
}

/// Encodes a result body: the filtered frame (against `source`, the task's frame, when that
/// pays) or why filtering failed.
pub fn encode_result(
    meta: &ResultMeta<'_>,
    outcome: Result<&Mat, &str>,
    source: Option<&Mat>,
    enc: &mut Encoder,
) -> Result<Vec<u8>, WireError> {
    let mut pixels = Vec::new();
    let outcome = match (outcome, source) {
        (Ok(frame), Some(source)) => ResultOutcome::Frame(enc.encode_against(frame, source, &mut pixels)?),
        (Ok(frame), None) => ResultOutcome::Frame(enc.encode(frame, &mut pixels)?),
        (Err(reason), _) => ResultOutcome::Failed(reason.to_string()),
    };
    let ResultMeta { job, index, worker, filter_us, retries } = *meta;
    let header = ResultHeader {
        version: WIRE_VERSION,
        job: job.to_string(),
        index,
        worker: worker.to_string(),
        filter_us,
        retries,
        outcome,
    };
    let mut body = start_body(&header, pixels.len())?;
    body.extend_from_slice(&pixels);
    Ok(body)
}

/// Decodes a result body: the header and, when filtering succeeded, the frame. `source` is the
/// task's frame, needed when the result was encoded against it; `expected`, when given, is the
/// job's frame size, which the result must have (checked before anything is decoded).
pub fn decode_result(
    body: &[u8],
    source: Option<&Mat>,
    expected: Option<(u32, u32)>,
) -> Result<(ResultHeader, Option<Mat>), WireError> {
    let (header, mut rest): (ResultHeader, _) = split_body(body)?;
    if let (ResultOutcome::Frame(p), Some((w, h))) = (&header.outcome, expected)
        && (p.width, p.height) != (w, h)
    {
        return Err(WireError::WrongSize(p.width, p.height, w, h));
    }
    let frame = match &header.outcome {
        ResultOutcome::Frame(p) => Some(decode_frame(p, take(&mut rest, p.len)?, source)?),
        ResultOutcome::Failed(_) => None,
    };
    Ok((header, frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core;

    fn noise(rows: i32, cols: i32) -> Mat {
        let mut m = Mat::new_rows_cols_with_default(rows, cols, CV_8UC3, Scalar::all(0.0)).unwrap();
        core::randu(&mut m, &Scalar::all(0.0), &Scalar::all(256.0)).unwrap();
        m
    }

    fn flat(rows: i32, cols: i32) -> Mat {
        Mat::new_rows_cols_with_default(rows, cols, CV_8UC3, Scalar::new(1.0, 2.0, 3.0, 0.0)).unwrap()
    }

    fn same(a: &Mat, b: &Mat) -> bool {
        core::norm2(a, b, core::NORM_INF, &core::no_array()).unwrap() == 0.0
    }

    #[test]
    fn encodings_parse_and_print() {
        for s in ["auto", "raw", "lz4", "jpeg:90", "jpeg:1"] {
            assert_eq!(s.parse::<TransportEncoding>().unwrap().to_string(), s);
        }
        for bad in ["jpeg", "jpeg:0", "jpeg:101", "png", ""] {
            assert!(bad.parse::<TransportEncoding>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tasks_round_trip_losslessly_in_every_lossless_mode() {
        let chain: Chain = "motion,edges".parse().unwrap();
        let (frame, previous) = (noise(48, 64), flat(48, 64));
        for mode in [TransportEncoding::Auto, TransportEncoding::Raw, TransportEncoding::Lz4] {
            let meta = TaskMeta { job: "j1", index: 42, chain: &chain, encoding: mode };
            let body = encode_task(&meta, &frame, Some(&previous), &mut Encoder::new(mode)).unwrap();
            let (h, f, p) = decode_task(&body, MAX_FRAME_PIXELS).unwrap();
            assert_eq!((h.job.as_str(), h.index, &h.chain, h.encoding), ("j1", 42, &chain, mode));
            assert!(same(&f, &frame) && same(&p.unwrap(), &previous), "{mode}");
        }
    }

    #[test]
    fn auto_compresses_what_compresses_and_sends_noise_raw() {
        let mut enc = Encoder::new(TransportEncoding::Auto);
        let mut out = Vec::new();
        let p = enc.encode(&flat(100, 100), &mut out).unwrap();
        assert_eq!(p.encoding, PayloadEncoding::Lz4);
        assert!(p.len < 1000, "a flat frame shrinks to almost nothing: {}", p.len);

        let mut enc = Encoder::new(TransportEncoding::Auto);
        let mut out = Vec::new();
        // The probe finds noise incompressible: this frame and the next 15 go raw, uncompressed.
        for _ in 0..PROBE_EVERY {
            out.clear();
            let p = enc.encode(&noise(100, 100), &mut out).unwrap();
            assert_eq!((p.encoding, p.len), (PayloadEncoding::Raw, 30_000));
        }
    }

    fn meta(index: u64) -> ResultMeta<'static> {
        ResultMeta { job: "j", index, worker: "host:1", filter_us: 1234, retries: 2 }
    }

    #[test]
    fn results_round_trip_including_failures() {
        let mut enc = Encoder::new(TransportEncoding::Lz4);
        let frame = noise(10, 20);
        let body = encode_result(&meta(7), Ok(&frame), None, &mut enc).unwrap();
        let (h, f) = decode_result(&body, None, None).unwrap();
        assert_eq!((h.index, h.worker.as_str(), h.filter_us, h.retries), (7, "host:1", 1234, 2));
        assert!(same(&f.unwrap(), &frame));

        let body = encode_result(&meta(8), Err("opencv: boom"), None, &mut enc).unwrap();
        let (h, f) = decode_result(&body, None, None).unwrap();
        assert_eq!(h.outcome, ResultOutcome::Failed("opencv: boom".into()));
        assert!(f.is_none());
    }

    #[test]
    fn a_result_close_to_its_source_travels_as_a_tiny_delta() {
        use opencv::core::Rect;
        use opencv::imgproc;
        let source = noise(240, 320);
        // What `faces` or `motion` returns: the source with a box drawn on it.
        let mut boxed = source.try_clone().unwrap();
        imgproc::rectangle(
            &mut boxed,
            Rect::new(40, 30, 100, 80),
            Scalar::new(0.0, 255.0, 0.0, 0.0),
            2,
            imgproc::LINE_8,
            0,
        )
        .unwrap();
        let mut enc = Encoder::new(TransportEncoding::Auto);
        let body = encode_result(&meta(1), Ok(&boxed), Some(&source), &mut enc).unwrap();
        let (h, back) = decode_result(&body, Some(&source), None).unwrap();
        let ResultOutcome::Frame(p) = h.outcome else { panic!("a frame") };
        assert_eq!(p.encoding, PayloadEncoding::Lz4Delta);
        assert!(p.len < 5_000, "{} bytes for a {} byte frame", p.len, 240 * 320 * 3);
        assert!(same(&back.unwrap(), &boxed), "lossless");
        // Without the source it cannot be decoded, and says so.
        assert!(matches!(decode_result(&body, None, None), Err(WireError::Corrupt(_))));

        // A result unlike its source (edges, blur) is encoded on its own.
        let other = noise(240, 320);
        let body = encode_result(&meta(2), Ok(&other), Some(&source), &mut enc).unwrap();
        let ResultOutcome::Frame(p) = decode_result(&body, Some(&source), None).unwrap().0.outcome else {
            panic!("a frame")
        };
        assert_ne!(p.encoding, PayloadEncoding::Lz4Delta);
        // JPEG (lossy) never uses deltas.
        let mut jpeg = Encoder::new(TransportEncoding::Jpeg(90));
        let body = encode_result(&meta(3), Ok(&boxed), Some(&source), &mut jpeg).unwrap();
        let ResultOutcome::Frame(p) = decode_result(&body, Some(&source), None).unwrap().0.outcome else {
            panic!("a frame")
        };
        assert_eq!(p.encoding, PayloadEncoding::Jpeg);
    }

    #[test]
    fn every_reader_refuses_another_layout_version() {
        let chain: Chain = "blur".parse().unwrap();
        let meta = TaskMeta { job: "j", index: 0, chain: &chain, encoding: TransportEncoding::Raw };
        let mut task = encode_task(&meta, &flat(8, 8), None, &mut Encoder::new(TransportEncoding::Raw)).unwrap();
        let mut result =
            encode_result(&super::tests::meta(0), Ok(&flat(8, 8)), None, &mut Encoder::new(TransportEncoding::Raw))
                .unwrap();
        // The version is the header's first field: one byte after the length prefix.
        task[4] = WIRE_VERSION + 1;
        result[4] = WIRE_VERSION + 1;
        let newer = WIRE_VERSION + 1;
        assert!(matches!(decode_task(&task, MAX_FRAME_PIXELS), Err(WireError::Version(v)) if v == newer));
        assert!(matches!(decode_result(&result, None, None), Err(WireError::Version(v)) if v == newer));
    }

    #[test]
    fn jpeg_is_lossy_but_close() {
        let frame = flat(64, 64);
        let mut enc = Encoder::new(TransportEncoding::Jpeg(90));
        let mut out = Vec::new();
        let p = enc.encode(&frame, &mut out).unwrap();
        assert_eq!(p.encoding, PayloadEncoding::Jpeg);
        let back = decode_frame(&p, &out, None).unwrap();
        assert!(core::norm2(&back, &frame, core::NORM_INF, &core::no_array()).unwrap() <= 3.0);
    }

    #[test]
    fn hostile_bodies_are_errors_not_allocations() {
        assert!(matches!(decode_task(&[1, 2], MAX_FRAME_PIXELS), Err(WireError::Malformed(_))));
        assert!(matches!(decode_task(&[255, 255, 255, 255, 0], MAX_FRAME_PIXELS), Err(WireError::Malformed(_))));
        // A header announcing a 100000 x 100000 frame is refused before allocating 30 GB.
        let huge = Payload { width: 100_000, height: 100_000, encoding: PayloadEncoding::Raw, len: 3 };
        assert!(matches!(decode_frame(&huge, &[0, 0, 0], None), Err(WireError::TooLarge(100_000, 100_000))));
        // Pixels that do not match the announced size.
        let p = Payload { width: 4, height: 4, encoding: PayloadEncoding::Raw, len: 10 };
        assert!(matches!(decode_frame(&p, &[0; 10], None), Err(WireError::Corrupt(_))));
        let p = Payload { width: 4, height: 4, encoding: PayloadEncoding::Lz4, len: 3 };
        assert!(matches!(decode_frame(&p, &[0xf0, 1, 2], None), Err(WireError::Corrupt(_))));
        // A few bytes announcing the largest frame: refused from their length alone.
        let big = Payload { width: 8192, height: 8192, encoding: PayloadEncoding::Raw, len: 3 };
        assert!(matches!(decode_frame(&big, &[0, 0, 0], None), Err(WireError::Corrupt(_))));
        let big = Payload { encoding: PayloadEncoding::Lz4, len: 1000, ..big };
        let err = decode_frame(&big, &[0; 1000], None).unwrap_err();
        assert!(err.to_string().contains("1000 bytes of LZ4 cannot hold a 8192x8192 frame"), "{err}");
        // A body cut short after its header.
        let chain: Chain = "blur".parse().unwrap();
        let meta = TaskMeta { job: "j", index: 0, chain: &chain, encoding: TransportEncoding::Raw };
        let body = encode_task(&meta, &flat(8, 8), None, &mut Encoder::new(TransportEncoding::Raw)).unwrap();
        assert!(matches!(decode_task(&body[..body.len() - 1], MAX_FRAME_PIXELS), Err(WireError::Malformed(_))));
        // A frame over the worker's limit, whatever its payload.
        let err = decode_task(&body, 63).unwrap_err();
        assert_eq!(err.to_string(), "a 8x8 frame is over this worker's --max-frame-pixels of 63");
        assert!(decode_task(&body, 64).is_ok());
    }

    /// A tiny JPEG whose frame header claims `width`x`height`, as a forged message would carry.
    fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
        let mut buf = Vector::<u8>::new();
        imgcodecs::imencode(".jpg", &flat(16, 16), &mut buf, &Vector::new()).unwrap();
        let mut jpeg = buf.to_vec();
        let sof = jpeg.windows(2).position(|w| w == [0xff, 0xc0]).expect("OpenCV writes baseline JPEGs");
        jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        jpeg
    }

    #[test]
    fn jpeg_dimensions_are_read_from_the_header() {
        let mut buf = Vector::<u8>::new();
        imgcodecs::imencode(".jpg", &flat(48, 64), &mut buf, &Vector::new()).unwrap();
        assert_eq!(jpeg_dimensions(buf.as_slice()), Some((64, 48)));
        assert_eq!(jpeg_dimensions(&jpeg_claiming(30_000, 30_000)), Some((30_000, 30_000)));
        assert_eq!(jpeg_dimensions(b"not a jpeg"), None);
        assert_eq!(jpeg_dimensions(&buf.as_slice()[..20]), None, "cut before the frame header");
        assert_eq!(jpeg_dimensions(&[0xff, 0xd8, 0xff, 0xda, 0, 2]), None, "a scan before any frame header");
    }

    #[test]
    fn a_jpeg_claiming_another_size_is_refused_before_decoding() {
        // 2 kB that would decode to 2.7 GB: the header says 8x8, the JPEG 30000x30000.
        let bomb = jpeg_claiming(30_000, 30_000);
        assert!(bomb.len() < 4096);
        let p = Payload { width: 8, height: 8, encoding: PayloadEncoding::Jpeg, len: bomb.len() as u64 };
        let err = decode_frame(&p, &bomb, None).unwrap_err();
        assert!(err.to_string().contains("a 30000x30000 JPEG announced as 8x8"), "{err}");
        // Announced honestly, it is over the frame limit and refused from the header alone.
        let p = Payload { width: 30_000, height: 30_000, encoding: PayloadEncoding::Jpeg, len: bomb.len() as u64 };
        assert!(matches!(decode_frame(&p, &bomb, None), Err(WireError::TooLarge(30_000, 30_000))));
    }

    #[test]
    fn results_of_another_size_than_the_jobs_frames_are_refused() {
        let mut enc = Encoder::new(TransportEncoding::Raw);
        let body = encode_result(&meta(1), Ok(&flat(10, 20)), None, &mut enc).unwrap();
        assert!(decode_result(&body, None, Some((20, 10))).is_ok());
        assert!(matches!(decode_result(&body, None, Some((1280, 720))), Err(WireError::WrongSize(20, 10, 1280, 720))));
        assert!(body.len() <= max_result_body(20, 10));
        // A task whose previous frame is not the size of its frame.
        let chain: Chain = "motion".parse().unwrap();
        let meta = TaskMeta { job: "j", index: 1, chain: &chain, encoding: TransportEncoding::Raw };
        let mut enc = Encoder::new(TransportEncoding::Raw);
        let body = encode_task(&meta, &flat(8, 8), Some(&flat(16, 16)), &mut enc).unwrap();
        assert!(matches!(decode_task(&body, MAX_FRAME_PIXELS), Err(WireError::WrongSize(16, 16, 8, 8))));
    }
}

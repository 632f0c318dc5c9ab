//! A segmented output: the video encoded in independent segments, each committed to disk as
//! it completes, then joined into the output without re-encoding.
//!
//! ```text
//!  frames 0‥L-1        L‥2L-1          2L‥…
//!  ┌─ fresh encoder ─┐ ┌─ fresh encoder ─┐ ┌─ …
//!  seg-000000.nut      seg-000001.nut      …     each: closed GOP, fsynced, renamed into place,
//!                                                then recorded (the commit)
//!  join: segments' packets + the input's audio, subtitles, metadata ─mux─▶ output
//! ```
//!
//! Segment *n* holds frames `n·L` to `n·L + L − 1`, `L` fixed by the job (about
//! `--segment-seconds` of frames at the input's rate), and is encoded by an encoder opened
//! for it alone with the job's settings, so its bytes depend only on its frames: a segment
//! written before a crash and one written after are interchangeable, and a resumed job's output
//! is the uninterrupted job's, frame for frame. A segment is committed in this order: encoder
//! flushed, container closed, file fsynced, renamed from its `.partial` name, directory fsynced,
//! then reported to the caller, which records it. A crash at any point leaves either a recorded
//! segment or one that is redone.
//!
//! A segment file is the encoder's packets as they came out, each with its timestamps, in a
//! layout of vpd's own (`VPDSEG1`, then per packet a postcard header and the bytes): no
//! container rounds a timestamp or drops a decoding time on the way (NUT leaves the first
//! B-frames' unset; Matroska keeps milliseconds). The stream's parameters are the encoder's,
//! which the job's settings fix. The input's other streams are read again at the join and
//! interleaved with the segments' packets by time.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ffmpeg_next::Packet;
use opencv::core::Mat;
use opencv::prelude::*;
use serde::{Deserialize, Serialize};

use super::encoder::{Container, Frames, VideoEncoder, even_where_needed};
use super::side::SideQueue;
use super::sink::MediaSink;
use super::{FrameSink, MediaError, MediaSource, OutputOptions};
use crate::files::RemoveOnDrop;

/// A committed segment, as the job's record keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// Its number, from 0.
    pub number: u64,
    /// Its first frame's index.
    pub first_frame: u64,
    /// Frames in it.
    pub frames: u64,
    /// Its last frame's timestamp in the input video stream's time base, when frames have one:
    /// where a resume seeks to.
    pub last_pts: Option<i64>,
    /// Its size on disk.
    pub bytes: u64,
}

/// Frames per segment for a video at `fps`: about `seconds` of it, at least one frame.
pub fn frames_per_segment(fps: f64, seconds: f64) -> u64 {
    let n = (fps * seconds).round();
    if n.is_finite() && n >= 1.0 { n as u64 } else { 1 }
}

/// Segment `number`'s file in `dir`.
pub fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("seg-{number:06}.vpdseg"))
}

/// The first bytes of a segment file.
const MAGIC: &[u8; 8] = b"VPDSEG1\n";
/// Largest packet a segment holds: far above any frame's encoding (a raw 8K BGR frame is 200 MB).
const MAX_PACKET_BYTES: u32 = 256 << 20;

/// What a segment file says of one packet before its bytes.
#[derive(Debug, Serialize, Deserialize)]
struct PacketHeader {
    pts: Option<i64>,
    dts: Option<i64>,
    duration: i64,
    key: bool,
    size: u32,
}

/// Called with each segment as it is committed; an error fails the job.
pub type OnCommit = Box<dyn FnMut(&SegmentRecord) -> anyhow::Result<()> + Send>;

/// Writes frames into segments in `dir`, committing each as it completes.
pub struct SegmentSink {
    dir: PathBuf,
    frames: Frames,
    options: OutputOptions,
    container: Container,
    /// The encoded frame size.
    size: (u32, u32),
    per_segment: u64,
    /// The index of the next frame to come.
    next_frame: u64,
    open: Option<OpenSegment>,
    side: Arc<SideQueue>,
    on_commit: OnCommit,
    /// The final output, for messages.
    shown: PathBuf,
}

struct OpenSegment {
    number: u64,
    first_frame: u64,
    file: BufWriter<File>,
    encoder: VideoEncoder,
    partial: RemoveOnDrop,
    frames: u64,
    last_pts: Option<i64>,
}

impl SegmentSink {
    /// A sink for `source`'s frames into segments of `per_segment` frames in `dir` (which
    /// exists), encoded for `target` with `options`; `committed` frames are already in
    /// segments, so the first frame written is frame `committed` (a multiple of
    /// `per_segment`); `size` is the frames' size when the filters change it.
    // Each says one thing the segments need; a struct of them would be built here alone.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        source: &MediaSource,
        dir: &Path,
        target: &Path,
        options: &OutputOptions,
        per_segment: u64,
        committed: u64,
        on_commit: OnCommit,
        size: Option<(u32, u32)>,
    ) -> Result<Self, MediaError> {
        let container = Container::of(target, options)?;
        let frames = Frames::sized(source, size);
        // Every segment's encoder drops the same odd row or column: said here, once.
        let size = even_where_needed(&frames, options, target)?;
        debug_assert_eq!(committed % per_segment.max(1), 0, "resumes start at a segment's first frame");
        Ok(SegmentSink {
            dir: dir.to_path_buf(),
            frames,
            size,
            options: options.clone(),
            container,
            per_segment: per_segment.max(1),
            next_frame: committed,
            open: None,
            side: source.side.clone(),
            on_commit,
            shown: target.to_path_buf(),
        })
    }

    /// The encoded frame size, as the output will have it.
    pub fn size(&self) -> (u32, u32) {
        self.size
    }

    fn start(&mut self) -> Result<OpenSegment, MediaError> {
        let number = self.next_frame / self.per_segment;
        let path = segment_path(&self.dir, number);
        let partial = RemoveOnDrop::new(path.with_extension("partial"));
        let encoder = VideoEncoder::open(&self.frames, &self.options, self.container, &self.shown)?;
        let file = File::create(partial.path()).map_err(|cause| io_error(partial.path(), 0, cause))?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        file.write_all(MAGIC).map_err(|cause| io_error(partial.path(), 0, cause))?;
        Ok(OpenSegment { number, first_frame: self.next_frame, file, encoder, partial, frames: 0, last_pts: None })
    }

    /// Closes, syncs and records the open segment.
    fn commit(&mut self) -> anyhow::Result<()> {
        let Some(mut seg) = self.open.take() else { return Ok(()) };
        let mut packets = Vec::new();
        seg.encoder.flush(&mut packets)?;
        seg.write(packets)?;
        let partial = seg.partial.path().to_path_buf();
        let done = seg.first_frame + seg.frames;
        let file = seg.file.into_inner().map_err(|e| io_error(&partial, done, e.into_error()))?;
        file.sync_all().map_err(|cause| io_error(&partial, done, cause))?;
        let bytes = file.metadata().map_err(|cause| io_error(&partial, done, cause))?.len();
        let path = segment_path(&self.dir, seg.number);
        std::fs::rename(&partial, &path).map_err(|cause| MediaError::Io { path: path.clone(), cause })?;
        seg.partial.keep();
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|cause| MediaError::Io { path: self.dir.clone(), cause })?;
        let record = SegmentRecord {
            number: seg.number,
            first_frame: seg.first_frame,
            frames: seg.frames,
            last_pts: seg.last_pts,
            bytes,
        };
        (self.on_commit)(&record)
    }

    /// Commits the last, shorter segment.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.commit()
    }
}

impl OpenSegment {
    fn write(&mut self, packets: Vec<Packet>) -> Result<(), MediaError> {
        for packet in packets {
            let data = packet.data().unwrap_or_default();
            let header = PacketHeader {
                pts: packet.pts(),
                dts: packet.dts(),
                duration: packet.duration(),
                key: packet.is_key(),
                size: data.len() as u32,
            };
            let header = postcard::to_stdvec(&header).expect("a packet header serialises");
            let done = self.first_frame + self.frames;
            let path = self.partial.path();
            (|| {
                self.file.write_all(&(header.len() as u32).to_le_bytes())?;
                self.file.write_all(&header)?;
                self.file.write_all(data)
            })()
            .map_err(|cause| io_error(path, done, cause))?;
        }
        Ok(())
    }
}

/// What a failed segment write means: a full disk (its frames are kept for a resume), or the
/// OS's reason.
fn io_error(path: &Path, frames: u64, cause: std::io::Error) -> MediaError {
    if cause.raw_os_error() == Some(libc::ENOSPC) {
        MediaError::NoSpace { path: path.to_path_buf(), frames }
    } else {
        MediaError::Io { path: path.to_path_buf(), cause }
    }
}

/// Reads segment `number`'s packets, in the order they were encoded.
fn read_segment(dir: &Path, number: u64) -> Result<Vec<Packet>, MediaError> {
    let path = segment_path(dir, number);
    let damaged = |why: &str| MediaError::Io {
        path: path.clone(),
        cause: std::io::Error::other(format!("damaged segment: {why}")),
    };
    let file = File::open(&path).map_err(|cause| MediaError::Io { path: path.clone(), cause })?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| damaged("too short"))?;
    if &magic != MAGIC {
        return Err(damaged("not a vpd segment"));
    }
    let mut packets = Vec::new();
    loop {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(packets),
            Err(cause) => return Err(MediaError::Io { path: path.clone(), cause }),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > 1024 {
            return Err(damaged("a packet header is too long"));
        }
        let mut header = vec![0u8; len];
        r.read_exact(&mut header).map_err(|_| damaged("cut short"))?;
        let header: PacketHeader = postcard::from_bytes(&header).map_err(|_| damaged("a bad packet header"))?;
        if header.size > MAX_PACKET_BYTES {
            return Err(damaged("a packet is too large"));
        }
        let mut packet = Packet::new(header.size as usize);
        if let Some(data) = packet.data_mut() {
            r.read_exact(data).map_err(|_| damaged("cut short"))?;
        }
        packet.set_pts(header.pts);
        packet.set_dts(header.dts);
        packet.set_duration(header.duration);
        if header.key {
            packet.set_flags(ffmpeg_next::packet::Flags::KEY);
        }
        packets.push(packet);
    }
}

impl FrameSink for SegmentSink {
    fn write(&mut self, mat: &Mat) -> anyhow::Result<()> {
        // The other streams' packets are read again at the join; only the timestamp is used.
        let pts = self.side.pop_frame().flatten();
        if self.open.is_none() {
            self.open = Some(self.start()?);
        }
        let seg = self.open.as_mut().expect("opened above");
        let mut packets = Vec::new();
        seg.encoder.encode(mat, pts, &mut packets)?;
        seg.write(packets)?;
        seg.frames += 1;
        seg.last_pts = pts;
        self.next_frame += 1;
        if self.next_frame % self.per_segment == 0 {
            self.commit()?;
        }
        Ok(())
    }
}

/// Joins the committed segments of `dir` (in order, every frame of the job) and `source`'s
/// other streams into `target`, without re-encoding the video; the output appears at `target`
/// only when complete.
pub fn join(
    source: &mut MediaSource,
    dir: &Path,
    segments: &[SegmentRecord],
    target: &Path,
    options: &OutputOptions,
    size: Option<(u32, u32)>,
) -> Result<PathBuf, MediaError> {
    if segments.is_empty() {
        return Err(MediaError::NoFrames(target.to_path_buf()));
    }
    // The stream's parameters are those of any segment's encoder: the job's settings fix them.
    let (parameters, time_base) = {
        let frames = Frames::sized(source, size);
        let mut encoder = VideoEncoder::open(&frames, options, Container::of(target, options)?, target)?;
        let found = (encoder.parameters(), encoder.time_base());
        // Closed properly, with a frame: some encoders (SVT-AV1) hang when dropped without an
        // end of stream, or when given one before any frame.
        let blank = Mat::zeros(frames.height as i32, frames.width as i32, opencv::core::CV_8UC3)
            .and_then(|m| m.to_mat())
            .map_err(|e| MediaError::Io { path: target.to_path_buf(), cause: std::io::Error::other(e) })?;
        let mut ignored = Vec::new();
        if encoder.encode(&blank, Some(0), &mut ignored).is_ok() {
            let _ = encoder.flush(&mut ignored);
        }
        found
    };
    let mut sink = MediaSink::join(source, target, options, &parameters, time_base, size)?;
    let mut other = source.next_other();
    for (expected, record) in segments.iter().enumerate() {
        if record.number != expected as u64 {
            let path = segment_path(dir, expected as u64);
            return Err(MediaError::Io { path, cause: std::io::Error::other("a segment is missing") });
        }
        let packets = read_segment(dir, record.number)?;
        if packets.len() as u64 != record.frames {
            return Err(MediaError::Io {
                path: segment_path(dir, record.number),
                cause: std::io::Error::other(format!(
                    "damaged segment: {} frames where {} were committed",
                    packets.len(),
                    record.frames
                )),
            });
        }
        for packet in packets {
            // The other streams' packets due before this one go first (by decoding time).
            let v_ts = packet.dts().or(packet.pts()).unwrap_or(0);
            while let Some(o) = other.take() {
                let o_tb = source.stream_time_base(o.stream());
                let o_ts = o.dts().or(o.pts()).unwrap_or(0);
                // SAFETY: av_compare_ts only reads its arguments.
                if unsafe { ffmpeg_next::ffi::av_compare_ts(o_ts, o_tb.into(), v_ts, time_base.into()) } > 0 {
                    other = Some(o);
                    break;
                }
                sink.write_other(o)?;
                other = source.next_other();
            }
            sink.write_video(vec![packet])?;
        }
    }
    while let Some(o) = other {
        sink.write_other(o)?;
        other = source.next_other();
    }
    sink.finish()
}

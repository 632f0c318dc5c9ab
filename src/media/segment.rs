//! A segmented output: the video encoded in independent segments, each committed to disk as
//! it completes, then joined into the output without re-encoding.
//!
//! ```text
//!  frames 0‥L-1        L‥2L-1          2L‥…
//!  ┌─ fresh encoder ─┐ ┌─ fresh encoder ─┐ ┌─ …
//!  seg-000000.nut      seg-000001.nut      …     each: closed GOP, fsynced, renamed into place,
//!                                                then recorded (the commit)
//!  join: segments' packets (video, audio, subtitles) + the input's metadata ─mux─▶ output
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
//! layout of vpd's own (`VPDSEG2`, the video stream's parameters, then per packet a postcard
//! header and the bytes): no container rounds a timestamp or drops a decoding time on the way
//! (NUT leaves the first B-frames' unset; Matroska keeps milliseconds). The parameters are what
//! the segment's encoder made, so the join opens no encoder. The packets of the input's other
//! streams (audio, subtitles) go into the segment of the frame they came before, in demux
//! order, and the last segment takes those after the last frame, so the input is demuxed once.
//! A full segment is committed when the next frame comes, so the last one is committed by
//! [`SegmentSink::finish`] with those packets, and its record says it is the last. A resumed
//! job reads the other streams again from the keyframe it seeks to: the join passes over a
//! packet of a stream that is not after what earlier segments held of that stream.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ffmpeg_next::packet::Mut as _;
use ffmpeg_next::{Packet, ffi};
use opencv::core::Mat;
use serde::{Deserialize, Serialize};

use super::encoder::{Container, Frames, VideoEncoder, even_where_needed};
use super::side::SideQueue;
use super::sink::MediaSink;
use super::stream::VideoParams;
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
    /// It is the job's last, with the other streams' packets after the last frame.
    #[serde(default)]
    pub last: bool,
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
const MAGIC: &[u8; 8] = b"VPDSEG2\n";
/// The first bytes of a segment file of an older vpd, whose join read the input again.
const MAGIC_1: &[u8; 8] = b"VPDSEG1\n";
/// Largest parameters header: the codec's extradata and a few names.
const MAX_PARAMS_BYTES: usize = 2 << 20;
/// Largest packet a segment holds: far above any frame's encoding (a raw 8K BGR frame is 200 MB).
const MAX_PACKET_BYTES: u32 = 256 << 20;

/// What a segment file says of one packet before its bytes.
#[derive(Debug, Serialize, Deserialize)]
struct PacketHeader {
    /// The input stream of a copied stream's packet; `None` for the segment's video.
    stream: Option<u32>,
    pts: Option<i64>,
    dts: Option<i64>,
    duration: i64,
    /// FFmpeg's packet flags (key, discard, …).
    flags: i32,
    /// The packet's side data: FFmpeg's type number and the bytes.
    side: Vec<(u32, Vec<u8>)>,
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
        let fail = |cause| io_error(partial.path(), 0, cause);
        let file = File::create(partial.path()).map_err(fail)?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        write_header(&mut file, &VideoParams::of(&encoder)).map_err(fail)?;
        Ok(OpenSegment { number, first_frame: self.next_frame, file, encoder, partial, frames: 0, last_pts: None })
    }

    /// Closes, syncs and records the open segment; `last` when no frame follows.
    fn commit(&mut self, last: bool) -> anyhow::Result<()> {
        let Some(mut seg) = self.open.take() else { return Ok(()) };
        let mut packets = Vec::new();
        seg.encoder.flush(&mut packets)?;
        seg.write(None, packets)?;
        if last {
            // The copied streams' packets after the last frame.
            let mut rest = Vec::new();
            self.side.take_rest(&mut rest);
            seg.write_others(rest)?;
        }
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
            last,
        };
        (self.on_commit)(&record)
    }

    /// Commits the last segment, with the copied streams' packets after the last frame.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.commit(true)
    }
}

impl OpenSegment {
    /// Appends `packets` of input stream `stream` (`None`: the segment's video).
    fn write(&mut self, stream: Option<u32>, packets: Vec<Packet>) -> Result<(), MediaError> {
        let done = self.first_frame + self.frames;
        for packet in packets {
            write_packet(&mut self.file, stream, &packet)
                .map_err(|cause| io_error(self.partial.path(), done, cause))?;
        }
        Ok(())
    }

    /// Appends copied streams' packets, each under its input stream.
    fn write_others(&mut self, packets: Vec<Packet>) -> Result<(), MediaError> {
        for packet in packets {
            let stream = packet.stream() as u32;
            self.write(Some(stream), vec![packet])?;
        }
        Ok(())
    }
}

/// Writes the start of a segment file: the magic and the video stream's parameters.
pub(super) fn write_header(w: &mut impl Write, params: &VideoParams) -> std::io::Result<()> {
    let params = postcard::to_stdvec(params).expect("stream parameters serialise");
    w.write_all(MAGIC)?;
    w.write_all(&(params.len() as u32).to_le_bytes())?;
    w.write_all(&params)
}

/// Writes one packet of a segment file: of input stream `stream`, or the video's for `None`.
pub(super) fn write_packet(w: &mut impl Write, stream: Option<u32>, packet: &Packet) -> std::io::Result<()> {
    let data = packet.data().unwrap_or_default();
    let header = PacketHeader {
        stream,
        pts: packet.pts(),
        dts: packet.dts(),
        duration: packet.duration(),
        flags: packet.flags().bits(),
        side: packet
            .side_data()
            .map(|d| (ffi::AVPacketSideDataType::from(d.kind()) as u32, d.data().to_vec()))
            .collect(),
        size: data.len() as u32,
    };
    let header = postcard::to_stdvec(&header).expect("a packet header serialises");
    w.write_all(&(header.len() as u32).to_le_bytes())?;
    w.write_all(&header)?;
    w.write_all(data)
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

/// One segment file read back: its video stream's parameters and its packets in the order they
/// were written, each a copied stream's (with its input stream index) or the video's.
struct SegmentFile {
    params: VideoParams,
    packets: Vec<(Option<usize>, Packet)>,
}

/// Reads segment `number`.
fn read_segment(dir: &Path, number: u64) -> Result<SegmentFile, MediaError> {
    let path = segment_path(dir, number);
    let damaged = |why: &str| MediaError::Io {
        path: path.clone(),
        cause: std::io::Error::other(format!("damaged segment: {why}")),
    };
    let file = File::open(&path).map_err(|cause| MediaError::Io { path: path.clone(), cause })?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| damaged("too short"))?;
    if &magic == MAGIC_1 {
        return Err(damaged("written by an older vpd; run the job afresh"));
    }
    if &magic != MAGIC {
        return Err(damaged("not a vpd segment"));
    }
    let params = read_record(&mut r, MAX_PARAMS_BYTES).map_err(&damaged)?.ok_or_else(|| damaged("cut short"))?;
    let params: VideoParams = postcard::from_bytes(&params).map_err(|_| damaged("bad stream parameters"))?;
    let mut packets = Vec::new();
    while let Some(header) = read_record(&mut r, 64 << 10).map_err(&damaged)? {
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
        packet.set_flags(ffmpeg_next::packet::Flags::from_bits_truncate(header.flags));
        for (kind, bytes) in &header.side {
            add_side_data(&mut packet, *kind, bytes).map_err(&damaged)?;
        }
        packets.push((header.stream.map(|s| s as usize), packet));
    }
    Ok(SegmentFile { params, packets })
}

/// The next length-prefixed record of at most `max` bytes; `None` at the end of the file.
fn read_record(r: &mut impl Read, max: usize) -> Result<Option<Vec<u8>>, &'static str> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(_) => return Err("unreadable"),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err("a header is too long");
    }
    let mut record = vec![0u8; len];
    r.read_exact(&mut record).map_err(|_| "cut short")?;
    Ok(Some(record))
}

/// Gives `packet` side data of FFmpeg's type number `kind`.
fn add_side_data(packet: &mut Packet, kind: u32, bytes: &[u8]) -> Result<(), &'static str> {
    if kind >= ffi::AVPacketSideDataType::AV_PKT_DATA_NB as u32 {
        return Err("unknown packet side data");
    }
    // SAFETY: the side data types are FFmpeg's contiguous enumeration from 0 to
    // AV_PKT_DATA_NB (excluded), so `kind`, below it, is one of them; av_packet_new_side_data
    // returns null or `bytes.len()` writable bytes that the packet owns.
    unsafe {
        let kind: ffi::AVPacketSideDataType = std::mem::transmute(kind);
        let data = ffi::av_packet_new_side_data(packet.as_mut_ptr(), kind, bytes.len());
        if data.is_null() {
            return Err("no memory for packet side data");
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len());
    }
    Ok(())
}

impl FrameSink for SegmentSink {
    fn write(&mut self, mat: &Mat) -> anyhow::Result<()> {
        // A full segment is committed once a frame follows it: the last is finish()'s.
        if self.open.as_ref().is_some_and(|seg| seg.frames == self.per_segment) {
            self.commit(false)?;
        }
        if self.open.is_none() {
            self.open = Some(self.start()?);
        }
        let seg = self.open.as_mut().expect("opened above");
        // The copied streams' packets demuxed before this frame, then the frame.
        let mut others = Vec::new();
        let pts = self.side.take_until_frame(&mut others).flatten();
        seg.write_others(others)?;
        let mut packets = Vec::new();
        seg.encoder.encode(mat, pts, &mut packets)?;
        seg.write(None, packets)?;
        seg.frames += 1;
        seg.last_pts = pts;
        self.next_frame += 1;
        Ok(())
    }
}

/// Joins the committed segments of `dir` (in order, every frame of the job, the last with the
/// copied streams' end) into `target`, with `source`'s streams and metadata, without
/// re-encoding the video or reading the input's packets again; the output appears at `target`
/// only when complete.
pub fn join(
    source: &MediaSource,
    dir: &Path,
    segments: &[SegmentRecord],
    target: &Path,
    options: &OutputOptions,
    size: Option<(u32, u32)>,
) -> Result<PathBuf, MediaError> {
    if segments.is_empty() {
        return Err(MediaError::NoFrames(target.to_path_buf()));
    }
    let bad = |number: u64, why: String| MediaError::Io {
        path: segment_path(dir, number),
        cause: std::io::Error::other(why),
    };
    // The sink, opened with the first segment's parameters, which every other must equal.
    let mut opened: Option<(VideoParams, MediaSink)> = None;
    // Per input stream, the latest timestamp written: what a resumed job read twice is passed over.
    let mut written: HashMap<usize, i64> = HashMap::new();
    for (expected, record) in segments.iter().enumerate() {
        if record.number != expected as u64 {
            return Err(bad(expected as u64, "a segment is missing".into()));
        }
        let file = read_segment(dir, record.number)?;
        let video = file.packets.iter().filter(|(stream, _)| stream.is_none()).count() as u64;
        if video != record.frames {
            return Err(bad(
                record.number,
                format!("damaged segment: {video} frames where {} were committed", record.frames),
            ));
        }
        let sink = match &mut opened {
            Some((first, sink)) if *first == file.params => sink,
            Some(_) => return Err(bad(record.number, "encoded with other settings than the first segment".into())),
            None => {
                let parameters =
                    file.params.to_codec().map_err(|why| bad(record.number, format!("damaged segment: {why}")))?;
                let sink = MediaSink::join(source, target, options, &parameters, file.params.time_base(), size)?;
                &mut opened.insert((file.params.clone(), sink)).1
            }
        };
        let mut seen: HashMap<usize, i64> = HashMap::new();
        for (stream, mut packet) in file.packets {
            let Some(stream) = stream else {
                sink.write_video(vec![packet])?;
                continue;
            };
            if let Some(ts) = packet.dts().or(packet.pts()) {
                if written.get(&stream).is_some_and(|&last| ts <= last) {
                    continue;
                }
                seen.entry(stream).and_modify(|last| *last = ts.max(*last)).or_insert(ts);
            }
            packet.set_stream(stream);
            sink.write_other(packet)?;
        }
        written.extend(seen);
    }
    opened.ok_or_else(|| MediaError::NoFrames(target.to_path_buf()))?.1.finish()
}

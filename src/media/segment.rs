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
        let mut encoder = VideoEncoder::open(&self.frames, &self.options, self.container, &self.shown)?;
        encoder.starts_at_frame(self.next_frame);
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

/// Reads segment `number`, with the packets of its side file after its own where it has one.
fn read_segment(dir: &Path, number: u64) -> Result<SegmentFile, MediaError> {
    let path = segment_path(dir, number);
    let damaged = |why: String| MediaError::Io {
        path: path.clone(),
        cause: std::io::Error::other(format!("damaged segment: {why}")),
    };
    let file = File::open(&path).map_err(|cause| MediaError::Io { path: path.clone(), cause })?;
    let mut segment = parse_segment(BufReader::with_capacity(1 << 20, file)).map_err(damaged)?;
    let side = side_path(dir, number);
    match File::open(&side) {
        Ok(file) => {
            let mut r = BufReader::with_capacity(1 << 20, file);
            let damaged = |why: &str| MediaError::Io {
                path: side.clone(),
                cause: std::io::Error::other(format!("damaged side file: {why}")),
            };
            let mut magic = [0u8; 8];
            r.read_exact(&mut magic).map_err(|_| damaged("too short"))?;
            if &magic != SIDE_MAGIC {
                return Err(damaged("not a vpd side file"));
            }
            segment.packets.extend(read_packets(&mut r).map_err(|e| damaged(&e))?);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(cause) => return Err(MediaError::Io { path: side, cause }),
    }
    Ok(segment)
}

/// A segment file's contents, or what is wrong with them.
fn parse_segment(mut r: impl Read) -> Result<SegmentFile, String> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| "too short")?;
    if &magic == MAGIC_1 {
        return Err("written by an older vpd; run the job afresh".into());
    }
    if &magic != MAGIC {
        return Err("not a vpd segment".into());
    }
    let params = read_record(&mut r, MAX_PARAMS_BYTES)?.ok_or("cut short")?;
    let params: VideoParams = postcard::from_bytes(&params).map_err(|_| "bad stream parameters")?;
    Ok(SegmentFile { params, packets: read_packets(&mut r)? })
}

/// The packets of a segment or side file, to its end.
fn read_packets(r: &mut impl Read) -> Result<Vec<(Option<usize>, Packet)>, String> {
    let mut packets = Vec::new();
    while let Some(header) = read_record(r, 64 << 10)? {
        let header: PacketHeader = postcard::from_bytes(&header).map_err(|_| "a bad packet header")?;
        if header.size > MAX_PACKET_BYTES {
            return Err("a packet is too large".into());
        }
        let mut packet = Packet::new(header.size as usize);
        if let Some(data) = packet.data_mut() {
            r.read_exact(data).map_err(|_| "cut short")?;
        }
        packet.set_pts(header.pts);
        packet.set_dts(header.dts);
        packet.set_duration(header.duration);
        packet.set_flags(ffmpeg_next::packet::Flags::from_bits_truncate(header.flags));
        for (kind, bytes) in &header.side {
            add_side_data(&mut packet, *kind, bytes)?;
        }
        packets.push((header.stream.map(|s| s as usize), packet));
    }
    Ok(packets)
}

/// Checks the bytes of a segment file made elsewhere (a worker's): it parses, its parameters
/// make a codec, and it holds exactly the video frames of `frames` (presentation timestamps,
/// in order) and nothing else. Returns what is wrong.
pub fn check_segment_bytes(bytes: &[u8], frames: &[i64]) -> Result<VideoParams, String> {
    let file = parse_segment(bytes)?;
    file.params.to_codec()?;
    if file.packets.iter().any(|(stream, _)| stream.is_some()) {
        return Err("packets of other streams in a worker's segment".into());
    }
    let mut times: Vec<Option<i64>> = file.packets.iter().map(|(_, p)| p.pts()).collect();
    times.sort_unstable();
    if times.len() != frames.len() || times.iter().zip(frames).any(|(t, f)| *t != Some(*f)) {
        return Err(format!("{} frames with other timestamps where {} were sent", times.len(), frames.len()));
    }
    Ok(file.params)
}

/// Commits a segment file's `bytes` as segment `number` of `dir`: written under a partial
/// name, synced, renamed into place, the directory synced. Returns its size.
pub fn commit_segment_bytes(dir: &Path, number: u64, bytes: &[u8]) -> Result<u64, MediaError> {
    let path = segment_path(dir, number);
    let partial = RemoveOnDrop::new(path.with_extension("partial"));
    let fail = |cause| io_error(partial.path(), 0, cause);
    let mut file = File::create(partial.path()).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(partial.path(), &path).map_err(|cause| MediaError::Io { path: path.clone(), cause })?;
    partial.keep();
    File::open(dir).and_then(|d| d.sync_all()).map_err(|cause| MediaError::Io { path: dir.to_path_buf(), cause })?;
    Ok(bytes.len() as u64)
}

/// Segment `number`'s side file in `dir`: the input's other streams' packets for it, where its
/// segment file is a worker's (which holds video only).
pub fn side_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("seg-{number:06}.side"))
}

/// The first bytes of a side file.
const SIDE_MAGIC: &[u8; 8] = b"VPDSIDE1";

/// Writes the input's other streams' packets into side files, one per segment, each packet in
/// the segment whose frames' time it falls in (before the first frame: the first; after the
/// last: the last). Files are written under partial names and put in place by
/// [`SideFiles::finish`], once the whole input has been read.
pub struct SideFiles {
    dir: PathBuf,
    /// Each segment's first frame's time, in the video's time base.
    starts: Vec<i64>,
    video_base: ffmpeg_next::Rational,
    /// Each input stream's time base.
    bases: Vec<ffmpeg_next::Rational>,
    /// Files open for appending, most recently used last; a few at a time.
    open: Vec<(u64, BufWriter<File>)>,
    /// Segments whose file this run has started.
    started: std::collections::BTreeSet<u64>,
    /// The segment of the last packet with a time: where one without goes.
    last: u64,
}

/// Side files open at once.
const SIDE_OPEN: usize = 4;

impl SideFiles {
    /// Side files in `dir` for segments starting at `starts` (video time base `video_base`),
    /// for an input whose streams have time bases `bases`.
    pub fn new(
        dir: &Path,
        starts: Vec<i64>,
        video_base: ffmpeg_next::Rational,
        bases: Vec<ffmpeg_next::Rational>,
    ) -> Self {
        SideFiles {
            dir: dir.to_path_buf(),
            starts,
            video_base,
            bases,
            open: Vec::new(),
            started: Default::default(),
            last: 0,
        }
    }

    fn partial(&self, number: u64) -> PathBuf {
        side_path(&self.dir, number).with_extension("side-partial")
    }

    /// Appends `packet` (of another stream than the video) to its segment's file.
    pub fn push(&mut self, packet: &Packet) -> Result<(), MediaError> {
        use ffmpeg_next::Rescale as _;
        let base = self.bases.get(packet.stream()).copied().unwrap_or(self.video_base);
        let number = match packet.pts().or(packet.dts()) {
            Some(ts) => {
                let ts = ts.rescale(base, self.video_base);
                let n = self.starts.partition_point(|&s| s <= ts).saturating_sub(1) as u64;
                self.last = n;
                n
            }
            None => self.last,
        };
        let stream = packet.stream() as u32;
        let w = self.writer(number)?;
        write_packet(w, Some(stream), packet).map_err(|cause| io_error(&side_path(&self.dir, number), 0, cause))
    }

    fn writer(&mut self, number: u64) -> Result<&mut BufWriter<File>, MediaError> {
        if let Some(i) = self.open.iter().position(|(n, _)| *n == number) {
            let entry = self.open.remove(i);
            self.open.push(entry);
        } else {
            if self.open.len() == SIDE_OPEN {
                let (n, mut w) = self.open.remove(0);
                w.flush().map_err(|cause| io_error(&self.partial(n), 0, cause))?;
            }
            let path = self.partial(number);
            let fail = |cause| io_error(&path, 0, cause);
            let file = if self.started.insert(number) {
                let mut f = File::create(&path).map_err(fail)?;
                f.write_all(SIDE_MAGIC).map_err(fail)?;
                f
            } else {
                std::fs::OpenOptions::new().append(true).open(&path).map_err(fail)?
            };
            self.open.push((number, BufWriter::with_capacity(64 << 10, file)));
        }
        Ok(&mut self.open.last_mut().expect("just pushed").1)
    }

    /// Flushes, syncs and puts in place every segment's side file (an empty one where a segment
    /// has no other packets).
    pub fn finish(mut self) -> Result<(), MediaError> {
        for (n, mut w) in std::mem::take(&mut self.open) {
            w.flush().map_err(|cause| io_error(&self.partial(n), 0, cause))?;
        }
        for number in 0..self.starts.len() as u64 {
            let path = self.partial(number);
            let fail = |cause| io_error(&path, 0, cause);
            if self.started.insert(number) {
                File::create(&path).and_then(|mut f| f.write_all(SIDE_MAGIC)).map_err(fail)?;
            }
            File::open(&path).and_then(|f| f.sync_all()).map_err(fail)?;
            let side = side_path(&self.dir, number);
            std::fs::rename(&path, &side).map_err(|cause| MediaError::Io { path: side, cause })?;
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|cause| MediaError::Io { path: self.dir.clone(), cause })
    }
}

/// The next length-prefixed record of at most `max` bytes; `None` at the end of the file.
fn read_record(r: &mut impl Read, max: usize) -> Result<Option<Vec<u8>>, String> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(_) => return Err("unreadable".into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err("a header is too long".into());
    }
    let mut record = vec![0u8; len];
    r.read_exact(&mut record).map_err(|_| "cut short".to_string())?;
    Ok(Some(record))
}

/// Gives `packet` side data of FFmpeg's type number `kind`.
fn add_side_data(packet: &mut Packet, kind: u32, bytes: &[u8]) -> Result<(), String> {
    if kind >= ffi::AVPacketSideDataType::AV_PKT_DATA_NB as u32 {
        return Err("unknown packet side data".into());
    }
    // SAFETY: the side data types are FFmpeg's contiguous enumeration from 0 to
    // AV_PKT_DATA_NB (excluded), so `kind`, below it, is one of them; av_packet_new_side_data
    // returns null or `bytes.len()` writable bytes that the packet owns.
    unsafe {
        let kind: ffi::AVPacketSideDataType = std::mem::transmute(kind);
        let data = ffi::av_packet_new_side_data(packet.as_mut_ptr(), kind, bytes.len());
        if data.is_null() {
            return Err("no memory for packet side data".into());
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
    // The other streams' packets are the segments'. What the source demuxed of them since (or
    // while it opened: the packets before its first frame, when no frame was read from it, as
    // in segment mode or a resume with every segment committed) is dropped, not written twice.
    source.side.take_rest(&mut Vec::new());
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

//! Decoding the input's video into BGR frames, and queueing everything else for the sink.

use std::collections::VecDeque;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ffmpeg_next::format::Pixel;
use ffmpeg_next::util::color;
use ffmpeg_next::{Packet, Rational, Rescale, decoder, ffi, format, frame, media};
use opencv::core::{self as cv, Mat, RotateFlags};
use tracing::warn;

use super::FrameSource;
use super::convert::{Colour, Scaler};
use super::side::SideQueue;
use super::{MediaError, STDIO, VideoInfo};

/// The quarter turn, if any, that a stream's display matrix asks for before showing its
/// frames, rounded as FFmpeg's command line rounds it (flips and odd angles are ignored).
pub(super) fn upright_turn(stream: &format::stream::Stream<'_>) -> Option<RotateFlags> {
    let side = stream
        .side_data()
        .find(|d| d.kind() == ffmpeg_next::codec::packet::side_data::Type::DisplayMatrix && d.data().len() >= 36)?;
    let mut matrix = [0i32; 9];
    for (m, bytes) in matrix.iter_mut().zip(side.data().chunks_exact(4)) {
        *m = i32::from_ne_bytes(bytes.try_into().expect("chunks of 4"));
    }
    // SAFETY: the matrix is nine i32s, as av_display_rotation_get reads.
    let counter_clockwise = unsafe { ffi::av_display_rotation_get(matrix.as_ptr()) };
    if !counter_clockwise.is_finite() {
        return None;
    }
    let clockwise = (-counter_clockwise.round()).rem_euclid(360.0);
    match clockwise.round() as i32 {
        90 => Some(RotateFlags::ROTATE_90_CLOCKWISE),
        180 => Some(RotateFlags::ROTATE_180),
        270 => Some(RotateFlags::ROTATE_90_COUNTERCLOCKWISE),
        _ => None,
    }
}

/// Video packets of a live input whose read time is kept until their frame is decoded.
const MAX_PACKET_READS: usize = 256;

/// Frame rate assumed when the container gives none (or nonsense).
const FALLBACK_FPS: f64 = 25.0;

/// Checks that `path` can be read as a stream: a readable, non-empty regular file (its size is
/// returned), a named pipe, or `-` (standard input).
pub fn check_input(path: &Path) -> Result<Option<u64>, MediaError> {
    if path == Path::new(STDIO) {
        return Ok(None);
    }
    let io = |cause| MediaError::Io { path: path.to_path_buf(), cause };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => MediaError::NotFound(path.to_path_buf()),
        _ => io(e),
    })?;
    if meta.file_type().is_fifo() {
        return Ok(None);
    }
    if !meta.is_file() {
        return Err(MediaError::NotAFile(path.to_path_buf()));
    }
    if meta.len() == 0 {
        return Err(MediaError::EmptyFile(path.to_path_buf()));
    }
    // FFmpeg reports an unreadable file as "cannot open"; the OS says why.
    File::open(path).map_err(io)?;
    Ok(Some(meta.len()))
}

/// An input being decoded, frame by frame.
pub struct MediaSource {
    path: PathBuf,
    pub(super) input: format::context::Input,
    pub(super) video: usize,
    decoder: decoder::Video,
    pub(super) time_base: Rational,
    info: VideoInfo,
    pub(super) colour: Colour,
    pub(super) primaries: color::Primaries,
    pub(super) transfer: color::TransferCharacteristic,
    pub(super) aspect_ratio: Rational,
    /// Input streams whose packets are queued for the sink.
    pub(super) copied: Vec<bool>,
    pub(super) side: Arc<SideQueue>,
    converter: Converter,
    /// Frames decoded but not handed out yet.
    ready: VecDeque<Mat>,
    decoded: u64,
    /// The end the container announces for the video, in seconds from its first frame.
    expected_end: Option<f64>,
    /// The latest frame timestamp decoded, in the stream's time base.
    last_pts: Option<i64>,
    first_pts: Option<i64>,
    ended: bool,
    warned_resize: bool,
    /// Set to end a blocking read of a live input at once (FFmpeg's interrupt callback).
    interrupt: Arc<AtomicBool>,
    /// A live input: read as it comes, opened again when lost.
    live: Option<Live>,
    /// When the packet last sent to the decoder was read, and for each ready frame the read
    /// time of the packet that let it out.
    packet_read_at: Option<Instant>,
    /// The video packets read and not yet decoded, by presentation time: a frame's latency
    /// counts from its own packet's read, whatever the decoder held back.
    packet_reads: VecDeque<(Option<i64>, Instant)>,
    ready_read_at: VecDeque<(Instant, Option<i64>)>,
    handed_read_at: Option<(Instant, Option<i64>)>,
}

/// How a live input was opened, to open it again, and how its timestamps run on across
/// openings: from 0 at the first frame, in the first opening's time base, never backwards.
#[derive(Clone)]
struct Live {
    /// The time base the output's timestamps are in: the first opening's.
    out_tb: Rational,
    /// Added to this opening's timestamps (rescaled); set at its first frame.
    shift: Option<i64>,
    /// Where this opening's first frame goes: just after the last frame of the one before.
    next: i64,
    /// The last timestamp handed out.
    last: Option<i64>,
}

/// A jump in a live input's timestamps larger than this is a discontinuity (a sender that
/// restarted, a wrapped clock), not a gap in the stream.
const LIVE_JUMP_SECONDS: i64 = 10;

impl Live {
    /// `pts` (in `tb`) on the output's timeline, `frame` (one frame's duration in the output's
    /// time base) after the last when the input's own timestamps went back or jumped ahead.
    fn place(&mut self, pts: i64, tb: Rational, frame: i64) -> i64 {
        let p = pts.rescale(tb, self.out_tb);
        let shift = *self.shift.get_or_insert(self.next - p);
        let Some(last) = self.last else {
            self.last = Some(p + shift);
            return p + shift;
        };
        let jump = LIVE_JUMP_SECONDS.rescale(Rational::new(1, 1), self.out_tb);
        let placed = if p + shift <= last || p + shift > last + jump {
            // A discontinuity: the timeline goes on one frame after the last frame.
            tracing::info!("the live input's timestamps jumped; going on from the last frame");
            self.shift = Some(last + frame - p);
            last + frame
        } else {
            p + shift
        };
        self.last = Some(placed);
        placed
    }
}

/// Decoded frames to upright 8-bit BGR: libswscale with the stream's matrix and range, at the
/// stream's first size, then the turn its display matrix asks for.
pub(super) struct Converter {
    /// The decoded frames' size, before `turn`.
    stored: (u32, u32),
    /// The turn that makes the stored frames upright.
    turn: Option<RotateFlags>,
    colour: Colour,
    scaler: Option<Scaler>,
}

impl Converter {
    /// A converter for frames stored at `stored`, turned by `turn`.
    pub(super) fn new(stored: (u32, u32), turn: Option<RotateFlags>, colour: Colour) -> Self {
        Converter { stored, turn, colour, scaler: None }
    }

    /// The frames' size once upright.
    pub(super) fn upright_size(&self) -> (u32, u32) {
        let (w, h) = self.stored;
        if quarter(self.turn) { (h, w) } else { (w, h) }
    }

    /// The stored size.
    pub(super) fn stored(&self) -> (u32, u32) {
        self.stored
    }

    /// `decoded` as upright BGR, converted straight into a new `Mat`; `path` names the input
    /// in errors.
    pub(super) fn convert(&mut self, decoded: &frame::Video, path: &Path) -> Result<Mat, MediaError> {
        let (w, h) = self.stored;
        let src = (decoded.format(), decoded.width(), decoded.height());
        let dst = (Pixel::BGR24, w, h);
        if !self.scaler.as_ref().is_some_and(|s| s.fits(src, dst)) {
            let scaler = Scaler::new(src, dst, self.colour).map_err(|error| MediaError::Ffmpeg {
                path: path.to_path_buf(),
                what: "converting frames to BGR",
                error,
            })?;
            self.scaler = Some(scaler);
        }
        let mat = self.scaler.as_mut().expect("made above").decode(decoded)?;
        if let Some(turn) = self.turn {
            let mut upright = Mat::default();
            cv::rotate(&mat, &mut upright, turn.into())?;
            return Ok(upright);
        }
        Ok(mat)
    }
}

/// Whether `turn` is a quarter turn (width and height swap).
fn quarter(turn: Option<RotateFlags>) -> bool {
    matches!(turn, Some(RotateFlags::ROTATE_90_CLOCKWISE | RotateFlags::ROTATE_90_COUNTERCLOCKWISE))
}

/// The sample aspect ratio `sar` of stored frames, for the frames turned upright by `turn`.
pub(super) fn upright_aspect(sar: Rational, turn: Option<RotateFlags>) -> Rational {
    if quarter(turn) && sar.numerator() > 0 { Rational::new(sar.denominator(), sar.numerator()) } else { sar }
}

/// `turn` as clockwise degrees, for a task to carry.
pub(super) fn turn_degrees(turn: Option<RotateFlags>) -> u16 {
    match turn {
        Some(RotateFlags::ROTATE_90_CLOCKWISE) => 90,
        Some(RotateFlags::ROTATE_180) => 180,
        Some(RotateFlags::ROTATE_90_COUNTERCLOCKWISE) => 270,
        None => 0,
    }
}

/// The turn of `degrees` clockwise; `None` inside for none, an error for what is not a quarter.
pub(super) fn turn_of(degrees: u16) -> Result<Option<RotateFlags>, String> {
    match degrees {
        0 => Ok(None),
        90 => Ok(Some(RotateFlags::ROTATE_90_CLOCKWISE)),
        180 => Ok(Some(RotateFlags::ROTATE_180)),
        270 => Ok(Some(RotateFlags::ROTATE_90_COUNTERCLOCKWISE)),
        other => Err(format!("a turn of {other} degrees")),
    }
}

/// The rate a video stream is read at: its average rate, else its base rate, else
/// [`FALLBACK_FPS`] (said in a warning).
fn stream_fps(stream: &ffmpeg_next::format::stream::Stream<'_>, path: &Path) -> f64 {
    [stream.avg_frame_rate(), stream.rate()]
        .into_iter()
        .map(f64::from)
        .find(|f| f.is_finite() && (0.1..=1000.0).contains(f))
        .unwrap_or_else(|| {
            warn!(path = %path.display(), "the container gives no usable frame rate; assuming {FALLBACK_FPS} fps");
            FALLBACK_FPS
        })
}

impl MediaSource {
    /// The rate `open` would read `path`'s video at, from its container alone (nothing decoded).
    pub fn rate_of(path: &Path) -> Result<f64, MediaError> {
        super::init();
        check_input(path)?;
        let input = format::input(&path).map_err(|_| MediaError::NotAVideo(path.to_path_buf()))?;
        let stream =
            input.streams().best(media::Type::Video).ok_or_else(|| MediaError::NoVideoStream(path.to_path_buf()))?;
        Ok(stream_fps(&stream, path))
    }

    /// Opens `path` (`-` for standard input) and decodes its first frame, so that an input with
    /// no usable video fails here, before any work starts.
    pub fn open(path: &Path) -> Result<Self, MediaError> {
        super::init();
        check_input(path)?;
        let url = if path == Path::new(STDIO) { PathBuf::from("pipe:0") } else { path.to_path_buf() };
        let input = format::input(&url).map_err(|_| MediaError::NotAVideo(path.to_path_buf()))?;
        Self::from_input(path, input, None, Arc::default(), None)
    }

    /// Opens a live input (a network URL, a capture device, or a file or pipe read as one):
    /// its video only. Setting `interrupt` ends a read blocked on the network at once (FFmpeg's
    /// interrupt callback), and any read after it. Its first frame is decoded, as
    /// [`MediaSource::open`] does.
    pub fn open_live(path: &Path, interrupt: Arc<AtomicBool>) -> Result<Self, MediaError> {
        Self::open_live_after(path, interrupt, None)
    }

    /// [`MediaSource::open_live`], going on from `before` (the opening that was lost): its side
    /// queue and its timeline.
    fn open_live_after(
        path: &Path,
        interrupt: Arc<AtomicBool>,
        before: Option<&MediaSource>,
    ) -> Result<Self, MediaError> {
        super::init();
        let input = open_live_input(path, &interrupt)?;
        let live = match before.and_then(|b| b.live.as_ref().map(|l| (b, l))) {
            Some((b, l)) => {
                let frame = 1i64.rescale(Rational::from(b.info.fps).invert(), l.out_tb).max(1);
                Live { out_tb: l.out_tb, shift: None, next: l.last.map_or(0, |t| t + frame), last: l.last }
            }
            // A relayed stream keeps its sender's timeline (from 0 at its first packet): the
            // sender knows each frame that comes back by its time.
            None if super::live::is_pipe_url(path) => {
                Live { out_tb: Rational::new(0, 1), shift: Some(0), next: 0, last: None }
            }
            None => Live { out_tb: Rational::new(0, 1), shift: None, next: 0, last: None },
        };
        Self::from_input(path, input, Some(live), interrupt, before.map(|b| b.side.clone()))
    }

    /// The same live input opened again (after it was lost), with the same side queue.
    pub fn reopen(&self) -> Result<Self, MediaError> {
        if self.live.is_none() {
            return Err(MediaError::Io {
                path: self.path.clone(),
                cause: std::io::Error::other("only a live input is opened again"),
            });
        }
        let fresh = Self::open_live_after(&self.path, self.interrupt.clone(), Some(self))?;
        if fresh.info.width != self.info.width || fresh.info.height != self.info.height {
            warn!(
                input = %self.path.display(),
                "the live input came back at {}x{}; scaling it to {}x{}",
                fresh.info.width, fresh.info.height, self.info.width, self.info.height
            );
        }
        Ok(fresh)
    }

    fn from_input(
        path: &Path,
        input: format::context::Input,
        mut live: Option<Live>,
        interrupt: Arc<AtomicBool>,
        side: Option<Arc<SideQueue>>,
    ) -> Result<Self, MediaError> {
        let stream =
            input.streams().best(media::Type::Video).ok_or_else(|| MediaError::NoVideoStream(path.to_path_buf()))?;
        let video = stream.index();
        let time_base = stream.time_base();
        let mut context =
            ffmpeg_next::codec::context::Context::from_parameters(stream.parameters()).map_err(|error| {
                MediaError::Ffmpeg { path: path.to_path_buf(), what: "reading the video stream", error }
            })?;
        super::all_threads(&mut context);
        if live.is_some() {
            // Frame threads hold a frame per thread before the first comes out: latency a
            // live stream does not have to spare. Slices still decode in parallel.
            // SAFETY: sets a plain field of a codec context that is not open yet.
            unsafe { (*context.as_mut_ptr()).thread_type = ffmpeg_next::ffi::FF_THREAD_SLICE };
        }
        let codec_name = context.id().name().to_string();
        let decoder = context
            .decoder()
            .video()
            .map_err(|_| MediaError::Undecodable { path: path.to_path_buf(), codec: codec_name })?;
        let fps = stream_fps(&stream, path);
        // Where the video should end, for telling a truncated file: the stream's duration, or
        // the container's. (Frame counts can be estimates; durations hold for variable rates.)
        let expected_end = if stream.duration() > 0 {
            Some(stream.duration() as f64 * f64::from(time_base))
        } else if input.duration() > 0 {
            Some(input.duration() as f64 / f64::from(ffmpeg_next::ffi::AV_TIME_BASE))
        } else {
            None
        };
        let frame_count = match stream.frames() {
            n if n > 0 => Some(n as u64),
            _ if stream.duration() > 0 => Some((stream.duration() as f64 * f64::from(time_base) * fps).round() as u64),
            _ if input.duration() > 0 => {
                Some((input.duration() as f64 / f64::from(ffmpeg_next::ffi::AV_TIME_BASE) * fps).round() as u64)
            }
            _ => None,
        }
        .filter(|n| *n > 0);
        let colour = Colour { space: decoder.color_space(), range: decoder.color_range() };
        let (primaries, transfer) = (decoder.color_primaries(), decoder.color_transfer_characteristic());
        // A phone's portrait video is stored sideways with a display matrix saying how to turn
        // it. Frames are turned upright here, as players and FFmpeg's command line show them:
        // filters (faces above all) see the picture as people do, and the output needs no
        // matrix, which not every container can hold.
        let turn = upright_turn(&stream);
        let converter = Converter::new((decoder.width(), decoder.height()), turn, colour);
        let (width, height) = converter.upright_size();
        let aspect_ratio = upright_aspect(decoder.aspect_ratio(), turn);
        let info = VideoInfo { width, height, fps, frame_count };
        if info.width == 0 || info.height == 0 {
            return Err(MediaError::NoFrames(path.to_path_buf()));
        }
        // A live job carries its video only: what it drops would tear the other streams.
        let copied = input
            .streams()
            .map(|s| live.is_none() && s.index() != video && copyable(s.parameters().medium()))
            .collect();
        let expected_end = if live.is_some() { None } else { expected_end };
        if let Some(l) = live.as_mut().filter(|l| l.out_tb.numerator() == 0) {
            l.out_tb = time_base;
        }
        let time_base = live.as_ref().map_or(time_base, |l| l.out_tb);
        let mut source = MediaSource {
            path: path.to_path_buf(),
            input,
            video,
            decoder,
            time_base,
            info,
            colour,
            primaries,
            transfer,
            aspect_ratio,
            copied,
            side: side.unwrap_or_default(),
            converter,
            ready: VecDeque::new(),
            decoded: 0,
            expected_end,
            last_pts: None,
            first_pts: None,
            ended: false,
            warned_resize: false,
            interrupt,
            live,
            packet_read_at: None,
            packet_reads: VecDeque::new(),
            ready_read_at: VecDeque::new(),
            handed_read_at: None,
        };
        source.fill()?;
        if source.ready.is_empty() {
            return Err(MediaError::NoFrames(path.to_path_buf()));
        }
        Ok(source)
    }

    /// The stream's size, rate and announced length.
    pub fn info(&self) -> VideoInfo {
        self.info
    }

    /// Demuxes and decodes until at least one frame is ready or the input ends.
    fn fill(&mut self) -> Result<(), MediaError> {
        while self.ready.is_empty() && !self.ended {
            // A fresh packet each time: av_read_frame does not release what a packet held.
            let mut packet = Packet::empty();
            match packet.read(&mut self.input) {
                Ok(()) => self.packet_read_at = Some(Instant::now()),
                // A live input that broke or was stopped: its reader decides what comes next.
                Err(e) if self.live.is_some() && !matches!(e, ffmpeg_next::Error::Eof) => {
                    self.ended = true;
                    return Err(MediaError::Ffmpeg {
                        path: self.path.clone(),
                        what: "reading the live input",
                        error: e,
                    });
                }
                Err(ffmpeg_next::Error::Eof) => {
                    let _ = self.decoder.send_eof();
                    self.receive()?;
                    self.ended = true;
                    break;
                }
                // A damaged packet: skip it, as FFmpeg does; a truncation shows as missing frames.
                Err(_) => continue,
            }
            let index = packet.stream();
            if index == self.video {
                if self.live.is_some() {
                    self.packet_reads.push_back((packet.pts(), self.packet_read_at.unwrap_or_else(Instant::now)));
                    if self.packet_reads.len() > MAX_PACKET_READS {
                        self.packet_reads.pop_front();
                    }
                }
                if self.decoder.send_packet(&packet).is_ok() {
                    self.receive()?;
                }
            } else if self.copied.get(index).copied().unwrap_or(false) {
                self.side
                    .push_packet(packet)
                    .map_err(|e| MediaError::Io { path: self.path.clone(), cause: std::io::Error::other(e) })?;
            }
        }
        Ok(())
    }

    /// Takes every frame the decoder has ready.
    fn receive(&mut self) -> Result<(), MediaError> {
        let mut decoded = frame::Video::empty();
        while self.decoder.receive_frame(&mut decoded).is_ok() {
            let mat = self.convert(&decoded)?;
            let own = decoded.timestamp().and_then(|t| self.packet_reads.iter().position(|(p, _)| *p == Some(t)));
            let read_at = match own {
                Some(i) => self.packet_reads.remove(i).map(|(_, at)| at),
                None => self.packet_read_at,
            };
            let pts = match &mut self.live {
                Some(live) => {
                    let stream_tb = self.input.stream(self.video).map_or(self.time_base, |s| s.time_base());
                    let frame = 1i64.rescale(Rational::from(self.info.fps).invert(), self.time_base).max(1);
                    decoded.timestamp().map(|p| live.place(p, stream_tb, frame))
                }
                None => decoded.timestamp(),
            };
            if let Some(p) = pts {
                self.first_pts.get_or_insert(p);
                self.last_pts = Some(self.last_pts.map_or(p, |l| l.max(p)));
            }
            self.side.push_frame(pts);
            self.ready.push_back(mat);
            self.ready_read_at.push_back((read_at.unwrap_or_else(Instant::now), pts));
        }
        Ok(())
    }

    /// The frame as 8-bit BGR at the stream's first size, converted straight into a new `Mat`,
    /// and turned upright.
    fn convert(&mut self, decoded: &frame::Video) -> Result<Mat, MediaError> {
        if (decoded.width(), decoded.height()) != self.converter.stored() && !self.warned_resize {
            warn!(path = %self.path.display(), frame = self.decoded, "frame size changed mid-stream; scaling to the first frame's size");
            self.warned_resize = true;
        }
        self.converter.convert(decoded, &self.path)
    }

    /// At the end of the stream: an error if the video stopped well before the end the
    /// container announces (by time, so that variable frame rates are judged right).
    fn check_complete(&self) -> Result<(), MediaError> {
        let (Some(expected), Some(first), Some(last)) = (self.expected_end, self.first_pts, self.last_pts) else {
            return Ok(());
        };
        // The last frame starts one frame before the end; allow two frames and 2 % for
        // containers whose durations are rounded or estimated. A truncated file falls far shorter.
        let reached = (last - first) as f64 * f64::from(self.time_base) + 1.0 / self.info.fps;
        if reached + 2.0 / self.info.fps < expected * 0.98 {
            return Err(MediaError::Truncated { path: self.path.clone(), decoded: self.decoded, reached, expected });
        }
        Ok(())
    }
}

impl MediaSource {
    /// The input as the user named it.
    pub fn shown(&self) -> &Path {
        &self.path
    }

    /// Whether the input is read live ([`MediaSource::open_live`]).
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// Whether the input is live and was opened over the network or from a device: lost, it
    /// is opened again rather than ended.
    pub fn is_network(&self) -> bool {
        self.live.is_some() && (super::live::is_url(&self.path) || super::live::is_capture_device(&self.path))
    }

    /// Set to end a blocking read at once.
    pub fn interrupt(&self) -> Arc<AtomicBool> {
        self.interrupt.clone()
    }

    /// When the packet that let the frame last handed out of the decoder was read.
    pub fn last_read_at(&self) -> Option<Instant> {
        self.handed_read_at.map(|(at, _)| at)
    }

    /// The presentation time of the frame last handed out, in seconds, where it has one.
    pub fn last_time(&self) -> Option<f64> {
        self.handed_read_at.and_then(|(_, pts)| pts).map(|p| p as f64 * f64::from(self.time_base))
    }

    /// Forgets the `seq`th frame handed out (from 0, across openings), which a live job
    /// dropped before dispatch, so that the sink does not take its timestamp: callable from any
    /// thread, for as long as the job runs.
    pub fn frame_forgetter(&self) -> Box<dyn Fn(u64) + Send + Sync> {
        let side = self.side.clone();
        Box::new(move |seq| side.drop_frame(seq))
    }

    /// Skips the first `committed` frames, which a resumed job already wrote, so that the next
    /// frame is frame `committed`; returns frame `committed - 1` when `keep_previous` (the true
    /// previous source frame, for `motion`). `last_pts` is that frame's timestamp: the input is
    /// then sought to the keyframe before it and only the frames from there are decoded again.
    /// Without a timestamp every skipped frame is decoded.
    pub fn skip_committed(
        &mut self,
        committed: u64,
        last_pts: Option<i64>,
        keep_previous: bool,
    ) -> Result<Option<Mat>, MediaError> {
        if committed == 0 {
            return Ok(None);
        }
        let mut previous = None;
        let Some(last) = last_pts else {
            for _ in 0..committed {
                let frame = self.next_frame().map_err(|e| self.io(e))?.ok_or_else(|| self.ended_before(committed))?;
                self.side.pop_frame();
                previous = keep_previous.then_some(frame);
            }
            return Ok(previous);
        };
        // SAFETY: a plain call on the open input; timestamps are in the video stream's time base.
        let sought =
            unsafe { ffi::avformat_seek_file(self.input.as_mut_ptr(), self.video as i32, i64::MIN, last, last, 0) };
        if sought < 0 {
            return Err(MediaError::Ffmpeg {
                path: self.path.clone(),
                what: "seeking to the resume point",
                error: ffmpeg_next::Error::from(sought),
            });
        }
        self.decoder.flush();
        self.ready.clear();
        self.ready_read_at.clear();
        self.side.clear();
        self.ended = false;
        let mut reached = false;
        loop {
            if self.ready.is_empty() {
                self.fill()?;
            }
            let read_at = self.ready_read_at.pop_front();
            let Some(frame) = self.ready.pop_front() else {
                // Every frame was committed: nothing is left to do but the join.
                if reached {
                    break;
                }
                return Err(self.ended_before(committed));
            };
            // The other streams' packets stay queued: the first segment written takes them, and
            // the join passes over what an earlier segment already holds.
            match self.side.next_frame().flatten() {
                Some(p) if p > last => {
                    self.ready.push_front(frame);
                    if let Some(at) = read_at {
                        self.ready_read_at.push_front(at);
                    }
                    break;
                }
                Some(p) if p == last => {
                    reached = true;
                    if keep_previous {
                        previous = Some(frame);
                    }
                }
                _ => {}
            }
            self.side.skip_frame();
        }
        self.decoded = committed;
        Ok(previous)
    }

    fn ended_before(&self, committed: u64) -> MediaError {
        MediaError::Truncated {
            path: self.path.clone(),
            decoded: self.decoded,
            reached: 0.0,
            expected: committed as f64 / self.info.fps.max(f64::EPSILON),
        }
    }

    fn io(&self, e: anyhow::Error) -> MediaError {
        MediaError::Io { path: self.path.clone(), cause: std::io::Error::other(e.to_string()) }
    }
}

/// Streams copied to the output besides the video: audio, subtitles and data (attachments
/// and further video streams are not).
fn copyable(medium: media::Type) -> bool {
    matches!(medium, media::Type::Audio | media::Type::Subtitle | media::Type::Data)
}

impl FrameSource for MediaSource {
    fn next_frame(&mut self) -> anyhow::Result<Option<Mat>> {
        if self.ready.is_empty() {
            self.fill()?;
        }
        match self.ready.pop_front() {
            Some(frame) => {
                self.decoded += 1;
                self.handed_read_at = self.ready_read_at.pop_front();
                Ok(Some(frame))
            }
            None => {
                self.check_complete()?;
                Ok(None)
            }
        }
    }
}

/// A V4L2 capture device, through libavdevice's `video4linux2` input: FFmpeg does not guess
/// it from the path. A device's reads wait at most a frame, so no interrupt is needed.
/// Opens `path` to read live, with the options of [`super::live::input_options`]: a network
/// URL, a capture device, a relayed `pipe:N`, or a file or named pipe read as one. Setting
/// `interrupt` ends a read blocked on the network at once.
pub(super) fn open_live_input(path: &Path, interrupt: &Arc<AtomicBool>) -> Result<format::context::Input, MediaError> {
    super::init();
    let live = super::live::is_url(path) || super::live::is_capture_device(path) || super::live::is_pipe_url(path);
    if !live {
        check_input(path)?;
    }
    let url = if path == Path::new(STDIO) { PathBuf::from("pipe:0") } else { path.to_path_buf() };
    let mut options = ffmpeg_next::Dictionary::new();
    for (k, v) in super::live::input_options(path) {
        options.set(k, &v);
    }
    let flag = interrupt.clone();
    let opened = if super::live::is_capture_device(path) {
        open_capture_device(&url, options)
    } else {
        format::input_with_interrupt_and_dictionary(&url, move || flag.load(Ordering::Relaxed), options)
    };
    opened.map_err(|e| match e {
        _ if interrupt.load(Ordering::Relaxed) => MediaError::Io {
            path: path.to_path_buf(),
            cause: std::io::Error::new(ErrorKind::Interrupted, "stopped while opening"),
        },
        ffmpeg_next::Error::Other { errno } if errno != 0 => {
            MediaError::Io { path: path.to_path_buf(), cause: std::io::Error::from_raw_os_error(errno) }
        }
        error => MediaError::Ffmpeg { path: path.to_path_buf(), what: "opening the live input", error },
    })
}

fn open_capture_device(
    url: &Path,
    options: ffmpeg_next::Dictionary,
) -> Result<format::context::Input, ffmpeg_next::Error> {
    // SAFETY: av_find_input_format reads a NUL-terminated name and returns a static format,
    // or null when this FFmpeg has no such input.
    let v4l2 = unsafe { ffmpeg_next::ffi::av_find_input_format(c"video4linux2".as_ptr()) };
    if v4l2.is_null() {
        return Err(ffmpeg_next::Error::DemuxerNotFound);
    }
    // SAFETY: the pointer is FFmpeg's own static input format, checked above.
    let v4l2 = ffmpeg_next::Format::Input(unsafe { format::Input::wrap(v4l2 as *mut _) });
    match format::open_with(url, &v4l2, options)? {
        format::context::Context::Input(input) => Ok(input),
        format::context::Context::Output(_) => Err(ffmpeg_next::Error::Bug),
    }
}

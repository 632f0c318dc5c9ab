//! Segments as compressed packets: the server cuts the input's video into segments of packets
//! ([`Cutter`], one pass over the file), and whoever holds one decodes it ([`decode`]) and encodes
//! its filtered frames into a segment file ([`encode`]) that the join takes as it takes a
//! segment written locally.
//!
//! A [`SegmentInput`] carries the packets from the keyframe its [`Cut`] starts at, the input
//! stream's parameters (codec, extradata, size, pixel format, time base, colour), its rate and
//! the turn that makes its frames upright. Its frames decode to exactly what
//! [`super::MediaSource`] gives for them: the same decoder, the same conversion.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use ffmpeg_next::{Packet, Rational, codec, decoder, format, frame, media};
use opencv::core::{Mat, RotateFlags};
use serde::{Deserialize, Serialize};

use super::convert::Colour;
use super::encoder::{Container, Frames, VideoEncoder};
use super::index::{Cut, VideoIndex};
use super::segment::{SideFiles, write_header, write_packet};
use super::source::{Converter, turn_degrees, turn_of, upright_aspect, upright_turn};
use super::stream::VideoParams;
use super::{MediaError, OutputOptions};

/// One compressed video packet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawPacket {
    /// Presentation timestamp, in the stream's time base.
    pub pts: Option<i64>,
    /// Decoding timestamp.
    pub dts: Option<i64>,
    /// Duration.
    pub duration: i64,
    /// FFmpeg's packet flags.
    pub flags: i32,
    /// The bytes.
    pub data: Vec<u8>,
}

/// A segment of the input's video as compressed packets, with what it takes to decode them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentInput {
    /// Its number.
    pub number: u64,
    /// The input video stream's parameters.
    pub stream: VideoParams,
    /// Clockwise degrees (0, 90, 180, 270) that turn the stored frames upright.
    pub turn: u16,
    /// The frame rate vpd reads the input at.
    pub fps: f64,
    /// The stream's average rate, for the output container.
    pub rate: (i32, i32),
    /// The presentation timestamps of the segment's frames, in order.
    pub frames: Vec<i64>,
    /// The timestamp of the frame before them, which the packets also give, where asked for.
    pub previous: Option<i64>,
    /// The packets, in decoding order.
    pub packets: Vec<RawPacket>,
}

/// The frames of a [`SegmentInput`], decoded and upright.
pub struct Decoded {
    /// The frame before the segment's first, where it was asked for.
    pub previous: Option<Mat>,
    /// The segment's frames, in order, with their timestamps.
    pub frames: Vec<(i64, Mat)>,
}

/// Cuts the input's video into [`SegmentInput`]s in one pass over the file.
pub struct Cutter {
    path: PathBuf,
    input: format::context::Input,
    video: usize,
    index: VideoIndex,
    per_segment: u64,
    with_previous: bool,
    next: u64,
    /// Packets read, by decoding position, that a later segment may still need.
    held: VecDeque<(usize, RawPacket)>,
    /// The decoding position of the next video packet to be read.
    read: usize,
    stream: VideoParams,
    turn: u16,
    fps: f64,
    rate: (i32, i32),
    /// Where the other streams' packets go, when they are kept.
    side: Option<SideFiles>,
}

impl Cutter {
    /// A cutter of `path`'s video into segments of `per_segment` frames, each with the frame
    /// before it where `with_previous`; `index` is the video's, `fps` the rate vpd reads it at.
    /// An error says why the input cannot be cut (then frame mode is what is left).
    pub fn open(
        path: &Path,
        index: VideoIndex,
        per_segment: u64,
        with_previous: bool,
        fps: f64,
    ) -> Result<Self, MediaError> {
        super::init();
        if let Some(why) = index.unusable() {
            return Err(MediaError::Uncuttable { path: path.to_path_buf(), why });
        }
        let input = format::input(&path).map_err(|_| MediaError::NotAVideo(path.to_path_buf()))?;
        let stream =
            input.streams().best(media::Type::Video).ok_or_else(|| MediaError::NoVideoStream(path.to_path_buf()))?;
        let video = stream.index();
        let par = stream.parameters();
        let context = codec::context::Context::from_parameters(par.clone()).map_err(|error| MediaError::Ffmpeg {
            path: path.to_path_buf(),
            what: "reading the video stream",
            error,
        })?;
        let codec = context.id().name().to_string();
        let decoder =
            context.decoder().video().map_err(|_| MediaError::Undecodable { path: path.to_path_buf(), codec })?;
        let turn = turn_degrees(upright_turn(&stream));
        let rate = stream.avg_frame_rate();
        let params = VideoParams::of_input(&par, &decoder, stream.time_base());
        Ok(Cutter {
            path: path.to_path_buf(),
            input,
            video,
            index,
            per_segment: per_segment.max(1),
            with_previous,
            next: 0,
            held: VecDeque::new(),
            read: 0,
            stream: params,
            turn,
            fps,
            rate: (rate.numerator(), rate.denominator()),
            side: None,
        })
    }

    /// Keeps the input's other streams (audio, subtitles, …) in side files in `dir`, one per
    /// segment, which [`Cutter::finish`] puts in place.
    pub fn with_side_files(mut self, dir: &Path) -> Self {
        let starts = (0..self.segments()).filter_map(|n| self.index.frame_pts(n * self.per_segment)).collect();
        let bases = self.input.streams().map(|s| s.time_base()).collect();
        self.side = Some(SideFiles::new(dir, starts, self.stream.time_base(), bases));
        self
    }

    /// Reads the input to its end, for the other streams' last packets, and puts the side files
    /// in place.
    pub fn finish(mut self) -> Result<(), MediaError> {
        let Some(mut side) = self.side.take() else { return Ok(()) };
        loop {
            let mut packet = Packet::empty();
            match packet.read(&mut self.input) {
                Ok(()) if packet.stream() != self.video => side.push(&packet)?,
                Ok(()) => {}
                Err(ffmpeg_next::Error::Eof) => break,
                Err(_) => continue,
            }
        }
        side.finish()
    }

    /// Segments in the video.
    pub fn segments(&self) -> u64 {
        self.index.frames().div_ceil(self.per_segment)
    }

    /// The next segment, or `None` after the last.
    pub fn next_segment(&mut self) -> Result<Option<SegmentInput>, MediaError> {
        let Some(Cut { packets, frames, previous }) = self.index.cut(self.next, self.per_segment, self.with_previous)
        else {
            return Ok(None);
        };
        // Packets no segment from here on needs go; those it needs are read.
        while self.held.front().is_some_and(|(at, _)| *at < packets.start) {
            self.held.pop_front();
        }
        while self.read < packets.end {
            let mut packet = Packet::empty();
            match packet.read(&mut self.input) {
                Ok(()) => {}
                Err(ffmpeg_next::Error::Eof) => {
                    return Err(MediaError::Uncuttable {
                        path: self.path.clone(),
                        why: "the video ended before its index said".into(),
                    });
                }
                Err(_) => continue,
            }
            if packet.stream() != self.video {
                if let Some(side) = &mut self.side {
                    side.push(&packet)?;
                }
                continue;
            }
            let raw = RawPacket {
                pts: packet.pts(),
                dts: packet.dts(),
                duration: packet.duration(),
                flags: packet.flags().bits(),
                data: packet.data().unwrap_or_default().to_vec(),
            };
            let entry = self.index.entries()[self.read];
            if (raw.pts, raw.dts) != (entry.pts, entry.dts) {
                return Err(MediaError::Uncuttable {
                    path: self.path.clone(),
                    why: "the video's packets changed since it was indexed".into(),
                });
            }
            self.held.push_back((self.read, raw));
            self.read += 1;
        }
        let number = self.next;
        self.next += 1;
        Ok(Some(SegmentInput {
            number,
            stream: self.stream.clone(),
            turn: self.turn,
            fps: self.fps,
            rate: self.rate,
            frames,
            previous,
            packets: self.held.iter().filter(|(at, _)| packets.contains(at)).map(|(_, p)| p.clone()).collect(),
        }))
    }
}

/// A decoder for `input`'s stream, the conversion of its frames, and their turn; `shown` names
/// it in errors.
fn open_decoder(
    input: &SegmentInput,
    shown: &Path,
) -> Result<(decoder::Video, Converter, Option<RotateFlags>), MediaError> {
    super::init();
    let bad = |why: String| MediaError::Uncuttable { path: shown.to_path_buf(), why };
    let par = input.stream.to_codec().map_err(bad)?;
    let mut context = codec::context::Context::from_parameters(par).map_err(|error| MediaError::Ffmpeg {
        path: shown.to_path_buf(),
        what: "reading the video stream",
        error,
    })?;
    super::all_threads(&mut context);
    let decoder = context
        .decoder()
        .video()
        .map_err(|_| MediaError::Undecodable { path: shown.to_path_buf(), codec: input.stream.codec.clone() })?;
    let turn = turn_of(input.turn).map_err(bad)?;
    let colour = Colour { space: decoder.color_space(), range: decoder.color_range() };
    let converter = Converter::new((decoder.width(), decoder.height()), turn, colour);
    Ok((decoder, converter, turn))
}

/// Decodes `input`'s frames; `shown` names it in errors. Every frame it lists must come out.
pub fn decode(input: &SegmentInput, shown: &Path) -> Result<Decoded, MediaError> {
    let mut decoded = Decoded { previous: None, frames: Vec::with_capacity(input.frames.len()) };
    decode_each(input, shown, |frame| {
        match frame {
            SegmentFrame::Previous(m) => decoded.previous = Some(m),
            SegmentFrame::Frame(pts, m) => decoded.frames.push((pts, m)),
        }
        Ok(())
    })
    .map_err(|e| match e.downcast::<MediaError>() {
        Ok(e) => e,
        Err(e) => MediaError::Uncuttable { path: shown.to_path_buf(), why: format!("{e:#}") },
    })?;
    Ok(decoded)
}

/// A frame [`decode_each`] hands on.
pub enum SegmentFrame {
    /// The frame before the segment's first, where it was asked for: first of all.
    Previous(Mat),
    /// One of the segment's frames, in order, with its timestamp.
    Frame(i64, Mat),
}

/// Decodes `input`'s frames and hands each to `each` in presentation order as it comes out of
/// the decoder, so that a segment is never held decoded whole; `shown` names it in errors.
/// Every frame it lists must come out, in order, and nothing else: otherwise an error, which
/// also stops at the first frame out of place.
pub fn decode_each(
    input: &SegmentInput,
    shown: &Path,
    mut each: impl FnMut(SegmentFrame) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (mut decoder, mut converter, _) = open_decoder(input, shown)?;
    // What comes next: the previous frame (where asked for), then the frames in order.
    let expected: Vec<i64> = input.previous.iter().chain(&input.frames).copied().collect();
    let mut next = 0usize;
    let missing = |got: usize| MediaError::Uncuttable {
        path: shown.to_path_buf(),
        why: format!(
            "segment {}: its packets gave {} of its {} frames",
            input.number,
            got.saturating_sub(usize::from(input.previous.is_some())),
            input.frames.len()
        ),
    };
    let mut decoded = frame::Video::empty();
    let mut take = |decoder: &mut decoder::Video, next: &mut usize| -> anyhow::Result<()> {
        while decoder.receive_frame(&mut decoded).is_ok() {
            let Some(pts) = decoded.timestamp() else { continue };
            // Frames before the first wanted (the GOP's start) and after the last (a reference
            // decoded before it) are passed over.
            if *next == expected.len() || (*next == 0 && expected.first().is_some_and(|&first| pts < first)) {
                continue;
            }
            if expected.get(*next) != Some(&pts) {
                return Err(missing(*next).into());
            }
            let mat = converter.convert(&decoded, shown)?;
            let is_previous = *next == 0 && input.previous.is_some();
            *next += 1;
            each(if is_previous { SegmentFrame::Previous(mat) } else { SegmentFrame::Frame(pts, mat) })?;
        }
        Ok(())
    };
    for raw in &input.packets {
        let mut packet = Packet::copy(&raw.data);
        packet.set_pts(raw.pts);
        packet.set_dts(raw.dts);
        packet.set_duration(raw.duration);
        packet.set_flags(ffmpeg_next::packet::Flags::from_bits_truncate(raw.flags));
        // A damaged packet is passed over, as the source does; a frame it held shows missing.
        if decoder.send_packet(&packet).is_ok() {
            take(&mut decoder, &mut next)?;
        }
        if next == expected.len() {
            return Ok(());
        }
    }
    let _ = decoder.send_eof();
    take(&mut decoder, &mut next)?;
    if next != expected.len() {
        return Err(missing(next).into());
    }
    Ok(())
}

/// What the encoder of a segment of `input` is told of its frames: as [`super::MediaSource`] tells it
/// for a segment written locally, at `size` where the filters change it.
fn frames_of(
    input: &SegmentInput,
    (decoder, converter, turn): &(decoder::Video, Converter, Option<RotateFlags>),
    size: Option<(u32, u32)>,
) -> Frames {
    let (width, height) = size.unwrap_or_else(|| converter.upright_size());
    let aspect_ratio = upright_aspect(decoder.aspect_ratio(), *turn);
    Frames {
        width,
        height,
        fps: input.fps,
        time_base: input.stream.time_base(),
        rate: Rational::new(input.rate.0, input.rate.1),
        colour: Colour { space: decoder.color_space(), range: decoder.color_range() },
        primaries: decoder.color_primaries(),
        transfer: decoder.color_transfer_characteristic(),
        aspect_ratio,
        live: false,
    }
}

/// Encodes `frames` (the filtered frames of `input`, in order) with a fresh encoder for
/// `target`'s container and `options` into the bytes of a segment file; `size` is theirs where
/// the filters change it.
pub fn encode(
    input: &SegmentInput,
    frames: &[Mat],
    target: &Path,
    options: &OutputOptions,
    size: Option<(u32, u32)>,
) -> Result<Vec<u8>, MediaError> {
    let mut encoder = SegmentEncoder::open(input, target, options, size)?;
    for mat in frames {
        encoder.write(mat)?;
    }
    encoder.finish()
}

/// The filtered frames of one [`SegmentInput`] into the bytes of a segment file, one at a time,
/// with a fresh encoder for the target's container and the job's options.
pub struct SegmentEncoder {
    encoder: VideoEncoder,
    out: Vec<u8>,
    packets: Vec<Packet>,
    /// The timestamps of the segment's frames; the next one is `written`'s.
    times: Vec<i64>,
    written: usize,
    target: PathBuf,
}

impl SegmentEncoder {
    /// An encoder for `input`'s frames, told of them what the source tells a local segment's
    /// encoder, at `size` where the filters change it.
    pub fn open(
        input: &SegmentInput,
        target: &Path,
        options: &OutputOptions,
        size: Option<(u32, u32)>,
    ) -> Result<Self, MediaError> {
        // A decoder opened for its description of the frames (colour, aspect).
        let described = frames_of(input, &open_decoder(input, target)?, size);
        let container = Container::of(target, options)?;
        let encoder = VideoEncoder::open(&described, options, container, target)?;
        let mut out = Vec::new();
        write_header(&mut out, &VideoParams::of(&encoder)).map_err(|cause| Self::io(target, cause))?;
        Ok(SegmentEncoder {
            encoder,
            out,
            packets: Vec::new(),
            times: input.frames.clone(),
            written: 0,
            target: target.to_path_buf(),
        })
    }

    fn io(target: &Path, cause: std::io::Error) -> MediaError {
        MediaError::Io { path: target.to_path_buf(), cause }
    }

    fn drain(&mut self) -> Result<(), MediaError> {
        for p in self.packets.drain(..) {
            write_packet(&mut self.out, None, &p).map_err(|cause| Self::io(&self.target, cause))?;
        }
        Ok(())
    }

    /// Encodes the segment's next frame.
    pub fn write(&mut self, mat: &Mat) -> Result<(), MediaError> {
        let Some(&pts) = self.times.get(self.written) else {
            return Err(Self::io(&self.target, std::io::Error::other("more frames than the segment has")));
        };
        self.encoder
            .encode(mat, Some(pts), &mut self.packets)
            .map_err(|e| Self::io(&self.target, std::io::Error::other(e.to_string())))?;
        self.written += 1;
        self.drain()
    }

    /// Flushes the encoder; the segment file's bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, MediaError> {
        self.encoder.flush(&mut self.packets).map_err(|e| Self::io(&self.target, std::io::Error::other(e)))?;
        self.drain()?;
        Ok(self.out)
    }
}

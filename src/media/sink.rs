//! Encoding and muxing the output: filtered frames encoded, the input's other streams copied,
//! into a file that appears at its path only when complete, or into a pipe.

use std::ffi::CString;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ffmpeg_next::codec;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::util::color;
use ffmpeg_next::{Dictionary, Packet, Rational, Rescale, encoder, ffi, format, frame};
use opencv::core::{CV_8UC3, Mat};
use opencv::prelude::*;
use tracing::{info, warn};

use super::FrameSink;
use super::audio::AudioTranscoder;
use super::codec::{OutputOptions, check_output, container_holds};
use super::convert::{Colour, Scaler};
use super::side::SideQueue;
use super::{MediaError, MediaSource, STDIO};
use crate::files::RemoveOnDrop;

/// Symbolic links followed before giving up on an output path (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Checks, before any frame is decoded, that `output` can be written and would not overwrite
/// `input`, and returns where the file will really be written (`-`: standard output).
///
/// An output that is a symbolic link is written *through*: the file it points to is
/// replaced (or created) and the link stays, as `cp` and shell redirection do.
pub fn check_output_path(input: &Path, output: &Path) -> Result<PathBuf, MediaError> {
    if output == Path::new(STDIO) {
        return Ok(output.to_path_buf());
    }
    let target = follow_links(output)?;
    if target.is_dir() {
        return Err(MediaError::Unwritable {
            path: output.to_path_buf(),
            cause: std::io::Error::new(ErrorKind::IsADirectory, "is a directory"),
        });
    }
    let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let reason = match std::fs::metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => Some(format!("the directory {} does not exist", dir.display())),
        Err(e) => Some(format!("the directory {}: {e}", dir.display())),
        Ok(meta) if !meta.is_dir() => Some(format!("{} is not a directory", dir.display())),
        Ok(_) if !writable(dir) => Some(format!("the directory {} is not writable", dir.display())),
        Ok(_) => None,
    };
    if let Some(reason) = reason {
        return Err(MediaError::OutputDir { path: output.to_path_buf(), reason });
    }
    if target != output {
        info!(output = %output.display(), target = %target.display(), "the output is a symbolic link; writing through it");
    }
    let same = match (std::fs::metadata(input), std::fs::metadata(&target)) {
        // Both exist: the same inode is the same file, whatever the paths look like.
        (Ok(i), Ok(o)) => i.dev() == o.dev() && i.ino() == o.ino(),
        _ => {
            let canonical = |p: &Path| -> Option<PathBuf> {
                let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                Some(parent.canonicalize().ok()?.join(p.file_name()?))
            };
            canonical(input).is_some() && canonical(input) == canonical(&target)
        }
    };
    if same {
        return Err(MediaError::OutputIsInput(output.to_path_buf()));
    }
    Ok(target)
}

/// `path` with its last component's symbolic links followed, to a path that is not a link
/// (it may not exist yet: a dangling link names the file to create).
fn follow_links(path: &Path) -> Result<PathBuf, MediaError> {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&current)
                    .map_err(|cause| MediaError::Unwritable { path: path.to_path_buf(), cause })?;
                current = match current.parent() {
                    Some(dir) if link.is_relative() => dir.join(link),
                    _ => link,
                };
            }
            _ => return Ok(current),
        }
    }
    Err(MediaError::Unwritable {
        path: path.to_path_buf(),
        cause: std::io::Error::other(format!("more than {MAX_LINKS} symbolic links")),
    })
}

/// Whether `target` is a device, a pipe or a socket: written to in place, as a stream, never
/// through a file beside it renamed over it (that would replace `/dev/null` itself).
pub fn is_stream_target(target: &Path) -> bool {
    std::fs::metadata(target).is_ok_and(|m| {
        let t = m.file_type();
        t.is_char_device() || t.is_block_device() || t.is_fifo() || t.is_socket()
    })
}

/// Whether this process may create files in `dir`.
fn writable(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: access reads the NUL-terminated path it is given.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// `dir/.name.ext.vpd-partial-PID-N.ext`: hidden, unique, and with the extension FFmpeg picks
/// the container by. Where an output is written until it is complete.
pub fn temp_path(target: &Path) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = target.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    target.with_file_name(format!(".{name}.vpd-partial-{}-{seq}.{ext}", std::process::id()))
}

/// What the encoder needs to know of the frames it gets.
#[derive(Clone, Copy)]
pub(super) struct Frames {
    pub width: u32,
    pub height: u32,
    fps: f64,
    /// Their timestamps' time base.
    time_base: Rational,
    /// Their average rate, for the container.
    rate: Rational,
    colour: Colour,
    primaries: color::Primaries,
    transfer: color::TransferCharacteristic,
    aspect_ratio: Rational,
}

/// Where a copied input stream goes.
struct Copied {
    output: usize,
    from: Rational,
    to: Rational,
    /// Re-encoded on the way (the container cannot hold its codec); `from` is then the
    /// encoder's time base.
    transcoder: Option<Box<AudioTranscoder>>,
}

impl Frames {
    /// What `source`'s video stream says of its frames, at `size` when the filters resize them.
    pub fn sized(source: &MediaSource, size: Option<(u32, u32)>) -> Self {
        let info = source.info();
        let stream = source.input.stream(source.video).expect("the source's video stream");
        let (width, height) = size.unwrap_or((info.width, info.height));
        Frames {
            width,
            height,
            fps: info.fps,
            time_base: source.time_base,
            rate: stream.avg_frame_rate(),
            colour: source.colour,
            primaries: source.primaries,
            transfer: source.transfer,
            aspect_ratio: source.aspect_ratio,
        }
    }
}

/// The output being written.
pub struct MediaSink {
    output: format::context::Output,
    /// The output as the user named it (`-` for standard output).
    shown: PathBuf,
    /// The temporary file and where it goes when complete; none for a pipe.
    files: Option<(PathBuf, PathBuf)>,
    /// Frames in, packets out; none when the video comes encoded ([`MediaSink::join`]).
    encoder: Option<VideoEncoder>,
    /// The time base of the video packets written: the encoder's, or the segments'.
    packet_tb: Rational,
    video_tb: Rational,
    side: Arc<SideQueue>,
    copied: Vec<Option<Copied>>,
    written: u64,
    packets: u64,
    committed: bool,
}

/// BGR frames in, compressed packets out: the encoder with the job's settings, the conversion
/// to its pixel format, and each frame's timestamp. A [`MediaSink`] has one; so has each
/// segment of a segmented output, fresh for every segment.
pub(super) struct VideoEncoder {
    encoder: encoder::Video,
    scaler: Scaler,
    frame: frame::Video,
    /// The encoded size: the input's, less an odd last row or column where the pixel format
    /// subsamples chroma.
    size: (u32, u32),
    /// The size frames come in.
    source_size: (i32, i32),
    /// Input video time base → encoder time base.
    input_tb: Rational,
    time_base: Rational,
    /// One frame's duration in the encoder's time base, for frames without a timestamp.
    frame_step: i64,
    last_pts: Option<i64>,
}

/// What a segment's encoder must agree on with the output it will be joined into.
#[derive(Clone, Copy)]
pub(super) struct Container {
    /// The container indexes frames, not times (AVI).
    pub constant_rate: bool,
    /// The container wants the codec's headers once, out of band (MP4, Matroska).
    pub global_header: bool,
}

impl Container {
    /// What `target`'s container wants.
    pub fn of(target: &Path, options: &OutputOptions) -> Result<Self, MediaError> {
        Ok(Self::of_muxer(&check_output(target, options)?))
    }

    /// What the muxer `output` wants. A muxer without FFmpeg's variable-rate flag indexes
    /// frames rather than times (AVI), except the MP4 family: its muxer keeps every frame's
    /// time, yet does not carry the flag, and a frame time base there would space a
    /// variable-rate video's frames evenly.
    fn of_muxer(output: &format::Output) -> Self {
        const TIMED_WITHOUT_FLAG: [&str; 8] = ["mov", "mp4", "ipod", "ismv", "psp", "3gp", "3g2", "f4v"];
        let flags = output.flags();
        Container {
            constant_rate: !flags.contains(format::Flags::VARIABLE_FPS) && !TIMED_WITHOUT_FLAG.contains(&output.name()),
            global_header: flags.contains(format::Flags::GLOBAL_HEADER),
        }
    }
}

impl VideoEncoder {
    /// Opens the encoder for frames `f` with `options`, as `container` wants it; `shown` names
    /// the output in errors.
    pub fn open(f: &Frames, options: &OutputOptions, container: Container, shown: &Path) -> Result<Self, MediaError> {
        let pix_fmt = options.pix_fmt()?;
        let size = encodable_size(pix_fmt, f.width, f.height)?;
        let encoder_tb = encoder_time_base(f.time_base, &options.codec, f.fps, container.constant_rate);
        let codec = options.codec.encoder();

        let mut context = codec::context::Context::new_with_codec(codec);
        super::all_threads(&mut context);
        let mut video = context.encoder().video().map_err(ffmpeg_error(shown, "setting up the encoder"))?;
        video.set_width(size.0);
        video.set_height(size.1);
        video.set_format(pix_fmt);
        video.set_time_base(encoder_tb);
        video.set_frame_rate(Some(f.rate).filter(|r| r.numerator() > 0));
        video.set_aspect_ratio(f.aspect_ratio);
        let yuv =
            !matches!(pix_fmt, Pixel::BGRZ | Pixel::BGR24 | Pixel::RGB24 | Pixel::GBRP | Pixel::BGRA | Pixel::RGBA);
        let range = if matches!(pix_fmt, Pixel::YUVJ420P | Pixel::YUVJ422P | Pixel::YUVJ444P) {
            color::Range::JPEG
        } else if yuv {
            f.colour.range
        } else {
            color::Range::Unspecified
        };
        let space = if yuv { f.colour.space } else { color::Space::RGB };
        video.set_colorspace(space);
        video.set_color_range(range);
        video.set_color_primaries(f.primaries);
        video.set_color_transfer_characteristic(f.transfer);
        if let Some(bitrate) = options.bitrate {
            video.set_bit_rate(bitrate as usize);
        }
        if let Some(keyint) = options.keyint {
            video.set_gop(keyint);
        }
        let mut flags = codec::Flags::empty();
        if let Some(q) = options.qscale() {
            flags |= codec::Flags::QSCALE;
            video.set_global_quality(q * ffi::FF_QP2LAMBDA);
        }
        if container.global_header {
            flags |= codec::Flags::GLOBAL_HEADER;
        }
        video.set_flags(flags);
        let mut dict = Dictionary::new();
        for (key, value) in options.encoder_options()? {
            dict.set(key, &value);
        }
        if options.codec.encoder_name() == "ffv1" {
            dict.set("slices", &ffv1_slices(pix_fmt, size).to_string());
        }
        let hardware =
            ["nvenc", "vaapi", "qsv", "v4l2m2m", "amf", "omx"].iter().any(|h| options.codec.encoder_name().contains(h));
        let encoder = video.open_as_with(codec, dict).map_err(|error| {
            if hardware {
                MediaError::BadOption(format!(
                    "{}: cannot open the hardware encoder: no usable device or driver here ({error})",
                    options.codec
                ))
            } else {
                MediaError::Ffmpeg { path: shown.to_path_buf(), what: "opening the encoder", error }
            }
        })?;

        let scaler = Scaler::new((Pixel::BGR24, size.0, size.1), (pix_fmt, size.0, size.1), Colour { space, range })
            .map_err(ffmpeg_error(shown, "converting frames from BGR"))?;
        // A frame's duration, in encoder ticks.
        let frame_step = (f64::from(encoder_tb.invert()) / f.fps).round().max(1.0) as i64;
        Ok(VideoEncoder {
            encoder,
            scaler,
            frame: frame::Video::new(pix_fmt, size.0, size.1),
            size,
            source_size: (f.width as i32, f.height as i32),
            input_tb: f.time_base,
            time_base: encoder_tb,
            frame_step,
            last_pts: None,
        })
    }

    /// The encoder's time base, which its packets' timestamps are in.
    pub fn time_base(&self) -> Rational {
        self.time_base
    }

    /// The encoder's parameters, for a stream that holds its packets.
    pub fn parameters(&self) -> codec::Parameters {
        codec::Parameters::from(&self.encoder)
    }

    /// Encodes `mat`, whose timestamp is `pts` in the input's time base, and appends the packets
    /// ready to `out`.
    pub fn encode(&mut self, mat: &Mat, pts: Option<i64>, out: &mut Vec<Packet>) -> anyhow::Result<()> {
        anyhow::ensure!(
            (mat.cols(), mat.rows()) == self.source_size && mat.typ() == CV_8UC3 && mat.is_continuous(),
            "frame of {}x{} for a {}x{} video",
            mat.cols(),
            mat.rows(),
            self.source_size.0,
            self.source_size.1
        );
        // The input's timestamp, in the encoder's time base; strictly increasing, as encoders
        // require (a frame without one follows the last by a frame's duration).
        let mut pts = match pts {
            Some(p) => p.rescale(self.input_tb, self.time_base),
            None => self.last_pts.map_or(0, |l| l + self.frame_step),
        };
        if let Some(last) = self.last_pts
            && pts <= last
        {
            pts = last + 1;
        }
        self.last_pts = Some(pts);
        // SAFETY: makes the frame's buffers ours alone (the encoder may still hold the last
        // ones) before the conversion writes into them.
        let writable = unsafe { ffi::av_frame_make_writable(self.frame.as_mut_ptr()) };
        anyhow::ensure!(writable >= 0, "out of memory for a frame");
        self.scaler.encode_from(mat, &mut self.frame);
        self.frame.set_pts(Some(pts));
        self.encoder.send_frame(&self.frame)?;
        self.receive(out);
        Ok(())
    }

    /// Flushes the encoder: what it still holds goes to `out`.
    pub fn flush(&mut self, out: &mut Vec<Packet>) -> Result<(), ffmpeg_next::Error> {
        self.encoder.send_eof()?;
        self.receive(out);
        Ok(())
    }

    fn receive(&mut self, out: &mut Vec<Packet>) {
        let mut packet = Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            // Encoders in FFmpeg 5 leave durations unset; without one, MP4's edit list cuts the
            // last frame. Later frames' timestamps still give variable rates their real spacing.
            if packet.duration() <= 0 {
                packet.set_duration(self.frame_step);
            }
            out.push(std::mem::replace(&mut packet, Packet::empty()));
        }
    }
}

/// Where a [`MediaSink`]'s video comes from.
enum Video<'a> {
    /// Frames, encoded by the sink.
    Encode,
    /// Packets already encoded, with these parameters and in this time base.
    Copy { parameters: &'a codec::Parameters, time_base: Rational },
}

/// Adds to `output` each stream of `source` that is copied: as it is where the container holds
/// its codec, re-encoded where it is audio the container cannot hold, else left out (and said
/// so). One entry per input stream, `None` for those not written.
fn copy_streams(
    output: &mut format::context::Output,
    source: &MediaSource,
    muxer: &format::Output,
    global_header: bool,
    shown: &Path,
) -> Result<Vec<Option<Copied>>, MediaError> {
    let mut copied = Vec::new();
    for stream in source.input.streams() {
        let index = stream.index();
        if !source.copied.get(index).copied().unwrap_or(false) {
            copied.push(None);
            continue;
        }
        let id = stream.parameters().id();
        if !container_holds(muxer, id) {
            copied.push(transcode_stream(output, &stream, muxer, global_header, shown)?);
            continue;
        }
        let mut ost =
            output.add_stream(encoder::find(codec::Id::None)).map_err(ffmpeg_error(shown, "adding a stream"))?;
        ost.set_parameters(stream.parameters());
        // SAFETY: the stream's parameters were just set; a zero tag lets the muxer pick its own.
        unsafe { (*ost.parameters().as_mut_ptr()).codec_tag = 0 };
        ost.set_time_base(stream.time_base());
        ost.set_metadata(stream.metadata().to_owned());
        copied.push(Some(Copied {
            output: ost.index(),
            from: stream.time_base(),
            to: stream.time_base(),
            transcoder: None,
        }));
    }
    Ok(copied)
}

/// A stream the container cannot hold: audio is re-encoded to the container's own audio codec
/// (AAC into WebM becomes Opus); anything else is left out. Either way, says so, naming it.
fn transcode_stream(
    output: &mut format::context::Output,
    stream: &format::stream::Stream<'_>,
    muxer: &format::Output,
    global_header: bool,
    shown: &Path,
) -> Result<Option<Copied>, MediaError> {
    let (index, id) = (stream.index(), stream.parameters().id());
    let target = muxer.codec(&PathBuf::from("x"), ffmpeg_next::media::Type::Audio);
    let transcoder = if stream.parameters().medium() == ffmpeg_next::media::Type::Audio && target != codec::Id::None {
        AudioTranscoder::new(stream, target, global_header).ok().flatten()
    } else {
        None
    };
    let Some(transcoder) = transcoder else {
        warn!("a {} file cannot hold stream #{index} ({}); it is left out", muxer.name(), id.name());
        return Ok(None);
    };
    warn!(
        "a {} file cannot hold stream #{index} ({}): re-encoding it ({})",
        muxer.name(),
        id.name(),
        transcoder.describe
    );
    let mut ost = output.add_stream(encoder::find(codec::Id::None)).map_err(ffmpeg_error(shown, "adding a stream"))?;
    ost.set_parameters(transcoder.encoder());
    let tb = transcoder.encoder().time_base();
    ost.set_time_base(tb);
    ost.set_metadata(stream.metadata().to_owned());
    Ok(Some(Copied { output: ost.index(), from: tb, to: tb, transcoder: Some(Box::new(transcoder)) }))
}

/// The input's own metadata (less its encoder's name) and chapters, onto `output`.
fn copy_metadata(output: &mut format::context::Output, source: &MediaSource, shown: &Path) -> Result<(), MediaError> {
    output.set_metadata(without_encoder(source.input.metadata().to_owned()));
    for chapter in source.input.chapters() {
        let title = chapter.metadata().get("title").unwrap_or_default().to_string();
        output
            .add_chapter(chapter.id(), chapter.time_base(), chapter.start(), chapter.end(), title)
            .map_err(ffmpeg_error(shown, "copying chapters"))?;
    }
    Ok(())
}

fn ffmpeg_error<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(ffmpeg_next::Error) -> MediaError + 'a {
    move |error| MediaError::Ffmpeg { path: path.to_path_buf(), what, error }
}

impl MediaSink {
    /// Opens the encoder and the muxer for `target` (checked with [`check_output_path`]),
    /// taking the streams to copy, metadata and chapters from `source`.
    /// `size` is the frames' size when the filters change it.
    pub fn create(
        source: &MediaSource,
        target: &Path,
        options: &OutputOptions,
        size: Option<(u32, u32)>,
    ) -> Result<Self, MediaError> {
        let frames = Frames::sized(source, size);
        Self::open(frames, Some(source), target, options, Video::Encode)
    }

    /// A sink for video already encoded into `parameters` (a segmented output's segments,
    /// joined), with `source`'s other streams, metadata and chapters: the packets
    /// come through [`MediaSink::write_video`] in `time_base`, the other streams' through
    /// [`MediaSink::write_other`].
    pub(super) fn join(
        source: &MediaSource,
        target: &Path,
        options: &OutputOptions,
        parameters: &codec::Parameters,
        time_base: Rational,
        size: Option<(u32, u32)>,
    ) -> Result<Self, MediaError> {
        let frames = Frames::sized(source, size);
        Self::open(frames, Some(source), target, options, Video::Copy { parameters, time_base })
    }

    /// A sink for frames made rather than decoded (`width`x`height` BGR at `fps`): no other
    /// streams, timestamps one frame apart.
    pub fn for_frames(
        target: &Path,
        options: &OutputOptions,
        width: u32,
        height: u32,
        fps: f64,
    ) -> Result<Self, MediaError> {
        super::init();
        let rate = Rational::from(fps);
        let frames = Frames {
            width,
            height,
            fps,
            time_base: rate.invert(),
            rate,
            colour: Colour { space: color::Space::BT709, range: color::Range::MPEG },
            primaries: color::Primaries::BT709,
            transfer: color::TransferCharacteristic::BT709,
            aspect_ratio: Rational::new(1, 1),
        };
        Self::open(frames, None, target, options, Video::Encode)
    }

    fn open(
        f: Frames,
        source: Option<&MediaSource>,
        target: &Path,
        options: &OutputOptions,
        video: Video<'_>,
    ) -> Result<Self, MediaError> {
        let muxer = check_output(target, options)?;
        let stdout = target == Path::new(STDIO);
        let pipe = stdout || is_stream_target(target);
        let (url, files) = if stdout {
            (PathBuf::from("pipe:1"), None)
        } else if pipe {
            (target.to_path_buf(), None)
        } else {
            let temp = temp_path(target);
            (temp.clone(), Some((temp, target.to_path_buf())))
        };
        let shown = target.to_path_buf();
        let mut output = format::output_as(&url, muxer.name()).map_err(|cause| match cause {
            ffmpeg_next::Error::Other { errno } => {
                MediaError::Unwritable { path: shown.clone(), cause: std::io::Error::from_raw_os_error(errno) }
            }
            error => MediaError::Ffmpeg { path: shown.clone(), what: "opening the output", error },
        })?;
        // From here the temporary file exists: a failure below must remove it.
        let guard = files.as_ref().map(|(temp, _)| RemoveOnDrop::new(temp.clone()));

        let container = Container::of_muxer(&output.format());
        let global_header = container.global_header;
        let (encoder, params, packet_tb) = match video {
            Video::Encode => {
                even_where_needed(&f, options, &shown)?;
                let e = VideoEncoder::open(&f, options, container, &shown)?;
                let params = codec::Parameters::from(&e.encoder);
                let tb = e.time_base;
                (Some(e), params, tb)
            }
            Video::Copy { parameters, time_base } => (None, parameters.clone(), time_base),
        };

        // The video stream: the encoder's parameters and the input's metadata (its frames were
        // turned upright as they were decoded: no display matrix).
        {
            let mut ost = output
                .add_stream(encoder::find(codec::Id::None))
                .map_err(ffmpeg_error(&shown, "adding the video stream"))?;
            ost.set_parameters(params);
            // SAFETY: the stream's parameters were just set; a zero tag lets the muxer pick its own.
            unsafe { (*ost.parameters().as_mut_ptr()).codec_tag = 0 };
            ost.set_time_base(packet_tb);
            if let Some(input_stream) = source.and_then(|s| s.input.stream(s.video)) {
                ost.set_metadata(without_encoder(input_stream.metadata().to_owned()));
            }
        }
        // Every other stream the container can hold, copied as it is.
        let mut copied = match source {
            Some(source) => copy_streams(&mut output, source, &muxer, global_header, &shown)?,
            None => Vec::new(),
        };
        if let Some(source) = source {
            copy_metadata(&mut output, source, &shown)?;
        }

        let mut header = Dictionary::new();
        if matches!(muxer.name(), "mp4" | "mov" | "ipod" | "3gp") {
            // A file: the index goes to the front, so a browser plays it while it downloads. A
            // pipe cannot be rewritten: fragments instead.
            header.set("movflags", if pipe { "frag_keyframe+empty_moov+default_base_moof" } else { "+faststart" });
        }
        output.write_header_with(header).map_err(|e| write_error(&shown, e, 0))?;
        let video_tb = output.stream(0).expect("the video stream").time_base();
        for c in copied.iter_mut().flatten() {
            c.to = output.stream(c.output).expect("an added stream").time_base();
        }
        if let Some(guard) = guard {
            guard.keep(); // the sink removes it from now on, unless it is committed
        }
        Ok(MediaSink {
            output,
            shown,
            files,
            encoder,
            packet_tb,
            video_tb,
            side: source.map_or_else(|| Arc::new(SideQueue::default()), |s| s.side.clone()),
            copied,
            written: 0,
            packets: 0,
            committed: false,
        })
    }

    /// The encoded frame size (none for a sink that only muxes).
    pub fn size(&self) -> Option<(u32, u32)> {
        self.encoder.as_ref().map(|e| e.size)
    }

    /// Writes a packet of the input's other streams (its `stream()` the input's index):
    /// copied, or re-encoded where the container needs it.
    pub(super) fn write_other(&mut self, packet: Packet) -> Result<(), MediaError> {
        let index = packet.stream();
        let Some(Some(c)) = self.copied.get_mut(index) else { return Ok(()) };
        let packets = match c.transcoder.as_mut() {
            Some(t) => t.transcode(Some(&packet)).map_err(ffmpeg_error(&self.shown, "re-encoding audio"))?,
            None => vec![packet],
        };
        self.write_packets(index, packets)
    }

    /// Writes packets of input stream `index`'s output stream.
    fn write_packets(&mut self, index: usize, packets: Vec<Packet>) -> Result<(), MediaError> {
        let Some(Some(c)) = self.copied.get(index) else { return Ok(()) };
        let (from, to, output) = (c.from, c.to, c.output);
        for mut packet in packets {
            packet.rescale_ts(from, to);
            packet.set_stream(output);
            packet.set_position(-1);
            packet.write_interleaved(&mut self.output).map_err(|e| write_error(&self.shown, e, self.written))?;
        }
        Ok(())
    }

    /// Writes video packets whose timestamps are in the sink's packet time base.
    pub(super) fn write_video(&mut self, packets: Vec<Packet>) -> Result<(), MediaError> {
        for mut packet in packets {
            packet.set_stream(0);
            packet.set_position(-1);
            packet.rescale_ts(self.packet_tb, self.video_tb);
            packet.write_interleaved(&mut self.output).map_err(|e| write_error(&self.shown, e, self.written))?;
            self.packets += 1;
        }
        Ok(())
    }

    /// Flushes the encoder, writes what is left of the copied streams and the container's
    /// index, checks the result, and moves a file into place.
    pub fn finish(mut self) -> Result<PathBuf, MediaError> {
        if let Some(encoder) = self.encoder.as_mut() {
            let mut packets = Vec::new();
            encoder.flush(&mut packets).map_err(ffmpeg_error(&self.shown, "flushing the encoder"))?;
            self.write_video(packets)?;
        }
        let mut rest = Vec::new();
        self.side.take_rest(&mut rest);
        for packet in rest {
            self.write_other(packet)?;
        }
        // What the audio encoders still hold.
        for index in 0..self.copied.len() {
            let flushed = match self.copied[index].as_mut().and_then(|c| c.transcoder.as_mut()) {
                Some(t) => t.transcode(None).map_err(ffmpeg_error(&self.shown, "re-encoding audio"))?,
                None => continue,
            };
            self.write_packets(index, flushed)?;
        }
        self.output.write_trailer().map_err(|e| write_error(&self.shown, e, self.written))?;
        if self.encoder.is_some() && self.packets < self.written {
            return Err(MediaError::Ffmpeg {
                path: self.shown.clone(),
                what: "the encoder lost frames",
                error: ffmpeg_next::Error::Bug,
            });
        }
        if let Some((temp, target)) = &self.files {
            std::fs::rename(temp, target).map_err(|cause| MediaError::Io { path: target.clone(), cause })?;
        }
        self.committed = true;
        Ok(self.shown.clone())
    }
}

/// What a failed write means: a full disk, a closed pipe, or FFmpeg's own reason.
fn write_error(path: &Path, error: ffmpeg_next::Error, frames: u64) -> MediaError {
    match error {
        ffmpeg_next::Error::Other { errno } if errno == libc::ENOSPC => {
            MediaError::NoSpace { path: path.to_path_buf(), frames }
        }
        ffmpeg_next::Error::Other { errno } if errno == libc::EPIPE => {
            MediaError::StreamClosed { path: path.to_path_buf(), frames }
        }
        error => MediaError::Ffmpeg { path: path.to_path_buf(), what: "writing", error },
    }
}

/// The encoder's time base: the input stream's, so every timestamp carries over unchanged;
/// one frame's duration for a constant-rate container (AVI indexes frames, not times); and
/// a coarser one where the codec cannot take the input's (MPEG-4 part 2 allows denominators
/// up to 65535).
fn encoder_time_base(input: Rational, codec: &super::VideoCodec, fps: f64, constant_rate: bool) -> Rational {
    let frame = Rational::from(fps);
    let frame = (frame.numerator() > 0 && frame.numerator() <= 65535).then(|| frame.invert());
    if constant_rate {
        frame.unwrap_or(Rational::new(1, 25))
    } else if codec.id() == codec::Id::MPEG4 && input.denominator() > 65535 {
        frame.unwrap_or(Rational::new(1, 1000))
    } else {
        input
    }
}

/// The size to encode: the input's, less an odd last row or column where the pixel format
/// subsamples chroma (4:2:0 cannot hold an odd size).
fn encoded_size(pix_fmt: Pixel, width: u32, height: u32) -> (u32, u32) {
    let (sub_w, sub_h) = pix_fmt.descriptor().map_or((0, 0), |d| (d.log2_chroma_w(), d.log2_chroma_h()));
    let w = if sub_w > 0 { width & !1 } else { width };
    let h = if sub_h > 0 { height & !1 } else { height };
    (w, h)
}

/// [`encoded_size`], or an error where it leaves nothing (a side of one pixel in 4:2:0).
fn encodable_size(pix_fmt: Pixel, width: u32, height: u32) -> Result<(u32, u32), MediaError> {
    let (w, h) = encoded_size(pix_fmt, width, height);
    if w == 0 || h == 0 {
        let name = pix_fmt.descriptor().map_or("this pixel format", |d| d.name());
        return Err(MediaError::BadOption(format!(
            "{width}x{height} frames are too small for {name}, which needs at least 2x2 (--pix-fmt yuv444p encodes them)"
        )));
    }
    Ok((w, h))
}

/// FFV1's slices for frames of `size` in `pix_fmt`: 16 (a 4×4 grid: slices encode on every
/// core), or 4, or 1 where the frame is too small for that grid. FFV1 refuses a grid wider than
/// a plane: 16 slices need 8×8 frames in 4:2:0, 4 need 4×4.
fn ffv1_slices(pix_fmt: Pixel, (width, height): (u32, u32)) -> u32 {
    let (cw, ch) = pix_fmt.descriptor().map_or((0, 0), |d| (d.log2_chroma_w(), d.log2_chroma_h()));
    let side = (width >> cw).min(height >> ch);
    [(16, 4), (4, 2)].into_iter().find(|&(_, grid)| side >= grid).map_or(1, |(slices, _)| slices)
}

/// [`encoded_size`] of frames `f` with `options`, with a word about a dropped row or column:
/// said once per output, however many encoders it takes.
pub(super) fn even_where_needed(f: &Frames, options: &OutputOptions, output: &Path) -> Result<(u32, u32), MediaError> {
    let pix_fmt = options.pix_fmt()?;
    let (width, height) = (f.width, f.height);
    let (w, h) = encodable_size(pix_fmt, width, height)?;
    if (w, h) != (width, height) {
        warn!(
            output = %output.display(),
            "{width}x{height} is odd and {pix_fmt:?} needs even sizes: writing {w}x{h} (the last column or row is dropped; --pix-fmt yuv444p keeps it)"
        );
    }
    Ok((w, h))
}

/// Metadata without the input's `encoder` tag (the muxer writes its own) or `rotate` tag (the
/// frames were turned upright as they were decoded; the MP4 muxer would turn them again).
fn without_encoder(mut d: Dictionary<'static>) -> Dictionary<'static> {
    let mut kept = Dictionary::new();
    for (k, v) in d.iter() {
        if k != "encoder" && k != "rotate" {
            kept.set(k, v);
        }
    }
    d = kept;
    d
}

impl FrameSink for MediaSink {
    fn write(&mut self, mat: &Mat) -> anyhow::Result<()> {
        let mut others = Vec::new();
        let pts = self.side.take_until_frame(&mut others).flatten();
        for packet in others {
            self.write_other(packet)?;
        }
        let encoder = self.encoder.as_mut().ok_or_else(|| anyhow::anyhow!("this output takes encoded video only"))?;
        let mut packets = Vec::new();
        encoder.encode(mat, pts, &mut packets).map_err(|e| match e.downcast::<ffmpeg_next::Error>() {
            Ok(error) => write_error(&self.shown, error, self.written).into(),
            Err(e) => e,
        })?;
        self.written += 1;
        self.write_video(packets)?;
        Ok(())
    }
}

impl Drop for MediaSink {
    fn drop(&mut self) {
        if !self.committed
            && let Some((temp, _)) = &self.files
        {
            let _ = std::fs::remove_file(temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_path_is_hidden_and_keeps_the_extension() {
        let t = temp_path(Path::new("/tmp/dir/out.mp4"));
        let name = t.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(".out.mp4.vpd-partial-"), "{name}");
        assert!(name.ends_with(".mp4"), "{name}");
        assert_eq!(t.parent().unwrap(), Path::new("/tmp/dir"));
    }

    #[test]
    fn output_equal_to_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.mp4");
        std::fs::write(&input, b"x").unwrap();
        let err = check_output_path(&input, &dir.path().join("./in.mp4")).unwrap_err();
        assert!(matches!(err, MediaError::OutputIsInput(_)), "{err}");
        // A hard link is the same file under another name.
        let link = dir.path().join("link.mp4");
        std::fs::hard_link(&input, &link).unwrap();
        assert!(matches!(check_output_path(&input, &link), Err(MediaError::OutputIsInput(_))));
        assert!(check_output_path(&input, &dir.path().join("out.mp4")).is_ok());
        assert!(matches!(check_output_path(&input, dir.path()), Err(MediaError::Unwritable { .. })));
        assert_eq!(check_output_path(&input, Path::new("-")).unwrap(), Path::new("-"));
    }

    #[test]
    fn an_output_in_a_missing_or_unusable_directory_is_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.mp4");
        std::fs::write(&input, b"x").unwrap();
        let err = check_output_path(&input, Path::new("/nonexistent/x.mp4")).unwrap_err();
        assert_eq!(err.to_string(), "cannot write /nonexistent/x.mp4: the directory /nonexistent does not exist");
        let err = check_output_path(&input, &input.join("x.mp4")).unwrap_err();
        assert!(err.to_string().ends_with("in.mp4 is not a directory"), "{err}");
        // A bare file name is written in the current directory.
        assert_eq!(check_output_path(&input, Path::new("out.mp4")).unwrap(), Path::new("out.mp4"));
    }

    #[test]
    fn a_symlinked_output_is_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.mp4");
        std::fs::write(&input, b"x").unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        // A relative link, to a file that does not exist yet.
        std::os::unix::fs::symlink("real/out.mp4", dir.path().join("link.mp4")).unwrap();
        assert_eq!(check_output_path(&input, &dir.path().join("link.mp4")).unwrap(), dir.path().join("real/out.mp4"));
        // A link to the input is still the input.
        std::os::unix::fs::symlink(&input, dir.path().join("to-input.mp4")).unwrap();
        assert!(matches!(
            check_output_path(&input, &dir.path().join("to-input.mp4")),
            Err(MediaError::OutputIsInput(_))
        ));
        // A loop is an error, not a hang.
        std::os::unix::fs::symlink("b.mp4", dir.path().join("a.mp4")).unwrap();
        std::os::unix::fs::symlink("a.mp4", dir.path().join("b.mp4")).unwrap();
        let err = check_output_path(&input, &dir.path().join("a.mp4")).unwrap_err();
        assert!(err.to_string().contains("symbolic links"), "{err}");
    }

    #[test]
    fn os_errors_are_printed_once() {
        let err = MediaError::Unwritable { path: "/x".into(), cause: std::io::Error::from_raw_os_error(libc::ENOENT) };
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(chain.matches("os error 2").count(), 1, "{chain}");
    }

    #[test]
    fn odd_sizes_are_kept_where_the_format_allows() {
        assert_eq!(encoded_size(Pixel::YUV420P, 641, 361), (640, 360));
        assert_eq!(encoded_size(Pixel::YUV444P, 641, 361), (641, 361));
        assert_eq!(encoded_size(Pixel::BGRZ, 641, 361), (641, 361));
        assert_eq!(encoded_size(Pixel::YUV422P, 641, 361), (640, 361));
    }
}

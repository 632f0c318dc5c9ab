//! The video encoder: filtered frames in, packets out, with the job's settings. Direct output
//! ([`super::sink::MediaSink`]) and committed segments ([`super::segment`]) both encode with it.

use std::path::Path;

use ffmpeg_next::codec;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::util::color;
use ffmpeg_next::{Dictionary, Packet, Rational, Rescale, encoder, ffi, format, frame};
use opencv::core::{CV_8UC3, Mat};
use opencv::prelude::*;
use tracing::warn;

use super::codec::{OutputOptions, check_output};
use super::convert::{Colour, Scaler};
use super::{MediaError, MediaSource};

/// What the encoder needs to know of the frames it gets.
#[derive(Clone, Copy)]
pub(super) struct Frames {
    /// Their width.
    pub width: u32,
    /// Their height.
    pub height: u32,
    /// Their rate.
    pub fps: f64,
    /// Their timestamps' time base.
    pub time_base: Rational,
    /// Their average rate, for the container.
    pub rate: Rational,
    /// Their colour space and range.
    pub colour: Colour,
    /// Their colour primaries.
    pub primaries: color::Primaries,
    /// Their transfer characteristic.
    pub transfer: color::TransferCharacteristic,
    /// Their sample aspect ratio.
    pub aspect_ratio: Rational,
    /// A live stream: encoded for latency (x264 and x265 `zerolatency`: no B-frames, no
    /// look-ahead; a keyframe a second unless `--keyint` says otherwise).
    pub live: bool,
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
            live: source.is_live(),
        }
    }
}

/// BGR frames in, compressed packets out: the encoder with the job's settings, the conversion
/// to its pixel format, and each frame's timestamp. A [`MediaSink`] has one; so has each
/// segment of a segmented output, fresh for every segment.
pub(super) struct VideoEncoder {
    /// FFmpeg's encoder (the muxer reads its parameters).
    pub(super) encoder: encoder::Video,
    scaler: Scaler,
    frame: frame::Video,
    /// The encoded size: the input's, less an odd last row or column where the pixel format
    /// subsamples chroma.
    pub(super) size: (u32, u32),
    /// The size frames come in.
    source_size: (i32, i32),
    /// Input video time base → encoder time base.
    input_tb: Rational,
    /// The encoder's time base: its packets'.
    pub(super) time_base: Rational,
    /// One frame's duration in the encoder's time base, for frames without a timestamp.
    frame_step: i64,
    last_pts: Option<i64>,
    /// The timestamp of a first frame without one (see [`VideoEncoder::starts_at_frame`]).
    untimed_from: i64,
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
    pub(super) fn of_muxer(output: &format::Output) -> Self {
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
        if f.live {
            // Frame threads hold a frame per thread before the first packet comes out (and
            // FFmpeg's libx264 takes this over its `zerolatency` tune's sliced threads): at
            // 25 fps on two cores, 80 ms of latency. Slices still encode in parallel.
            // SAFETY: sets a plain field of a codec context that is not open yet.
            unsafe { (*context.as_mut_ptr()).thread_type = ffmpeg_next::ffi::FF_THREAD_SLICE };
        }
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
        } else if f.live {
            video.set_gop((f.fps.round() as u32).max(1));
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
        if f.live && matches!(options.codec.encoder_name(), "libx264" | "libx265") {
            dict.set("tune", "zerolatency");
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
            untimed_from: 0,
        })
    }

    /// The first frame it encodes is frame `index` of the video: one without a timestamp (a raw
    /// H.264 stream's) gets the time it has in the whole video, so that a segment's frames
    /// follow the segment before it's.
    pub fn starts_at_frame(&mut self, index: u64) {
        self.untimed_from = (index as i64).saturating_mul(self.frame_step);
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
            None => self.last_pts.map_or(self.untimed_from, |l| l + self.frame_step),
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

    /// The timestamp of the last frame encoded, in the encoder's time base.
    pub fn last_pts(&self) -> Option<i64> {
        self.last_pts
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

pub(super) fn ffmpeg_error<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(ffmpeg_next::Error) -> MediaError + 'a {
    move |error| MediaError::Ffmpeg { path: path.to_path_buf(), what, error }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_sizes_are_kept_where_the_format_allows() {
        assert_eq!(encoded_size(Pixel::YUV420P, 641, 361), (640, 360));
        assert_eq!(encoded_size(Pixel::YUV444P, 641, 361), (641, 361));
        assert_eq!(encoded_size(Pixel::BGRZ, 641, 361), (641, 361));
        assert_eq!(encoded_size(Pixel::YUV422P, 641, 361), (640, 361));
    }
}

//! A video stream's parameters as plain data: what a segment file records of the encoder that
//! made it, so that the join muxes the segments' packets without opening an encoder, and so
//! that packets can travel with their description to another process or host.
//!
//! Enumerations travel by FFmpeg's names (`h264`, `yuv420p`, `bt709`), not by their numbers:
//! a name is read back through FFmpeg's own lookup, so no number FFmpeg does not know ever
//! becomes one of its enumerations.

use std::ffi::{CString, c_char, c_int};

use ffmpeg_next::util::color;
use ffmpeg_next::{Rational, codec, decoder, ffi};
use serde::{Deserialize, Serialize};

use super::encoder::VideoEncoder;

/// Largest codec extradata accepted (H.264's and HEVC's parameter sets are a few hundred bytes).
const MAX_EXTRADATA: usize = 1 << 20;

/// What [`VideoParams::from_parts`] reads from an encoder or a decoder rather than from the
/// stream's parameters: their enumerations, read through ffmpeg-next's safe getters.
struct Described {
    size: (u32, u32),
    format: ffmpeg_next::format::Pixel,
    time_base: Rational,
    colour: (color::Range, color::Space, color::Primaries, color::TransferCharacteristic),
}

/// What a muxer (or a decoder) needs to know of a video stream besides its packets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoParams {
    /// FFmpeg's name of the codec (`h264`, `hevc`, `av1`).
    pub codec: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// FFmpeg's name of the pixel format (`yuv420p`).
    pub pixel_format: String,
    /// The packets' time base, as numerator and denominator.
    pub time_base: (i32, i32),
    /// The sample aspect ratio (0/1 where unknown).
    pub aspect_ratio: (i32, i32),
    /// FFmpeg's names of the colour range, space, primaries, transfer and chroma location
    /// (`None`: unspecified).
    pub colour: [Option<String>; 5],
    /// The codec's out-of-band headers (H.264's SPS and PPS for MP4).
    pub extradata: Vec<u8>,
    /// The codec's profile and level, as FFmpeg numbers them.
    pub profile: i32,
    /// See `profile`.
    pub level: i32,
    /// Bits per second, where the encoder says.
    pub bit_rate: i64,
    /// Frames of reordering delay (B-frames).
    pub video_delay: i32,
    /// Bits of each sample, where the encoder says.
    pub bits_per_raw_sample: i32,
}

impl VideoParams {
    /// What `encoder` (opened) makes.
    pub(super) fn of(encoder: &VideoEncoder) -> Self {
        let video = &encoder.encoder;
        let described = Described {
            size: (video.width(), video.height()),
            format: video.format(),
            time_base: encoder.time_base,
            colour: (
                video.color_range(),
                video.colorspace(),
                video.color_primaries(),
                video.color_transfer_characteristic(),
            ),
        };
        Self::from_parts(&codec::Parameters::from(video), described)
    }

    /// What an input stream with `par`, read by `decoder` (opened from them), holds; its packets
    /// are in `time_base`.
    pub(super) fn of_input(par: &codec::Parameters, decoder: &decoder::Video, time_base: Rational) -> Self {
        let described = Described {
            size: (decoder.width(), decoder.height()),
            format: decoder.format(),
            time_base,
            colour: (
                decoder.color_range(),
                decoder.color_space(),
                decoder.color_primaries(),
                decoder.color_transfer_characteristic(),
            ),
        };
        Self::from_parts(par, described)
    }

    fn from_parts(par: &codec::Parameters, d: Described) -> Self {
        // SAFETY: `par` holds a valid AVCodecParameters; these are plain reads of it.
        let p = unsafe { &*par.as_ptr() };
        let extradata = if p.extradata.is_null() || p.extradata_size <= 0 {
            Vec::new()
        } else {
            // SAFETY: FFmpeg keeps `extradata_size` bytes at `extradata`.
            unsafe { std::slice::from_raw_parts(p.extradata, p.extradata_size as usize) }.to_vec()
        };
        let name = |n: Option<&str>| n.map(str::to_string);
        let aspect = p.sample_aspect_ratio;
        let (range, space, primaries, transfer) = d.colour;
        VideoParams {
            codec: par.id().name().to_string(),
            width: d.size.0,
            height: d.size.1,
            pixel_format: d.format.descriptor().map(|d| d.name().to_string()).unwrap_or_default(),
            time_base: (d.time_base.numerator(), d.time_base.denominator()),
            aspect_ratio: (aspect.num, aspect.den),
            colour: [
                name(range.name()),
                name(space.name()),
                name(primaries.name()),
                name(transfer.name()),
                chroma_location(p.chroma_location),
            ],
            extradata,
            profile: p.profile,
            level: p.level,
            bit_rate: p.bit_rate,
            video_delay: p.video_delay,
            bits_per_raw_sample: p.bits_per_raw_sample,
        }
    }

    /// The packets' time base.
    pub fn time_base(&self) -> Rational {
        Rational::new(self.time_base.0, self.time_base.1)
    }

    /// The parameters for a muxer's stream; an error names what FFmpeg does not know.
    pub fn to_codec(&self) -> Result<codec::Parameters, String> {
        if self.extradata.len() > MAX_EXTRADATA {
            return Err(format!("{} bytes of codec headers", self.extradata.len()));
        }
        let codec_name = c_string(&self.codec)?;
        // SAFETY: FFmpeg's lookup of a NUL-terminated name; it returns null or a static descriptor.
        let descriptor = unsafe { ffi::avcodec_descriptor_get_by_name(codec_name.as_ptr()) };
        if descriptor.is_null() {
            return Err(format!("unknown codec '{}'", self.codec));
        }
        let pixel_format: ffmpeg_next::format::Pixel =
            self.pixel_format.parse().map_err(|_| format!("unknown pixel format '{}'", self.pixel_format))?;
        if pixel_format == ffmpeg_next::format::Pixel::None {
            return Err(format!("unknown pixel format '{}'", self.pixel_format));
        }
        let [range, space, primaries, transfer, chroma] = &self.colour;
        use ffi::{AVChromaLocation, AVColorPrimaries, AVColorRange, AVColorSpace, AVColorTransferCharacteristic};
        let range =
            lookup(range, AVColorRange::AVCOL_RANGE_UNSPECIFIED as u32, "colour range", ffi::av_color_range_from_name)?;
        let space =
            lookup(space, AVColorSpace::AVCOL_SPC_UNSPECIFIED as u32, "colour space", ffi::av_color_space_from_name)?;
        let primaries = lookup(
            primaries,
            AVColorPrimaries::AVCOL_PRI_UNSPECIFIED as u32,
            "colour primaries",
            ffi::av_color_primaries_from_name,
        )?;
        let transfer = lookup(
            transfer,
            AVColorTransferCharacteristic::AVCOL_TRC_UNSPECIFIED as u32,
            "colour transfer",
            ffi::av_color_transfer_from_name,
        )?;
        let chroma = lookup(
            chroma,
            AVChromaLocation::AVCHROMA_LOC_UNSPECIFIED as u32,
            "chroma location",
            ffi::av_chroma_location_from_name,
        )?;
        let (width, height) = (c_int::try_from(self.width), c_int::try_from(self.height));
        let (Ok(width), Ok(height)) = (width, height) else {
            return Err(format!("a {}x{} frame", self.width, self.height));
        };
        let mut par = codec::Parameters::new();
        // SAFETY: `par` owns a fresh AVCodecParameters. The enumerations written come from
        // FFmpeg's own lookups (a descriptor's id, a parsed pixel format, and values its name
        // lookups returned, so members of their enumerations); the colour fields are written
        // through their integer representation, which is how C writes them. The extradata is
        // allocated with FFmpeg's allocator and its padding, as the struct's owner frees it.
        unsafe {
            let p = &mut *par.as_mut_ptr();
            p.codec_type = ffi::AVMediaType::AVMEDIA_TYPE_VIDEO;
            p.codec_id = (*descriptor).id;
            p.format = ffi::AVPixelFormat::from(pixel_format) as c_int;
            p.width = width;
            p.height = height;
            p.sample_aspect_ratio = ffi::AVRational { num: self.aspect_ratio.0, den: self.aspect_ratio.1 };
            std::ptr::write((&raw mut p.color_range).cast::<u32>(), range);
            std::ptr::write((&raw mut p.color_space).cast::<u32>(), space);
            std::ptr::write((&raw mut p.color_primaries).cast::<u32>(), primaries);
            std::ptr::write((&raw mut p.color_trc).cast::<u32>(), transfer);
            std::ptr::write((&raw mut p.chroma_location).cast::<u32>(), chroma);
            p.profile = self.profile;
            p.level = self.level;
            p.bit_rate = self.bit_rate;
            p.video_delay = self.video_delay;
            p.bits_per_raw_sample = self.bits_per_raw_sample;
            if !self.extradata.is_empty() {
                let padded = self.extradata.len() + ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize;
                let data = ffi::av_mallocz(padded).cast::<u8>();
                if data.is_null() {
                    return Err("no memory for the codec headers".into());
                }
                std::ptr::copy_nonoverlapping(self.extradata.as_ptr(), data, self.extradata.len());
                p.extradata = data;
                p.extradata_size = self.extradata.len() as c_int;
            }
        }
        Ok(par)
    }
}

fn c_string(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("a name with a NUL byte: {s:?}"))
}

/// The value FFmpeg's `from_name` gives `name`; `unspecified` (the enumeration's own value,
/// which is not 0 for all of them) for none.
fn lookup(
    name: &Option<String>,
    unspecified: u32,
    what: &str,
    from_name: unsafe extern "C" fn(*const c_char) -> c_int,
) -> Result<u32, String> {
    let Some(name) = name else { return Ok(unspecified) };
    let c = c_string(name)?;
    // SAFETY: FFmpeg's lookup of a NUL-terminated name; it returns a member or a negative error.
    let value = unsafe { from_name(c.as_ptr()) };
    u32::try_from(value).map_err(|_| format!("unknown {what} '{name}'"))
}

/// FFmpeg's name of a chroma location; `None` when unspecified.
fn chroma_location(location: ffi::AVChromaLocation) -> Option<String> {
    if location == ffi::AVChromaLocation::AVCHROMA_LOC_UNSPECIFIED {
        return None;
    }
    // SAFETY: FFmpeg's name lookup returns null or a static NUL-terminated string.
    let name = unsafe { ffi::av_chroma_location_name(location) };
    (!name.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(name) }.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::OutputOptions;
    use crate::media::convert::Colour;
    use crate::media::encoder::{Container, Frames};

    fn encoder(codec: &str) -> VideoEncoder {
        encoder_with(codec, color::Primaries::BT709, color::TransferCharacteristic::BT709, color::Space::BT709)
    }

    fn encoder_with(
        codec: &str,
        primaries: color::Primaries,
        transfer: color::TransferCharacteristic,
        space: color::Space,
    ) -> VideoEncoder {
        crate::media::init();
        let rate = Rational::new(30, 1);
        let frames = Frames {
            width: 320,
            height: 240,
            fps: 30.0,
            time_base: rate.invert(),
            rate,
            colour: Colour { space, range: color::Range::MPEG },
            primaries,
            transfer,
            aspect_ratio: Rational::new(1, 1),
            live: false,
        };
        let options = OutputOptions { codec: codec.parse().unwrap(), ..OutputOptions::default() };
        let container = Container { constant_rate: false, global_header: true };
        VideoEncoder::open(&frames, &options, container, std::path::Path::new("out.mp4")).unwrap()
    }

    /// The fields of AVCodecParameters a muxer reads, as numbers.
    fn fields(par: &codec::Parameters) -> Vec<i64> {
        // SAFETY: plain reads of a valid AVCodecParameters.
        let p = unsafe { &*par.as_ptr() };
        let extradata = unsafe { std::slice::from_raw_parts(p.extradata, p.extradata_size.max(0) as usize) }
            .iter()
            .map(|&b| b.into());
        [
            p.codec_type as i64,
            p.codec_id as i64,
            p.format.into(),
            p.width.into(),
            p.height.into(),
            p.sample_aspect_ratio.num.into(),
            p.sample_aspect_ratio.den.into(),
            p.color_range as i64,
            p.color_space as i64,
            p.color_primaries as i64,
            p.color_trc as i64,
            p.chroma_location as i64,
            p.profile.into(),
            p.level.into(),
            p.bit_rate,
            p.video_delay.into(),
            p.bits_per_raw_sample.into(),
            p.extradata_size.into(),
        ]
        .into_iter()
        .chain(extradata)
        .collect()
    }

    #[test]
    fn the_parameters_read_back_are_the_encoders() {
        let unspecified = || {
            encoder_with(
                "h264",
                color::Primaries::Unspecified,
                color::TransferCharacteristic::Unspecified,
                color::Space::Unspecified,
            )
        };
        for (codec, encoder) in
            [("h264", encoder("h264")), ("mpeg4", encoder("mpeg4")), ("unspecified colour", unspecified())]
        {
            let params = VideoParams::of(&encoder);
            assert_eq!(params.colour[0].as_deref(), Some("tv"), "{params:?}");
            if codec == "unspecified colour" {
                assert_eq!(params.colour[1..4], [None, None, None], "{params:?}");
            }
            // What travels is plain data: through postcard and back, then to FFmpeg's struct.
            let bytes = postcard::to_stdvec(&params).unwrap();
            let back: VideoParams = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, params);
            let rebuilt = back.to_codec().unwrap();
            assert_eq!(fields(&rebuilt), fields(&codec::Parameters::from(&encoder.encoder)), "{codec}");
            assert_eq!(back.time_base(), encoder.time_base);
        }
    }

    #[test]
    fn names_ffmpeg_does_not_know_are_errors_not_values() {
        let params = VideoParams::of(&encoder("h264"));
        let with = |f: fn(&mut VideoParams)| {
            let mut p = params.clone();
            f(&mut p);
            p.to_codec().err().unwrap_or_default()
        };
        assert_eq!(with(|p| p.codec = "h265000".into()), "unknown codec 'h265000'");
        assert_eq!(with(|p| p.pixel_format = "rgb1000".into()), "unknown pixel format 'rgb1000'");
        assert_eq!(with(|p| p.colour[2] = Some("bt9999".into())), "unknown colour primaries 'bt9999'");
        assert_eq!(with(|p| p.extradata = vec![0; MAX_EXTRADATA + 1]), "1048577 bytes of codec headers");
    }
}

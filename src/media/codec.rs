//! Which encoder writes the video, with what settings, into which container; all checked
//! against this FFmpeg before any frame is decoded.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;

use ffmpeg_next::codec::{self, Id};
use ffmpeg_next::format::Pixel;
use ffmpeg_next::{encoder, ffi};
use serde::{Deserialize, Serialize};

use super::MediaError;

/// A video encoder, by the name vpd knows it or FFmpeg's own (`h264_nvenc`, `libaom-av1`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VideoCodec {
    /// As the user wrote it.
    name: String,
    /// FFmpeg's encoder.
    encoder: String,
}

/// vpd's names, with the FFmpeg encoder each means. Earlier vpd names (OpenCV fourccs) stay
/// accepted for scripts that use them.
const ALIASES: &[(&str, &str)] = &[
    ("h264", "libx264"),
    ("avc1", "libx264"),
    ("hevc", "libx265"),
    ("h265", "libx265"),
    ("vp9", "libvpx-vp9"),
    ("av1", "libsvtav1"),
    ("ffv1", "ffv1"),
    ("mpeg4", "mpeg4"),
    ("mp4v", "mpeg4"),
    ("xvid", "mpeg4"),
    ("mjpeg", "mjpeg"),
    ("mjpg", "mjpeg"),
];

impl Default for VideoCodec {
    fn default() -> Self {
        VideoCodec { name: "h264".into(), encoder: "libx264".into() }
    }
}

impl FromStr for VideoCodec {
    type Err = MediaError;

    fn from_str(s: &str) -> Result<Self, MediaError> {
        let name = s.trim().to_ascii_lowercase();
        let encoder = ALIASES.iter().find(|(alias, _)| *alias == name).map_or(name.as_str(), |(_, e)| e).to_string();
        super::init();
        match encoder::find_by_name(&encoder) {
            Some(c) if c.is_video() => Ok(VideoCodec { name, encoder }),
            _ => Err(MediaError::UnknownEncoder(s.trim().to_string())),
        }
    }
}

impl TryFrom<String> for VideoCodec {
    type Error = MediaError;

    fn try_from(s: String) -> Result<Self, MediaError> {
        s.parse()
    }
}

impl From<VideoCodec> for String {
    fn from(c: VideoCodec) -> String {
        c.name
    }
}

impl fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl VideoCodec {
    /// FFmpeg's encoder name.
    pub fn encoder_name(&self) -> &str {
        &self.encoder
    }

    /// FFmpeg's encoder.
    pub fn encoder(&self) -> ffmpeg_next::Codec {
        super::init();
        // Checked when the codec was made.
        encoder::find_by_name(&self.encoder).expect("checked when parsed")
    }

    /// The codec FFmpeg writes into containers (`h264` for `libx264` and `h264_nvenc`).
    pub fn id(&self) -> Id {
        self.encoder().id()
    }

    /// The pixel format frames are encoded in unless `--pix-fmt` says otherwise: what players
    /// expect of the codec, or for the lossless codec, BGR itself.
    pub fn default_pix_fmt(&self) -> Pixel {
        match self.id() {
            Id::FFV1 => Pixel::BGRZ,
            Id::MJPEG => Pixel::YUVJ420P,
            _ => Pixel::YUV420P,
        }
    }

    /// Pixel formats the encoder takes (empty: it does not say).
    pub fn pix_fmts(&self) -> Vec<Pixel> {
        self.encoder().video().ok().and_then(|v| v.formats().map(Iterator::collect)).unwrap_or_default()
    }
}

/// How the output is encoded and muxed (`--codec`, `--crf`, … on `run` and `client`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutputOptions {
    /// The video encoder.
    pub codec: VideoCodec,
    /// Constant quality: lower is better and larger (x264 default 23).
    pub crf: Option<u32>,
    /// The encoder's speed/size trade-off (`veryfast`, `medium`, `slow`, … for x264 and x265).
    pub preset: Option<String>,
    /// Target bits per second instead of a constant quality.
    pub bitrate: Option<u64>,
    /// Most frames between key frames.
    pub keyint: Option<u32>,
    /// Pixel format to encode in (`yuv420p`, `yuv444p`, `yuv420p10le`, …).
    pub pix_fmt: Option<String>,
    /// The container, when the output's extension does not say (`-o -`).
    pub format: Option<String>,
}

/// x264's `X264_CPU_AVX512` (x264.h): its AVX-512 code.
const X264_CPU_AVX512: u32 = 1 << 16;

/// The instruction sets x264 finds on this CPU, less AVX-512, as its `asm` parameter takes
/// them; `None` where no x264 is loaded to ask.
///
/// x264's AVX-512 code (core 164, Debian 12's) reads bytes it never wrote, and the H.264 it
/// writes depends on what they hold: on one input, FFmpeg's own command line gives a different
/// stream under `MALLOC_PERTURB_=1` than under 165, and in vpd, whose threads leave different
/// bytes there on every run, the same job made different streams under load. Without it the
/// stream depends on the frames alone (any fill, any load), so `vpd run` and the cluster write
/// the same bytes, and a segment encoded again after a crash has the bytes of the one lost. It costs x264 about
/// 6 % of its own time (BENCHMARKS.md, "Repeatable H.264"). Other encoders do not need it.
fn x264_cpu_without_avx512() -> Option<u32> {
    static FLAGS: OnceLock<Option<u32>> = OnceLock::new();
    *FLAGS.get_or_init(|| {
        // SAFETY: looks a name up among the libraries already loaded; libavcodec brings in
        // libx264 where FFmpeg was built with it.
        let detect = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"x264_cpu_detect".as_ptr()) };
        if detect.is_null() {
            return None;
        }
        // SAFETY: x264 exports `uint32_t x264_cpu_detect(void)`, which only reads CPUID.
        let detect: extern "C" fn() -> u32 = unsafe { std::mem::transmute(detect) };
        Some(detect() & !X264_CPU_AVX512)
    })
}

/// x264's preset when none is given: measured against the other presets on 720p and 1080p
/// (BENCHMARKS.md, "Choosing the default x264 preset").
pub const DEFAULT_X264_PRESET: &str = "veryfast";

impl OutputOptions {
    /// The pixel format to encode in, checked against the encoder.
    pub fn pix_fmt(&self) -> Result<Pixel, MediaError> {
        let Some(name) = &self.pix_fmt else { return Ok(self.codec.default_pix_fmt()) };
        let c = std::ffi::CString::new(name.as_str())
            .map_err(|_| MediaError::BadOption(format!("bad --pix-fmt '{name}'")))?;
        // SAFETY: av_get_pix_fmt reads the NUL-terminated name.
        let pixel = Pixel::from(unsafe { ffi::av_get_pix_fmt(c.as_ptr()) });
        if pixel == Pixel::None {
            return Err(MediaError::BadOption(format!("unknown pixel format '{name}'")));
        }
        let supported = self.codec.pix_fmts();
        if !supported.is_empty() && !supported.contains(&pixel) {
            return Err(MediaError::BadOption(format!("{} cannot encode {name}", self.codec)));
        }
        Ok(pixel)
    }

    /// Encoder options for FFmpeg (`crf`, `preset`, …), after checking they fit the codec.
    pub fn encoder_options(&self) -> Result<Vec<(&'static str, String)>, MediaError> {
        let mut options = Vec::new();
        let id = self.codec.id();
        let software = matches!(self.codec.encoder_name(), "libx264" | "libx265" | "libvpx-vp9" | "libsvtav1");
        if let Some(crf) = self.crf {
            let (low, high) = match id {
                Id::H264 | Id::HEVC => (0, 51),
                Id::VP9 => (0, 63),
                Id::AV1 => (0, 63),
                _ => {
                    return Err(MediaError::BadOption(format!(
                        "--crf does not apply to {} (use --bitrate)",
                        self.codec
                    )));
                }
            };
            if !(low..=high).contains(&crf) {
                return Err(MediaError::BadOption(format!(
                    "--crf {crf} is out of range for {} ({low}-{high})",
                    self.codec
                )));
            }
        }
        if self.preset.is_some() && !software && !self.codec.encoder_name().contains("nvenc") {
            return Err(MediaError::BadOption(format!("--encoder-preset does not apply to {}", self.codec)));
        }
        if let Some(preset) = &self.preset {
            check_encoder_preset(self.codec.encoder_name(), preset).map_err(|known| {
                MediaError::BadOption(format!("{} does not take --encoder-preset {preset} ({known})", self.codec))
            })?;
        }
        match self.codec.encoder_name() {
            "libx264" | "libx265" => {
                let default_preset = if id == Id::H264 { DEFAULT_X264_PRESET } else { "medium" };
                options.push(("preset", self.preset.clone().unwrap_or_else(|| default_preset.into())));
                if self.bitrate.is_none() {
                    options.push(("crf", self.crf.unwrap_or(if id == Id::H264 { 23 } else { 28 }).to_string()));
                }
                if id == Id::HEVC {
                    options.push(("x265-params", "log-level=error".into()));
                } else if let Some(flags) = x264_cpu_without_avx512() {
                    options.push(("x264-params", format!("asm={flags}")));
                }
            }
            "libvpx-vp9" => {
                if self.bitrate.is_none() {
                    options.push(("crf", self.crf.unwrap_or(31).to_string()));
                }
                options.push(("row-mt", "1".into()));
                options.push(("deadline", "good".into()));
                options.push(("cpu-used", self.preset.clone().unwrap_or_else(|| "4".into())));
            }
            "libsvtav1" => {
                if self.bitrate.is_none() {
                    options.push(("crf", self.crf.unwrap_or(35).to_string()));
                }
                options.push(("preset", self.preset.clone().unwrap_or_else(|| "8".into())));
            }
            name if name.contains("nvenc") => {
                if let Some(preset) = &self.preset {
                    options.push(("preset", preset.clone()));
                }
                if let (Some(crf), None) = (self.crf, self.bitrate) {
                    options.push(("cq", crf.to_string()));
                }
            }
            "ffv1" => {
                // Level 3 with slices: FFV1 encodes its slices on every core. How many depends
                // on the frame size, which the sink sets (`sink::ffv1_slices`).
                options.push(("level", "3".into()));
                options.push(("slicecrc", "1".into()));
            }
            _ => {}
        }
        Ok(options)
    }

    /// Constant quantiser for codecs without a quality option (MPEG-4, MJPEG), when no bitrate
    /// is given: FFmpeg's default is a fixed 200 kbit/s, far too low for video worth filtering.
    pub fn qscale(&self) -> Option<i32> {
        if self.bitrate.is_some() {
            return None;
        }
        match self.codec.id() {
            Id::MPEG4 => Some(4),
            Id::MJPEG => Some(3),
            _ => None,
        }
    }
}

/// Checks an `--encoder-preset` against what `encoder` takes, before the encoder is opened (it
/// would refuse it with a bare "Invalid argument"); returns the presets it takes otherwise.
fn check_encoder_preset(encoder: &str, preset: &str) -> Result<(), &'static str> {
    const X26X: [&str; 10] =
        ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo"];
    let number_in = |range: std::ops::RangeInclusive<i32>| preset.parse::<i32>().is_ok_and(|n| range.contains(&n));
    let (fits, known) = match encoder {
        "libx264" | "libx265" => (
            X26X.contains(&preset),
            "it takes ultrafast, superfast, veryfast, faster, fast, medium, slow, slower, veryslow or placebo",
        ),
        "libvpx-vp9" => (number_in(-8..=8), "it takes a cpu-used speed from -8 to 8"),
        "libsvtav1" => (number_in(-1..=13), "it takes a speed from -1 to 13"),
        _ => (true, ""),
    };
    if fits { Ok(()) } else { Err(known) }
}

/// The muxer for `path` (by its extension) or `format`, and whether it can hold `codec`:
/// checked before any frame is decoded.
pub fn check_output(path: &Path, options: &OutputOptions) -> Result<ffmpeg_next::format::Output, MediaError> {
    super::init();
    let output = match &options.format {
        Some(name) => find_muxer(Some(name), None).ok_or_else(|| MediaError::UnknownContainer(name.clone()))?,
        None if super::live::implied_format(path).is_some() => {
            let name = super::live::implied_format(path).unwrap_or_default();
            find_muxer(Some(name), None).ok_or_else(|| MediaError::UnknownContainer(name.into()))?
        }
        None => {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
            if ext.is_empty() {
                return Err(MediaError::NoExtension(path.to_path_buf()));
            }
            find_muxer(None, Some(&format!("x.{ext}")))
                .ok_or_else(|| MediaError::UnknownContainer(path.display().to_string()))?
        }
    };
    if !container_holds(&output, options.codec.id()) {
        return Err(MediaError::CodecContainer {
            codec: options.codec.to_string(),
            container: output.name().to_string(),
        });
    }
    options.pix_fmt()?;
    options.encoder_options()?;
    Ok(output)
}

fn find_muxer(name: Option<&str>, file: Option<&str>) -> Option<ffmpeg_next::format::Output> {
    let name = name.map(|n| std::ffi::CString::new(n).ok()).unwrap_or(None);
    let file = file.map(|f| std::ffi::CString::new(f).ok()).unwrap_or(None);
    // SAFETY: av_guess_format reads the optional NUL-terminated strings and returns a static
    // muxer description, or null.
    unsafe {
        let muxer = ffi::av_guess_format(
            name.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            file.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            std::ptr::null(),
        );
        (!muxer.is_null()).then(|| ffmpeg_next::format::Output::wrap(muxer as *mut _))
    }
}

/// Whether codec `id`'s streams can be muxed into `output` as they are.
///
/// FFmpeg answers yes (1), no (0), or "unknown" (negative) for muxers that keep no codec
/// table, MPEG-TS among them. Unknown is not no: for MPEG-TS the codecs its muxer writes as
/// standard stream types are listed here; any other such muxer is trusted to refuse what it
/// cannot hold when its header is written.
pub fn container_holds(output: &ffmpeg_next::format::Output, id: codec::Id) -> bool {
    // SAFETY: a muxer description and a codec id.
    match unsafe { ffi::avformat_query_codec(output.as_ptr(), id.into(), ffi::FF_COMPLIANCE_NORMAL) } {
        1 => true,
        0 => false,
        _ if output.name() == "mpegts" => matches!(
            id,
            Id::H264
                | Id::HEVC
                | Id::MPEG1VIDEO
                | Id::MPEG2VIDEO
                | Id::MPEG4
                | Id::AAC
                | Id::MP2
                | Id::MP3
                | Id::AC3
                | Id::EAC3
                | Id::OPUS
                | Id::DTS
                | Id::TRUEHD
                | Id::DVB_SUBTITLE
                | Id::DVB_TELETEXT
        ),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(codec: &str) -> OutputOptions {
        OutputOptions { codec: codec.parse().unwrap(), ..OutputOptions::default() }
    }

    #[test]
    fn names_resolve_to_ffmpeg_encoders() {
        for (name, encoder) in [
            ("h264", "libx264"),
            ("HEVC", "libx265"),
            ("vp9", "libvpx-vp9"),
            ("av1", "libsvtav1"),
            ("mp4v", "mpeg4"),
            ("libaom-av1", "libaom-av1"),
        ] {
            assert_eq!(name.parse::<VideoCodec>().unwrap().encoder_name(), encoder);
        }
        let err = "h266".parse::<VideoCodec>().unwrap_err();
        assert!(err.to_string().starts_with("unknown encoder 'h266'"), "{err}");
        assert!("aac".parse::<VideoCodec>().is_err(), "an audio encoder is no video codec");
        assert_eq!(VideoCodec::default().to_string(), "h264");
    }

    #[test]
    fn containers_are_checked_against_ffmpeg() {
        assert_eq!(check_output(Path::new("o.mp4"), &options("h264")).unwrap().name(), "mp4");
        assert!(check_output(Path::new("o.webm"), &options("vp9")).is_ok());
        let e = check_output(Path::new("o.webm"), &options("h264")).err().unwrap();
        assert_eq!(e.to_string(), "the webm container cannot hold codec h264");
        let e = check_output(Path::new("o.mp4"), &options("ffv1")).err().unwrap();
        assert_eq!(e.to_string(), "the mp4 container cannot hold codec ffv1");
        assert!(matches!(check_output(Path::new("o"), &options("h264")), Err(MediaError::NoExtension(_))));
        assert!(matches!(check_output(Path::new("o.xyz"), &options("h264")), Err(MediaError::UnknownContainer(_))));
        // MPEG-TS keeps no codec table: FFmpeg's "unknown" is not a no.
        assert_eq!(check_output(Path::new("o.ts"), &options("h264")).unwrap().name(), "mpegts");
        let ts = OutputOptions { format: Some("mpegts".into()), ..options("hevc") };
        assert!(check_output(Path::new("-"), &ts).is_ok());
        let e = check_output(Path::new("o.ts"), &options("ffv1")).err().unwrap();
        assert_eq!(e.to_string(), "the mpegts container cannot hold codec ffv1");
        let nut = OutputOptions { format: Some("nut".into()), ..options("ffv1") };
        assert_eq!(check_output(Path::new("-"), &nut).unwrap().name(), "nut");
    }

    #[test]
    fn options_are_checked_against_the_codec() {
        let crf = |codec: &str, crf| OutputOptions { crf: Some(crf), ..options(codec) }.encoder_options();
        assert!(crf("h264", 18).is_ok());
        assert!(crf("h264", 60).unwrap_err().to_string().contains("out of range"));
        assert!(crf("mpeg4", 20).unwrap_err().to_string().contains("--crf does not apply to mpeg4"));
        let o = options("h264").encoder_options().unwrap();
        assert!(o.contains(&("preset", DEFAULT_X264_PRESET.into())) && o.contains(&("crf", "23".into())), "{o:?}");
        let pix = |codec: &str, p: &str| OutputOptions { pix_fmt: Some(p.into()), ..options(codec) }.pix_fmt();
        assert_eq!(pix("h264", "yuv444p").unwrap(), Pixel::YUV444P);
        assert!(pix("h264", "nonsense").is_err());
        assert!(pix("mjpeg", "yuv420p10le").is_err());
        assert_eq!(options("ffv1").pix_fmt().unwrap(), Pixel::BGRZ, "lossless means BGR as it is");
    }
}

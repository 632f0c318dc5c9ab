//! Output codecs and the containers each can be written to.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::VideoError;

/// A video codec OpenCV's FFmpeg writer can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// MPEG-4 part 2: fast to encode, large files. The default.
    Mp4v,
    /// H.264 (libx264, CRF 23): small files, about four times slower to encode.
    Avc1,
    /// Motion JPEG: every frame a JPEG.
    Mjpg,
    /// MPEG-4 part 2 tagged XVID, for old players.
    Xvid,
    /// FFV1: lossless, bit-exact BGR frames; .mkv, .avi or .mov only.
    Ffv1,
}

/// Output extensions vpd writes.
const CONTAINERS: &[&str] = &["mp4", "mkv", "avi", "mov", "m4v"];

impl Codec {
    /// The four-character code OpenCV selects the encoder by.
    pub fn fourcc(self) -> [char; 4] {
        match self {
            Codec::Mp4v => ['m', 'p', '4', 'v'],
            Codec::Avc1 => ['a', 'v', 'c', '1'],
            Codec::Mjpg => ['M', 'J', 'P', 'G'],
            Codec::Xvid => ['X', 'V', 'I', 'D'],
            Codec::Ffv1 => ['F', 'F', 'V', '1'],
        }
    }

    /// Containers the codec can be muxed into (checked against OpenCV 4.6 with FFmpeg 5.1).
    pub fn containers(self) -> &'static [&'static str] {
        match self {
            Codec::Mp4v | Codec::Avc1 | Codec::Xvid => CONTAINERS,
            Codec::Mjpg => &["mp4", "mkv", "avi", "mov"],
            Codec::Ffv1 => &["mkv", "avi", "mov"],
        }
    }

    /// The codec's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Mp4v => "mp4v",
            Codec::Avc1 => "avc1",
            Codec::Mjpg => "mjpg",
            Codec::Xvid => "xvid",
            Codec::Ffv1 => "ffv1",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Checks that `path`'s extension is a container vpd writes and that `codec` fits in it.
pub fn check_container(path: &Path, codec: Codec) -> Result<(), VideoError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    if ext.is_empty() {
        return Err(VideoError::NoExtension(path.to_path_buf()));
    }
    if !CONTAINERS.contains(&ext.as_str()) {
        return Err(VideoError::UnsupportedContainer { path: path.to_path_buf(), ext });
    }
    if !codec.containers().contains(&ext.as_str()) {
        let allowed = codec.containers().iter().map(|c| format!(".{c}")).collect::<Vec<_>>().join(", ");
        return Err(VideoError::CodecContainer { codec, ext, allowed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_are_checked() {
        assert!(check_container(Path::new("a/out.mp4"), Codec::Mp4v).is_ok());
        assert!(check_container(Path::new("out.MKV"), Codec::Ffv1).is_ok());
        let e = check_container(Path::new("out.webm"), Codec::Mp4v).unwrap_err();
        assert_eq!(
            e.to_string(),
            "out.webm: unsupported output container '.webm' (use .mp4, .mkv, .avi, .mov or .m4v)"
        );
        let e = check_container(Path::new("out"), Codec::Mp4v).unwrap_err();
        assert_eq!(
            e.to_string(),
            "out: no file extension to pick the container by (use .mp4, .mkv, .avi, .mov or .m4v)"
        );
        let e = check_container(Path::new("out.mp4"), Codec::Ffv1).unwrap_err();
        assert_eq!(e.to_string(), "codec ffv1 cannot be written to a .mp4 file (it can go in: .mkv, .avi, .mov)");
    }
}

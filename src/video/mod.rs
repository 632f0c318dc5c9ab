//! Reading and writing video files through OpenCV's FFmpeg backend.
//!
//! [`VideoSource`] decodes a file frame by frame and notices truncation; [`VideoSink`] encodes
//! into a hidden temporary file beside the output, checks what it wrote, and renames it into
//! place only when the whole video is there.

mod codec;
mod sink;
mod source;

use std::path::PathBuf;

pub use codec::{Codec, check_container};
pub use sink::{VideoSink, check_output_path, temp_path};
pub use source::{VideoSource, check_input};

/// What a video stream looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoInfo {
    /// Frame width in pixels.
    pub width: i32,
    /// Frame height in pixels.
    pub height: i32,
    /// Frames per second.
    pub fps: f64,
    /// Frames in the stream, when the container says.
    pub frame_count: Option<u64>,
}

impl VideoInfo {
    /// Bytes of one decoded 8-bit BGR frame.
    pub fn frame_bytes(&self) -> usize {
        self.width as usize * self.height as usize * 3
    }
}

/// Why a video could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    /// The input path does not exist.
    #[error("{0}: no such file")]
    NotFound(PathBuf),
    /// The input is a directory or something else that is not a regular file.
    #[error("{0}: not a regular file")]
    NotAFile(PathBuf),
    /// The input has zero bytes.
    #[error("{0}: the file is empty")]
    EmptyFile(PathBuf),
    /// FFmpeg cannot open it as a video.
    #[error("{0}: not a video file (or a truncated one): FFmpeg cannot read it")]
    NotAVideo(PathBuf),
    /// It opens, but there is no frame in it.
    #[error("{0}: the video has no frames")]
    NoFrames(PathBuf),
    /// Decoding stopped well before the end the container announces.
    #[error("{path}: truncated or corrupt: decoded {decoded} of the {expected} frames the container announces")]
    Truncated {
        /// The input.
        path: PathBuf,
        /// Frames decoded.
        decoded: u64,
        /// Frames announced.
        expected: u64,
    },
    /// The output has no extension to pick the container by.
    #[error("{0}: no file extension to pick the container by (use .mp4, .mkv, .avi, .mov or .m4v)")]
    NoExtension(PathBuf),
    /// The output extension is not a container vpd writes.
    #[error("{path}: unsupported output container '.{ext}' (use .mp4, .mkv, .avi, .mov or .m4v)")]
    UnsupportedContainer {
        /// The output.
        path: PathBuf,
        /// Its extension.
        ext: String,
    },
    /// The codec cannot go into that container.
    #[error("codec {codec} cannot be written to a .{ext} file (it can go in: {allowed})")]
    CodecContainer {
        /// The codec.
        codec: Codec,
        /// The container extension.
        ext: String,
        /// Extensions that work with the codec.
        allowed: String,
    },
    /// Output and input are the same file.
    #[error("{0}: the output would overwrite the input")]
    OutputIsInput(PathBuf),
    /// The output path cannot be created. (The OS error is shown in the message, not
    /// chained as a source, so that `{:#}` does not print it twice.)
    #[error("cannot write {path}: {cause}")]
    Unwritable {
        /// The output.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The output's directory is missing, not a directory, or not writable.
    #[error("cannot write {path}: {reason}")]
    OutputDir {
        /// The output.
        path: PathBuf,
        /// What is wrong with its directory.
        reason: String,
    },
    /// OpenCV refused to open an encoder.
    #[error("{path}: cannot open a {codec} encoder for {width}x{height} at {fps} fps")]
    Encoder {
        /// The output.
        path: PathBuf,
        /// The codec.
        codec: Codec,
        /// Frame width.
        width: i32,
        /// Frame height.
        height: i32,
        /// Frame rate.
        fps: f64,
    },
    /// The written file does not hold what was written (disk full, encoder failure).
    #[error("{path}: the encoder wrote {found} frames of {written}; output discarded")]
    Incomplete {
        /// The output.
        path: PathBuf,
        /// Frames handed to the encoder.
        written: u64,
        /// Frames found in the file.
        found: u64,
    },
    /// A file-system error.
    #[error("{path}: {cause}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The output's file system filled up while the video was written.
    #[error("{path}: no space left on device after {frames} frames; output discarded")]
    NoSpace {
        /// The output.
        path: PathBuf,
        /// Frames handed to the encoder when it was noticed.
        frames: u64,
    },
    /// OpenCV reported an error.
    #[error("opencv: {0}")]
    OpenCv(#[from] opencv::Error),
}

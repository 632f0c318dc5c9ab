//! Reading and writing media through FFmpeg's own libraries (libavformat, libavcodec,
//! libswscale, via `ffmpeg-next`): the only module that touches them.
//!
//! ```text
//!  input ─demux─▶ video packets ─decode─▶ frame ─swscale─▶ BGR Mat ─▶ pipeline (filters)
//!           │                                                                │
//!           └─▶ audio, subtitle, data packets ─▶ SideQueue ─┐                ▼
//!                                                            └─▶ MediaSink: BGR ─swscale─▶
//!                                                                encoder ─▶ mux (with the
//!                                                                copied packets) ─▶ output
//! ```
//!
//! [`MediaSource`] decodes the input's best video stream into 8-bit BGR frames, converted once,
//! straight into each frame's buffer. Every other stream's packets, and each frame's
//! presentation timestamp, go into a side queue (`side::SideQueue`) in demux order; [`MediaSink`], on the
//! writer thread, takes them from there in step with the frames it writes. So timestamps
//! (variable frame rates too) and audio reach the output untouched whatever the pipeline did
//! in between, from a file or a pipe alike. The sink encodes (H.264 by default), copies the
//! rest, keeps metadata, chapters and the colour description, and writes a file that appears
//! at its path only when complete (a device or a pipe is written in place). A rotated input
//! (a display matrix: a phone's portrait video) is turned upright as it is decoded, as players
//! and FFmpeg show it, so filters see it the right way up and the output needs no matrix.

mod audio;
pub mod clips;
mod codec;
pub mod convert;
mod encoder;
pub mod index;
pub mod live;
mod output;
pub mod packets;
pub mod relay;
mod segment;
mod side;
mod sink;
mod source;
mod stream;

use std::path::PathBuf;
use std::sync::Once;

pub use codec::{OutputOptions, VideoCodec, check_output};
pub use convert::thumbnail;
pub use output::{check_output_path, is_stream_target, temp_path};
pub use segment::{
    OnCommit, SegmentRecord, SegmentSink, SideFiles, check_segment_bytes, commit_segment_bytes, frames_per_segment,
    join as join_segments, segment_path, side_path,
};
pub use sink::MediaSink;
pub use source::{MediaSource, check_input};
pub use stream::VideoParams;

/// Where frames come from, in order (a [`MediaSource`], or a test's own).
pub trait FrameSource: Send {
    /// The next frame, or `None` at the end of the video.
    fn next_frame(&mut self) -> anyhow::Result<Option<opencv::core::Mat>>;
}

/// Where frames go, in order (a [`MediaSink`], or a test's own).
pub trait FrameSink: Send {
    /// Writes the next frame.
    fn write(&mut self, frame: &opencv::core::Mat) -> anyhow::Result<()>;

    /// Encoded video packets out so far, where the sink encodes: an encoder may hold frames
    /// back, and a live job's latency ends when its frame's packet is out, not when the frame
    /// went in.
    fn packets_out(&self) -> Option<u64> {
        None
    }
}

/// `-` as an input or output path: standard input or output.
pub const STDIO: &str = "-";

/// Initialises FFmpeg once per process and quiets its own logging: vpd reports failures itself,
/// in one line. `VPD_FFMPEG_LOG=1` brings FFmpeg's warnings back.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // Only registers formats and codecs; it cannot fail in FFmpeg 5.
        let _ = ffmpeg_next::init();
        let loud = std::env::var_os("VPD_FFMPEG_LOG").is_some_and(|v| v != "0");
        ffmpeg_next::log::set_level(if loud {
            ffmpeg_next::log::Level::Warning
        } else {
            ffmpeg_next::log::Level::Quiet
        });
    });
}

/// Lets a codec context use every kind of thread it has, as many as FFmpeg sees fit: frame
/// threads (H.264 decoding), slice threads (the MPEG-4 and FFV1 encoders have only those).
/// FFmpeg's default is one thread, which halves x264's speed and leaves MPEG-4 on one core.
fn all_threads(context: &mut ffmpeg_next::codec::context::Context) {
    // SAFETY: sets two plain fields of a codec context that is not open yet.
    unsafe {
        let c = context.as_mut_ptr();
        (*c).thread_count = 0;
        (*c).thread_type = ffmpeg_next::ffi::FF_THREAD_FRAME | ffmpeg_next::ffi::FF_THREAD_SLICE;
    }
}

/// What a video stream looks like: the one description of a video's shape, from the decoder
/// to the protocol's `Started`, the job events and the server's job status.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VideoInfo {
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frames per second (the average, for a variable rate).
    pub fps: f64,
    /// Frames in the stream, when the container says or its duration tells.
    #[serde(rename = "frames")]
    pub frame_count: Option<u64>,
}

impl VideoInfo {
    /// Bytes of one decoded 8-bit BGR frame.
    pub fn frame_bytes(&self) -> usize {
        self.width as usize * self.height as usize * 3
    }
}

/// Why media could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The input path does not exist.
    #[error("{0}: no such file")]
    NotFound(PathBuf),
    /// The input is a directory or something else that cannot be read as a stream.
    #[error("{0}: not a regular file or a pipe")]
    NotAFile(PathBuf),
    /// The input has zero bytes.
    #[error("{0}: the file is empty")]
    EmptyFile(PathBuf),
    /// FFmpeg cannot open it as media.
    #[error("{0}: not a video file (or a truncated one): FFmpeg cannot read it")]
    NotAVideo(PathBuf),
    /// It opens, but has no video stream (audio only, say).
    #[error("{0}: has no video stream")]
    NoVideoStream(PathBuf),
    /// The video stream's codec cannot be decoded here.
    #[error("{path}: cannot decode its {codec} video")]
    Undecodable {
        /// The input.
        path: PathBuf,
        /// The codec's name.
        codec: String,
    },
    /// It opens, but no frame decodes.
    #[error("{0}: the video has no frames")]
    NoFrames(PathBuf),
    /// The video cannot be cut into segments of packets (or a segment did not decode whole).
    #[error("{path}: cannot be processed in segments of packets: {why}")]
    Uncuttable {
        /// The input.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Decoding stopped well before the end the container announces.
    #[error(
        "{path}: truncated or corrupt: decoded {decoded} frames, up to {reached:.2} s of the {expected:.2} s the container announces"
    )]
    Truncated {
        /// The input.
        path: PathBuf,
        /// Frames decoded.
        decoded: u64,
        /// Where the video stopped, in seconds.
        reached: f64,
        /// The container's duration, in seconds.
        expected: f64,
    },
    /// The output has no extension to pick the container by, and no `--format`.
    #[error("{0}: no file extension to pick the container by (or name one with --format)")]
    NoExtension(PathBuf),
    /// FFmpeg has no muxer for that container.
    #[error("{0}: FFmpeg writes no container of that name")]
    UnknownContainer(String),
    /// No encoder of that name in this FFmpeg.
    #[error(
        "unknown encoder '{0}': this FFmpeg has no such video encoder (try h264, hevc, vp9, av1, ffv1, mpeg4 or mjpeg)"
    )]
    UnknownEncoder(String),
    /// The codec cannot go into that container.
    #[error("the {container} container cannot hold codec {codec}")]
    CodecContainer {
        /// The codec.
        codec: String,
        /// The container.
        container: String,
    },
    /// An output option the encoder cannot take.
    #[error("{0}")]
    BadOption(String),
    /// Output and input are the same file.
    #[error("{0}: the output would overwrite the input")]
    OutputIsInput(PathBuf),
    /// The output path cannot be created. (The OS error is shown in the message, not chained
    /// as a source, so that `{:#}` does not print it twice.)
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
    /// The output's file system filled up while it was written.
    #[error("{path}: no space left on device after {frames} frames; output discarded")]
    NoSpace {
        /// The output.
        path: PathBuf,
        /// Frames written when it happened.
        frames: u64,
    },
    /// A pipe or stream output closed before the end.
    #[error("{path}: the output stream closed after {frames} frames; it is incomplete")]
    StreamClosed {
        /// The output (`-` for standard output).
        path: PathBuf,
        /// Frames written before it closed.
        frames: u64,
    },
    /// A file-system error.
    #[error("{path}: {cause}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// FFmpeg failed at some step.
    #[error("{path}: {what}: {error}")]
    Ffmpeg {
        /// The file involved.
        path: PathBuf,
        /// The step.
        what: &'static str,
        /// FFmpeg's reason.
        error: ffmpeg_next::Error,
    },
    /// OpenCV failed (allocating a frame).
    #[error("opencv: {0}")]
    OpenCv(#[from] opencv::Error),
}

impl MediaError {
    /// Whether the input itself is at fault (missing, not a video, truncated, …), rather than
    /// the output or the machine: the server answers `bad_input` for these.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            MediaError::NotFound(_)
                | MediaError::NotAFile(_)
                | MediaError::EmptyFile(_)
                | MediaError::NotAVideo(_)
                | MediaError::NoVideoStream(_)
                | MediaError::Undecodable { .. }
                | MediaError::NoFrames(_)
                | MediaError::Truncated { .. }
        )
    }
}

//! Decoding a video file, with the checks that turn bad input into clear errors.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use opencv::core::{CV_8UC3, Mat, Size};
use opencv::imgproc;
use opencv::prelude::*;
use opencv::videoio::{self, VideoCapture};
use tracing::warn;

use super::{VideoError, VideoInfo};
use crate::pipeline::FrameSource;

/// Frame rate assumed when the container gives none (or nonsense).
const FALLBACK_FPS: f64 = 25.0;

/// Checks that `path` is a readable, non-empty regular file, and returns its size.
pub fn check_input(path: &Path) -> Result<u64, VideoError> {
    let io = |cause| VideoError::Io { path: path.to_path_buf(), cause };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => VideoError::NotFound(path.to_path_buf()),
        _ => io(e),
    })?;
    if !meta.is_file() {
        return Err(VideoError::NotAFile(path.to_path_buf()));
    }
    if meta.len() == 0 {
        return Err(VideoError::EmptyFile(path.to_path_buf()));
    }
    // OpenCV reports an unreadable file as "cannot open"; the OS says why.
    File::open(path).map_err(io)?;
    Ok(meta.len())
}

/// A video file being decoded, frame by frame.
pub struct VideoSource {
    path: PathBuf,
    capture: VideoCapture,
    info: VideoInfo,
    /// Decoded while opening, to prove there is a frame; handed out first.
    first: Option<Mat>,
    decoded: u64,
    warned_resize: bool,
}

impl VideoSource {
    /// Opens `path` and decodes its first frame, so that a file with no usable video fails here,
    /// before any work starts.
    pub fn open(path: &Path) -> Result<Self, VideoError> {
        let io = |cause| VideoError::Io { path: path.to_path_buf(), cause };
        check_input(path)?;
        let utf8 =
            path.to_str().ok_or_else(|| io(std::io::Error::new(ErrorKind::InvalidInput, "path is not valid UTF-8")))?;

        let mut capture = VideoCapture::from_file(utf8, videoio::CAP_FFMPEG)?;
        if !capture.is_opened()? {
            return Err(VideoError::NotAVideo(path.to_path_buf()));
        }
        let mut first = Mat::default();
        if !capture.read(&mut first)? || first.empty() {
            return Err(VideoError::NoFrames(path.to_path_buf()));
        }
        let fps = capture.get(videoio::CAP_PROP_FPS)?;
        let fps = if fps.is_finite() && (0.1..=1000.0).contains(&fps) {
            fps
        } else {
            warn!(path = %path.display(), fps, "the container gives no usable frame rate; writing at {FALLBACK_FPS} fps");
            FALLBACK_FPS
        };
        let count = capture.get(videoio::CAP_PROP_FRAME_COUNT)?;
        let info = VideoInfo {
            width: first.cols(),
            height: first.rows(),
            fps,
            frame_count: (count.is_finite() && count >= 1.0).then_some(count as u64),
        };
        Ok(VideoSource {
            path: path.to_path_buf(),
            capture,
            info,
            first: Some(first),
            decoded: 0,
            warned_resize: false,
        })
    }

    /// The stream's size, rate and announced length.
    pub fn info(&self) -> VideoInfo {
        self.info
    }

    /// At the end of the stream: an error if it ended well before the container said it would.
    fn check_complete(&self) -> Result<(), VideoError> {
        let Some(expected) = self.info.frame_count else {
            return Ok(());
        };
        // Some containers estimate the count from the duration; allow that estimate 2 % (at
        // least one frame) of slack. A truncated file falls far shorter.
        let slack = (expected / 50).max(1);
        if self.decoded + slack < expected {
            return Err(VideoError::Truncated { path: self.path.clone(), decoded: self.decoded, expected });
        }
        Ok(())
    }

    /// Makes a frame match the stream's first frame, so every frame has one size and type.
    fn normalise(&mut self, frame: Mat) -> opencv::Result<Mat> {
        let size = Size::new(self.info.width, self.info.height);
        if frame.size()? == size && frame.typ() == CV_8UC3 {
            return Ok(frame);
        }
        if !self.warned_resize {
            warn!(path = %self.path.display(), frame = self.decoded, "frame size changed mid-stream; scaling to the first frame's size");
            self.warned_resize = true;
        }
        let mut resized = Mat::default();
        imgproc::resize(&frame, &mut resized, size, 0.0, 0.0, imgproc::INTER_LINEAR)?;
        Ok(resized)
    }
}

impl FrameSource for VideoSource {
    fn next_frame(&mut self) -> anyhow::Result<Option<Mat>> {
        let frame = match self.first.take() {
            Some(first) => first,
            None => {
                let mut frame = Mat::default();
                if !self.capture.read(&mut frame)? || frame.empty() {
                    self.check_complete()?;
                    return Ok(None);
                }
                self.normalise(frame)?
            }
        };
        self.decoded += 1;
        Ok(Some(frame))
    }
}

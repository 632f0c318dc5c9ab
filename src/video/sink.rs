//! Encoding to a file that appears at its path only when it is complete.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use opencv::core::{Mat, Size};
use opencv::prelude::*;
use opencv::videoio::{self, VideoCapture, VideoWriter};

use super::{Codec, VideoError, check_container};
use crate::pipeline::FrameSink;

/// Refuses an output that would overwrite `input` or that is a directory.
pub fn check_output_path(input: &Path, output: &Path) -> Result<(), VideoError> {
    if output.is_dir() {
        return Err(VideoError::Unwritable {
            path: output.to_path_buf(),
            source: std::io::Error::new(ErrorKind::IsADirectory, "is a directory"),
        });
    }
    let same = match (std::fs::metadata(input), std::fs::metadata(output)) {
        // Both exist: the same inode is the same file, whatever the paths look like.
        (Ok(i), Ok(o)) => i.dev() == o.dev() && i.ino() == o.ino(),
        _ => {
            let canonical = |p: &Path| -> Option<PathBuf> {
                let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                Some(parent.canonicalize().ok()?.join(p.file_name()?))
            };
            canonical(input).is_some() && canonical(input) == canonical(output)
        }
    };
    if same {
        return Err(VideoError::OutputIsInput(output.to_path_buf()));
    }
    Ok(())
}

/// An encoder writing to a hidden temporary file beside the output.
///
/// [`VideoSink::finish`] checks the file and renames it to the output path; dropping the sink
/// unfinished deletes it, so a failed or cancelled job never leaves a file that looks complete.
pub struct VideoSink {
    writer: VideoWriter,
    temp: PathBuf,
    target: PathBuf,
    size: Size,
    written: u64,
    committed: bool,
}

impl VideoSink {
    /// Opens an encoder for `width`x`height` frames at `fps` that will end up at `target`.
    pub fn create(target: &Path, codec: Codec, fps: f64, width: i32, height: i32) -> Result<Self, VideoError> {
        check_container(target, codec)?;
        let temp = temp_path(target);
        // Creating the file ourselves turns "OpenCV could not open it" into the OS's reason.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|source| VideoError::Unwritable { path: target.to_path_buf(), source })?;
        let encoder_error = || VideoError::Encoder { path: target.to_path_buf(), codec, width, height, fps };
        let opened = (|| {
            let [a, b, c, d] = codec.fourcc();
            let fourcc = VideoWriter::fourcc(a, b, c, d)?;
            let temp_utf8 = temp.to_str().ok_or_else(|| opencv::Error::new(0, "output path is not valid UTF-8"))?;
            let writer = VideoWriter::new(temp_utf8, fourcc, fps, Size::new(width, height), true)?;
            Ok::<_, opencv::Error>(writer)
        })();
        match opened {
            Ok(writer) if writer.is_opened().unwrap_or(false) => Ok(VideoSink {
                writer,
                temp,
                target: target.to_path_buf(),
                size: Size::new(width, height),
                written: 0,
                committed: false,
            }),
            _ => {
                let _ = std::fs::remove_file(&temp);
                Err(encoder_error())
            }
        }
    }

    /// Closes the encoder, checks that the file holds every frame written, and moves it to the
    /// output path.
    pub fn finish(mut self) -> Result<PathBuf, VideoError> {
        self.writer.release()?;
        let found = count_frames(&self.temp)?;
        if found != self.written {
            return Err(VideoError::Incomplete { path: self.target.clone(), written: self.written, found });
        }
        std::fs::rename(&self.temp, &self.target)
            .map_err(|source| VideoError::Io { path: self.target.clone(), source })?;
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl FrameSink for VideoSink {
    fn write(&mut self, frame: &Mat) -> anyhow::Result<()> {
        let size = frame.size()?;
        anyhow::ensure!(
            size == self.size,
            "frame of {}x{} for a {}x{} video",
            size.width,
            size.height,
            self.size.width,
            self.size.height
        );
        self.writer.write(frame)?;
        self.written += 1;
        Ok(())
    }
}

impl Drop for VideoSink {
    fn drop(&mut self) {
        if !self.committed {
            let _ = self.writer.release();
            let _ = std::fs::remove_file(&self.temp);
        }
    }
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

/// The frame count a finished file announces.
fn count_frames(path: &Path) -> Result<u64, VideoError> {
    let utf8 = path.to_str().unwrap_or_default();
    let capture = VideoCapture::from_file(utf8, videoio::CAP_FFMPEG)?;
    if !capture.is_opened()? {
        return Ok(0);
    }
    let count = capture.get(videoio::CAP_PROP_FRAME_COUNT)?;
    Ok(if count.is_finite() && count > 0.0 { count.round() as u64 } else { 0 })
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
        assert!(matches!(err, VideoError::OutputIsInput(_)), "{err}");
        // A hard link is the same file under another name.
        let link = dir.path().join("link.mp4");
        std::fs::hard_link(&input, &link).unwrap();
        assert!(matches!(check_output_path(&input, &link), Err(VideoError::OutputIsInput(_))));
        assert!(check_output_path(&input, &dir.path().join("out.mp4")).is_ok());
        assert!(matches!(check_output_path(&input, dir.path()), Err(VideoError::Unwritable { .. })));
    }
}

//! Encoding to a file that appears at its path only when it is complete.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use opencv::core::{Mat, Size};
use opencv::prelude::*;
use opencv::videoio::{self, VideoCapture, VideoWriter};
use tracing::info;

use super::{Codec, VideoError, check_container};
use crate::pipeline::FrameSink;

/// Symbolic links followed before giving up on an output path (the kernel's own limit).
const MAX_LINKS: usize = 40;
/// Free space under which the output's file system counts as full: about two of FFmpeg's
/// 32 KiB write buffers. A write that failed for lack of space left less than one.
const FULL_BELOW: u64 = 64 << 10;

/// Checks, before any frame is decoded, that `output` can be written and would not overwrite
/// `input`, and returns where the file will really be written.
///
/// An output that is a symbolic link is written *through*: the file it points to is
/// replaced (or created) and the link stays, as `cp` and shell redirection do.
pub fn check_output_path(input: &Path, output: &Path) -> Result<PathBuf, VideoError> {
    let target = follow_links(output)?;
    if target.is_dir() {
        return Err(VideoError::Unwritable {
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
        return Err(VideoError::OutputDir { path: output.to_path_buf(), reason });
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
        return Err(VideoError::OutputIsInput(output.to_path_buf()));
    }
    Ok(target)
}

/// `path` with its last component's symbolic links followed, to a path that is not a link
/// (it may not exist yet: a dangling link names the file to create).
fn follow_links(path: &Path) -> Result<PathBuf, VideoError> {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&current)
                    .map_err(|cause| VideoError::Unwritable { path: path.to_path_buf(), cause })?;
                current = match current.parent() {
                    Some(dir) if link.is_relative() => dir.join(link),
                    _ => link,
                };
            }
            _ => return Ok(current),
        }
    }
    Err(VideoError::Unwritable {
        path: path.to_path_buf(),
        cause: std::io::Error::other(format!("more than {MAX_LINKS} symbolic links")),
    })
}

/// Whether this process may create files in `dir`.
fn writable(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: access reads the NUL-terminated path it is given.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// Bytes free to this process on the file system holding `file`.
fn free_bytes(file: &File) -> Option<u64> {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatvfs fills the struct passed by reference from a descriptor we own.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    // Root may use the blocks reserved for it, and so may fill them.
    // SAFETY: geteuid has no preconditions.
    let blocks = if unsafe { libc::geteuid() } == 0 { st.f_bfree } else { st.f_bavail };
    Some(blocks as u64 * st.f_frsize as u64)
}

/// An encoder writing to a hidden temporary file beside the output.
///
/// [`VideoSink::finish`] checks the file and renames it to the output path; dropping the sink
/// unfinished deletes it, so a failed or cancelled job never leaves a file that looks complete.
pub struct VideoSink {
    writer: VideoWriter,
    /// The temporary file, kept open to watch its file system's free space: OpenCV's writer
    /// does not report failed writes.
    file: File,
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
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|cause| VideoError::Unwritable { path: target.to_path_buf(), cause })?;
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
                file,
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
        // Closing writes the container's index: the last write that can meet a full disk.
        self.check_space()?;
        let found = count_frames(&self.temp)?;
        if found != self.written {
            return Err(VideoError::Incomplete { path: self.target.clone(), written: self.written, found });
        }
        std::fs::rename(&self.temp, &self.target)
            .map_err(|cause| VideoError::Io { path: self.target.clone(), cause })?;
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
        // The encoder drops what it cannot write without a word; a full file system is
        // noticed at the frame it happens, not after the whole video.
        self.check_space()?;
        Ok(())
    }
}

impl VideoSink {
    fn check_space(&self) -> Result<(), VideoError> {
        match free_bytes(&self.file) {
            Some(free) if free < FULL_BELOW => {
                Err(VideoError::NoSpace { path: self.target.clone(), frames: self.written })
            }
            _ => Ok(()),
        }
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
            Err(VideoError::OutputIsInput(_))
        ));
        // A loop is an error, not a hang.
        std::os::unix::fs::symlink("b.mp4", dir.path().join("a.mp4")).unwrap();
        std::os::unix::fs::symlink("a.mp4", dir.path().join("b.mp4")).unwrap();
        let err = check_output_path(&input, &dir.path().join("a.mp4")).unwrap_err();
        assert!(err.to_string().contains("symbolic links"), "{err}");
    }

    #[test]
    fn os_errors_are_printed_once() {
        let err = VideoError::Unwritable { path: "/x".into(), cause: std::io::Error::from_raw_os_error(libc::ENOENT) };
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(chain.matches("os error 2").count(), 1, "{chain}");
    }
}

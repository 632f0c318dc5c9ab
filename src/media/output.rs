//! Where the output goes: checks of an output path before anything is decoded (not the input,
//! a directory that exists and is writable, symbolic links written through), and the hidden
//! temporary file beside it that becomes the output only when complete.

use std::ffi::CString;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::info;

use super::{MediaError, STDIO};

/// Symbolic links followed before giving up on an output path (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Checks, before any frame is decoded, that `output` can be written and would not overwrite
/// `input`, and returns where the file will really be written (`-`: standard output).
///
/// An output that is a symbolic link is written *through*: the file it points to is
/// replaced (or created) and the link stays, as `cp` and shell redirection do.
pub fn check_output_path(input: &Path, output: &Path) -> Result<PathBuf, MediaError> {
    if output == Path::new(STDIO) || super::live::is_url(output) || super::live::is_pipe_url(output) {
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

/// Whether `target` is a network URL, a device, a pipe or a socket: written to in place, as a
/// stream, never through a file beside it renamed over it (that would replace `/dev/null`
/// itself).
pub fn is_stream_target(target: &Path) -> bool {
    super::live::is_url(target)
        || super::live::is_pipe_url(target)
        || std::fs::metadata(target).is_ok_and(|m| {
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
}

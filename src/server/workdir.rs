//! The server's work directory: where uploads and results live while their job runs.
//!
//! The server removes only what it made: each job's files when the job ends, and the
//! directory itself only if it created it. A directory the user named keeps everything else
//! in it. The directory is locked (`flock` on the directory itself, so no lock file appears
//! in it) for as long as the server runs, so two servers never share one; and a server that starts where a crashed one left
//! job files removes them, saying so (the job store, when it exists, will resume them).
//!
//! Everything the server writes here is private to its user: the directory is created 0700,
//! and the server runs with umask 077 so that files are 0600, whoever creates them (OpenCV's
//! encoder opens its own files).

use std::fs::{DirBuilder, File};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use tracing::{info, warn};

/// A locked work directory; dropping it unlocks it and removes what the server made.
pub struct WorkDir {
    path: PathBuf,
    created: bool,
    _lock: File,
}

impl WorkDir {
    /// Creates (0700) or adopts `path`, locks it, and clears a crashed server's job files.
    pub fn prepare(path: &Path) -> anyhow::Result<WorkDir> {
        let created = match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => {
                if meta.permissions().mode() & 0o077 != 0 {
                    warn!(
                        dir = %path.display(),
                        "the work directory is open to other users; its files are not (0600)"
                    );
                }
                false
            }
            Ok(_) => bail!("work directory {}: exists and is not a directory", path.display()),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(path)
                    .with_context(|| format!("creating the work directory {}", path.display()))?;
                true
            }
            Err(e) => return Err(e).with_context(|| format!("work directory {}", path.display())),
        };
        let lock = match lock(path, ("work directory", path, "--work-dir")) {
            Ok(lock) => lock,
            Err(e) => {
                if created {
                    let _ = std::fs::remove_dir_all(path);
                }
                return Err(e);
            }
        };
        let dir = WorkDir { path: path.to_path_buf(), created, _lock: lock };
        dir.clear_leftovers();
        Ok(dir)
    }

    /// Removes job files a server that did not stop cleanly left behind.
    fn clear_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.path) else { return };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_job_file(name) && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            warn!(
                dir = %self.path.display(),
                files = removed,
                "removed job files left by a server that did not stop cleanly (their jobs are lost)"
            );
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_dir_all(&self.path);
        }
        info!(dir = %self.path.display(), removed = self.created, "work directory released");
    }
}

/// Locks `dir` while the file returned lives. Errors name it as the `what` at `shown` (a
/// directory's own, or the one holding it), and say that `flag` gives a server its own.
pub(super) fn lock(dir: &Path, (what, shown, flag): (&str, &Path, &str)) -> anyhow::Result<File> {
    let file = File::open(dir).with_context(|| format!("cannot use the {what} {}", shown.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == ErrorKind::WouldBlock {
            bail!(
                "the {what} {} is in use by another vpd server; give this server its own with {flag} DIR",
                shown.display()
            );
        }
        return Err(e).with_context(|| format!("locking the {what} {}", dir.display()));
    }
    Ok(file)
}

/// A job's upload or result (`j` and 12 hex digits, then `.in` or `.out`), or an encoder's
/// partial output (`.NAME.vpd-partial-…`).
fn is_job_file(name: &str) -> bool {
    let job = name.strip_prefix('j').and_then(|rest| rest.get(..12).zip(rest.get(12..)));
    let is_job = job.is_some_and(|(id, tail)| {
        id.chars().all(|c| c.is_ascii_hexdigit()) && (tail.starts_with(".in") || tail.starts_with(".out"))
    });
    is_job || (name.starts_with('.') && name.contains(".vpd-partial-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_files_are_told_from_the_users_files() {
        for ours in
            ["j0123456789ab.in.mp4", "j0123456789ab.in", "jabcdef012345.out.mkv", ".j1.out.mp4.vpd-partial-7-0.mp4"]
        {
            assert!(is_job_file(ours), "{ours}");
        }
        for theirs in ["keep", "j0123.in.mp4", "jxyz456789ab.in.mp4", "j0123456789ab.mp4", "notes.txt"] {
            assert!(!is_job_file(theirs), "{theirs}");
        }
    }

    #[test]
    fn an_existing_directory_keeps_everything_but_job_files() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("keep"), "x").unwrap();
        std::fs::write(dir.join("j0123456789ab.in.mp4"), "left by a crash").unwrap();
        {
            let w = WorkDir::prepare(&dir).unwrap();
            assert!(!dir.join("j0123456789ab.in.mp4").exists(), "leftovers cleared at start");
            let second = WorkDir::prepare(&dir).err().expect("a second server is refused");
            assert!(second.to_string().contains("another vpd server"), "{second}");
            drop(w);
        }
        assert_eq!(std::fs::read_to_string(dir.join("keep")).unwrap(), "x");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "nothing of the server's is left");
    }

    #[test]
    fn a_created_directory_is_private_and_removed() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("a/b");
        let w = WorkDir::prepare(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        drop(w);
        assert!(!dir.exists());
        assert!(parent.path().join("a").exists(), "only the directory itself was the server's to remove");
    }

    #[test]
    fn a_file_in_the_way_is_an_error() {
        let parent = tempfile::tempdir().unwrap();
        let file = parent.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let err = WorkDir::prepare(&file).err().unwrap();
        assert!(err.to_string().contains("not a directory"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    }
}

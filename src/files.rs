//! A file removed when its guard is dropped: uploads, results and partial outputs that must
//! not outlive the job that made them, nor look complete when it failed.

use std::path::{Path, PathBuf};

/// Removes its file when dropped, unless [`RemoveOnDrop::keep`] was called.
#[derive(Debug)]
pub struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    /// Guards `path` (which need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RemoveOnDrop(Some(path.into()))
    }

    /// The guarded path.
    pub fn path(&self) -> &Path {
        self.0.as_deref().expect("kept guards are consumed")
    }

    /// The file stays: it is complete (or moved into place).
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_goes_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (gone, kept) = (dir.path().join("gone"), dir.path().join("kept"));
        std::fs::write(&gone, "x").unwrap();
        std::fs::write(&kept, "x").unwrap();
        drop(RemoveOnDrop::new(&gone));
        RemoveOnDrop::new(&kept).keep();
        assert!(!gone.exists() && kept.exists());
        drop(RemoveOnDrop::new(dir.path().join("never-made")));
    }
}

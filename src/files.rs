//! A file removed when its guard is dropped: uploads, results and partial outputs that must
//! not outlive the job that made them, nor look complete when it failed. And secrets read from
//! files (tokens, keys), with a word when other users can read them too.

use std::path::{Path, PathBuf};

/// The bytes of the `what` file at `path` (a token, the tokens, a key). A file that other users
/// can read is reported: a secret belongs to the service's user alone.
pub fn read_secret(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt as _;
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read the {what} file {}: {e}", path.display()))?;
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    if mode & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{mode:04o}"),
            "the {what} file is open to other users; make it 0600"
        );
    }
    Ok(bytes)
}

/// [`read_secret`], as text.
pub fn read_secret_text(path: &Path, what: &str) -> anyhow::Result<String> {
    String::from_utf8(read_secret(path, what)?)
        .map_err(|_| anyhow::anyhow!("the {what} file {} is not UTF-8 text", path.display()))
}

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

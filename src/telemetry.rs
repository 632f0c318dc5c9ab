//! Log output: `tracing` to stderr, as text or JSON, or to journald's own protocol when a
//! service manager connected stderr to the journal.

use anyhow::anyhow;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::cli::LogFormat;

/// Installs the global subscriber. `verbose` raises the default level (warn); `RUST_LOG`
/// overrides it. Text logs whose stderr is the journal (systemd sets `$JOURNAL_STREAM` to it)
/// go to journald with their fields as journal fields (span fields as `S1_PEER`, `S2_JOB`, …),
/// so `journalctl -o json` shows each line's job; `--log-format json` keeps JSON on stderr.
pub fn init(format: LogFormat, verbose: u8) -> anyhow::Result<()> {
    // lapin's own lines (a channel the broker closed, a connection lost) say again, in the
    // broker's words, what vpd reports with what it means; they show from -vv on.
    let level = match verbose {
        0 => "warn,lapin=off",
        1 => "info,lapin=off",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    if format == LogFormat::Text
        && stderr_is_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        return tracing_subscriber::registry()
            .with(filter)
            .with(journald.with_syslog_identifier("vpd".into()))
            .try_init()
            .map_err(|e| anyhow!("installing the logger: {e}"));
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow!("installing the logger: {e}"))
}

/// Whether stderr is the journal stream systemd named in `$JOURNAL_STREAM` (`DEVICE:INODE`).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else { return false };
    // SAFETY: fd 2 is only borrowed for fstat, never closed here.
    let stderr = unsafe { std::os::fd::BorrowedFd::borrow_raw(2) };
    let Ok(meta) = stderr.try_clone_to_owned().map(std::fs::File::from).and_then(|f| f.metadata()) else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_is_stderr_only_when_journal_stream_names_it() {
        use std::os::unix::fs::MetadataExt as _;
        // SAFETY: fd 2 is only borrowed for fstat.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(2) };
        let meta = std::fs::File::from(fd.try_clone_to_owned().unwrap()).metadata().unwrap();
        // SAFETY: this test's own process (nextest runs each test in one); nothing else reads it.
        unsafe { std::env::set_var("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())) };
        assert!(stderr_is_journal());
        unsafe { std::env::set_var("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino() + 1)) };
        assert!(!stderr_is_journal(), "another stream: stderr was redirected");
        unsafe { std::env::remove_var("JOURNAL_STREAM") };
        assert!(!stderr_is_journal());
    }
}

//! What documents the command line, generated from its clap definitions so it cannot drift
//! from the flags: shell completions (`vpd completions SHELL`) and man pages (`vpd manpages
//! DIR`, which the Debian package runs at build time).

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::Cli;

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "vpd", out);
    Ok(())
}

/// Writes `vpd.1` and one page per role (`vpd-server.1`, …) into `dir`; returns their names.
pub fn manpages(dir: &Path) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = Vec::new();
    let mut write = |name: String, page: clap::Command| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut file = std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
        clap_mangen::Man::new(page).render(&mut file).with_context(|| format!("writing {}", path.display()))?;
        written.push(format!("{name}.1"));
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let name = format!("vpd-{}", sub.get_name());
        write(name.clone(), sub.clone().name(name).bin_name(format!("vpd {}", sub.get_name())))?;
    }
    write("vpd".into(), cmd)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_has_a_man_page_and_completions_know_every_role() {
        let dir = tempfile::tempdir().unwrap();
        let mut pages = manpages(dir.path()).unwrap();
        pages.sort();
        assert_eq!(
            pages,
            [
                "vpd-client.1",
                "vpd-completions.1",
                "vpd-jobs.1",
                "vpd-presets.1",
                "vpd-preview.1",
                "vpd-run.1",
                "vpd-server.1",
                "vpd-worker.1",
                "vpd.1"
            ]
        );
        let server = std::fs::read_to_string(dir.path().join("vpd-server.1")).unwrap();
        assert!(server.starts_with(".ie") || server.contains(".TH"), "roff: {}", &server[..80]);
        assert!(server.contains("keep\\-results"), "the server's flags are on its page");
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut out = Vec::new();
            completions(shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            for word in ["server", "worker", "preview", "keep-results", "attach"] {
                assert!(text.contains(word), "{shell}: {word}");
            }
        }
    }
}

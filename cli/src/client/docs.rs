//! `sdctl completion SHELL` and `sdctl man`: generated from the clap grammar, so they list
//! exactly the commands and flags the binary accepts.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::Cli;

pub fn completion(shell: clap_complete::Shell, out: &mut impl Write) -> Result<()> {
    let mut cmd = Cli::command();
    // clap_complete panics when its writer fails (a closed pipe): let it write to memory.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "sdctl", &mut script);
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("writing the completion script")
}

/// The top-level page, sdctl(1).
pub fn man(out: &mut impl Write) -> Result<()> {
    clap_mangen::Man::new(Cli::command())
        .render(out)
        .context("writing the man page")?;
    out.flush().context("writing the man page")
}

/// sdctl.1 and one page per subcommand (sdctl-network-create.1 …) in `dir`; returns the files.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("sdctl") && n.ends_with(".1"))
        })
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> String {
        let mut buf = Vec::new();
        f(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn completion_scripts_know_the_commands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let s = text(|b| completion(shell, b));
            for word in ["network", "services", "prune", "socket", "subnet"] {
                assert!(s.contains(word), "{shell}: no {word}");
            }
        }
    }

    #[test]
    fn man_page_is_roff_with_the_commands() {
        let s = text(man);
        assert!(
            s.starts_with(".ie") || s.contains(".TH sdctl"),
            "{}",
            &s[..200]
        );
        for word in ["network", "services", "completion", "socket"] {
            assert!(s.contains(word), "no {word}");
        }
        let dir = std::env::temp_dir().join(format!("sdctl-man-{}", std::process::id()));
        let files = man_pages(&dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(String::from))
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        for want in [
            "sdctl.1",
            "sdctl-network-create.1",
            "sdctl-services-update.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
    }
}

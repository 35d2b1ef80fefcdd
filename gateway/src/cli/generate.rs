//! `shardgate completions <shell>` and `shardgate man`: shell completions and man pages
//! generated from the command line's own grammar ([`super::args::Cli`]), so they cannot
//! drift from it. Packagers run them at build time (docs/cli.md).

use super::args::Cli;
use clap::CommandFactory;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;

/// `completions <shell>`: the completion script on stdout.
pub(crate) fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "shardgate", &mut out);
    std::io::stdout().write_all(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// `man`: the top page (`shardgate.1`) on stdout, or with `--out DIR` one page per command
/// (`shardgate.1`, `shardgate-keys.1`, `shardgate-keys-list.1`, ...) written into DIR.
pub(crate) fn man(out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cmd = Cli::command();
    match out {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            std::io::stdout().write_all(&page)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
            let written = write_pages(cmd, dir)?;
            println!("wrote {written} man page(s) to {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Render `cmd` and every subcommand, each as `<path>.1` in `dir` (clap_mangen names each
/// page after its whole command path); returns how many pages there are.
fn write_pages(cmd: clap::Command, dir: &Path) -> anyhow::Result<usize> {
    clap_mangen::generate_to(cmd, dir)
        .map_err(|e| anyhow::anyhow!("cannot write the man pages to {}: {e}", dir.display()))?;
    let mut written = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "1") {
            // Every file this binary creates is born private (`main`'s umask); a man page
            // is for every user of the machine.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
            written += 1;
        }
    }
    Ok(written)
}

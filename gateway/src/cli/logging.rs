//! Log output of every command: the format the configuration asks for, to stderr.

use super::args::*;
use crate::app::config::{Config, LogFormat};

/// The log format the command's configuration asks for. Read before the command runs, so
/// that its first line is already in that format; a configuration that does not load falls
/// back to the default here and is reported by the command itself. Loading it before
/// `main` hardens the process is fine: the configuration holds no secret (token hashes,
/// key and PIN file paths, PIN variable names).
pub(crate) fn log_format(cli: &Cli) -> LogFormat {
    cli.command
        .config_sources()
        .and_then(|s| Config::load(&s).ok())
        .map(|c| c.log.format)
        .unwrap_or_default()
}

pub(crate) fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format.is_json() {
        // Event fields at the top level; the request span (with `request_id`) in `span`
        // and every enclosing span in `spans`.
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        // Colour codes only for a person at a terminal, never into a file or a collector.
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

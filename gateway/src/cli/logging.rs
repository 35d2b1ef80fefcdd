//! Log output of every command: the format the configuration asks for, to stderr; for
//! `serve` with `[telemetry] otlp_endpoint`, request spans exported over OTLP too
//! ([`super::telemetry`]).

use super::args::*;
use super::telemetry::Exporter;
use crate::app::config::{Config, LogFormat};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// What the command's configuration asks of its logging: the line format and, for `serve`,
/// where to export spans.
pub(crate) struct LogSetup {
    format: LogFormat,
    traces_url: Option<String>,
}

/// The log set-up the command's configuration asks for. Read before the command runs, so
/// that its first line is already in that format; a configuration that does not load falls
/// back to the default here and is reported by the command itself. Loading it before
/// `main` hardens the process is fine: the configuration holds no secret (token hashes,
/// key and PIN file paths, PIN variable names).
pub(crate) fn log_setup(cli: &Cli) -> LogSetup {
    let cfg = cli
        .command
        .config_sources()
        .and_then(|s| Config::load(&s).ok());
    let serve = matches!(cli.command, Command::Serve { .. });
    LogSetup {
        format: cfg.as_ref().map(|c| c.log.format).unwrap_or_default(),
        traces_url: cfg.filter(|_| serve).and_then(|c| c.telemetry.traces_url()),
    }
}

/// Install the log subscriber; the span exporter when one is configured (flushed by
/// [`Exporter::shutdown`] when the command ends).
pub(crate) fn init_logging(setup: LogSetup) -> Option<Exporter> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (exporter, otel) = match setup.traces_url.as_deref().map(Exporter::start) {
        Some(Ok((exporter, layer))) => (Some(exporter), Some(layer)),
        Some(Err(e)) => {
            eprintln!("shardgate: spans are not exported: {e}");
            (None, None)
        }
        None => (None, None),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if setup.format.is_json() {
        // Event fields at the top level; the request span (with `request_id` and
        // `trace_id`) in `span` and every enclosing span in `spans`.
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed()
    } else {
        // Colour codes only for a person at a terminal, never into a file or a collector.
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(fmt)
        .init();
    if let Some(url) = &setup.traces_url {
        if exporter.is_some() {
            crate::domain::trace::set_exporting();
            tracing::info!(url = %url, "exporting request spans over OTLP/HTTP");
        }
    }
    exporter
}

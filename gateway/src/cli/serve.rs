//! `shardgate serve`: run the gateway until SIGTERM or SIGINT, then shut down gracefully.

use crate::app::config::{Config, Sources};
use crate::app::state::AppState;
use std::process::ExitCode;

/// The configuration `serve` runs, and its TLS material loaded: the checks before the
/// listener is bound, shared with `config check`.
pub(crate) fn load_for_serve(
    sources: &Sources,
) -> anyhow::Result<(Config, Option<crate::http::tls::Tls>)> {
    let cfg = Config::load(sources)?;
    // Before anything is opened: a bad certificate or key stops start-up with its reason.
    let tls = cfg
        .tls
        .as_ref()
        .map(crate::http::tls::Tls::load)
        .transpose()?;
    Ok((cfg, tls))
}

pub(crate) async fn serve(sources: Sources) -> anyhow::Result<ExitCode> {
    // `main` has hardened the process already (core dumps, dumpable, umask).
    let (cfg, tls) = load_for_serve(&sources)?;
    // Bind before anything is created: a port in use must not leave a new data directory,
    // keyring, audit key and admin token behind, and its error names the address.
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let (state, startup) = AppState::build(&cfg).await?;
    let addr = listener.local_addr()?;
    if let Some(path) = &startup.admin_token_file {
        let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        println!(
            "admin token ({}) in {}",
            if startup.created_admin_token {
                "new"
            } else {
                "existing"
            },
            shown.display()
        );
    }
    // Listening before the address is announced, and from then on: a signal never finds the
    // default action, and a second signal sent right after the first is never missed.
    let mut signals = ShutdownSignals::new();
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("shardgate listening on {scheme}://{addr}");
    tracing::info!(%addr, %scheme, store = state.store.kind(), backends = ?state.backends.keys().collect::<Vec<_>>(), "serving");
    // SIGHUP re-reads the configuration and reloads its [tls] section (certificates, key,
    // client CA, [[tls.clients]]); nothing else of the configuration changes without a
    // restart. Installed with or without TLS, so a SIGHUP never kills the gateway.
    tokio::spawn(crate::http::tls::reload_on_hangup(tls.clone(), move || {
        Config::load(&sources)
            .map(|c| c.tls)
            .map_err(|e| e.to_string())
    }));
    state.start_migration_workers();
    state.start_token_refresh(cfg.auth.refresh_every());
    state.start_policy_refresh(std::time::Duration::from_millis(cfg.policy.refresh_ms));
    state.start_override_refresh(std::time::Duration::from_millis(cfg.breaker.refresh_ms));
    crate::app::state::start_audit_archiver(&cfg, &state).await?;
    let audit = state.audit.clone();
    let timeouts = cfg.timeouts.clone();
    let first = async move {
        signals.recv().await;
        tracing::info!("shutting down: no new connections; draining requests in flight");
        // A second signal during the drain means "now".
        tokio::spawn(async move {
            signals.recv().await;
            tracing::warn!("second shutdown signal: exiting at once");
            std::process::exit(130);
        });
    };
    crate::http::server::serve_with_tls(
        listener,
        crate::router(state.clone()),
        &timeouts,
        cfg.limits.max_connections,
        tls,
        first,
    )
    .await;
    // Workers stop claiming; an item in flight is either committed or left to its lease.
    state.stop_migration_workers();
    audit.checkpoint().await;
    tracing::info!("shut down");
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM and SIGINT (Ctrl-C), each one listener for the life of the process, so a signal
/// that arrives while nobody waits for it is kept for the next `recv`.
struct ShutdownSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// The next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = one(&mut self.term) => {},
            () = one(&mut self.int) => {},
        }
    }
}

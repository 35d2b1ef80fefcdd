//! Serving with real timeouts: `axum::serve` sets no hyper timer, so header-read timeouts
//! never fire with it (DESIGN.md). Each connection is served by hyper's HTTP/1 builder with
//! a Tokio timer and a header-read timeout; body-read and whole-request deadlines are
//! enforced in the router (`api::ApiJson`, `api::deadline`).

use crate::config::Timeouts;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// Serve `app` on `listener` until `shutdown` resolves, then let requests in flight finish
/// (up to `timeouts.shutdown_grace_ms`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    timeouts: &Timeouts,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let header_timeout = Duration::from_millis(timeouts.header_read_ms);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let svc = TowerToHyperService::new(app.clone());
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .keep_alive(true);
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection closed with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting for requests in flight");
    let grace = Duration::from_millis(timeouts.shutdown_grace_ms);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period passed with connections still open");
    }
}

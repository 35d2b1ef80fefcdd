//! Operator endpoints and per-request accounting: `GET /metrics` renders the process's
//! recorder ([`crate::domain::metrics`]) and [`track`] counts every request.

use super::api::Ctx;
use super::error::ApiError;
use crate::domain::auth::Scope;
use crate::domain::metrics::{handle, served_by};
use crate::http::state::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Instant;

/// Count and time every request by method, route template, status and backend (`none` when
/// no backend was called, `multiple` when several were, e.g. a batch across tiers).
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().as_str().to_string();
    let start = Instant::now();
    let (resp, backend) = served_by(next.run(req)).await;
    let status = resp.status().as_str().to_string();
    metrics::counter!("shardgate_http_requests_total",
        "method" => method.clone(), "route" => route.clone(),
        "status" => status.clone(), "backend" => backend)
    .increment(1);
    metrics::histogram!("shardgate_http_request_duration_seconds",
        "method" => method, "route" => route, "status" => status, "backend" => backend)
    .record(start.elapsed().as_secs_f64());
    resp
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")),
    security(("bearer" = ["metrics"])))]
pub async fn render(State(state): State<AppState>, ctx: Ctx) -> Result<Response, ApiError> {
    ctx.require(&state, Scope::Metrics, None, "metrics")?;
    publish_backend_stats(&state);
    state.audit.publish_queue_metrics();
    crate::domain::metrics::collect_process();
    let body = handle().map(|h| h.render()).unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

/// Copy every backend's gauges and counters into the recorder, at scrape time, as
/// `shardgate_backend_<stat>{backend="<instance>"}` (pool occupancy, cache hits, KMS calls).
fn publish_backend_stats(state: &AppState) {
    for (name, backend) in &state.backends {
        for stat in backend.stats() {
            let metric = format!("shardgate_backend_{}", stat.name);
            if stat.name.ends_with("_total") {
                metrics::counter!(metric, "backend" => name.clone()).absolute(stat.value);
            } else {
                #[allow(clippy::cast_precision_loss)] // gauges are small counts
                metrics::gauge!(metric, "backend" => name.clone()).set(stat.value as f64);
            }
        }
    }
}

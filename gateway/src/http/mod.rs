//! The HTTP layer: the router, extractors and middleware, one thin handler module per resource,
//! the server and TLS, and the one map from failures to statuses ([`error`]). Nothing below this
//! layer names HTTP.

pub mod accounts;
pub mod admin;
pub mod api;
pub mod approvals;
pub mod audit;
pub mod batch;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod health;
pub mod held;
pub mod idempotency;
pub mod openapi;
mod openapi_shared;
pub mod ops;
pub mod policy;
pub mod ratelimit;
pub mod refusals;
pub mod server;
pub mod settings;
pub mod shards;
pub mod state;
pub mod tls;

use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{delete, get, post, put};
use axum::Router;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use state::AppState;

/// The test-only fault hooks (cargo feature `fault-injection`; [`faults`]).
#[cfg(feature = "fault-injection")]
fn test_hooks() -> Router<AppState> {
    Router::new().route(
        "/v1/admin/backends/{name}/fault:logout",
        post(faults::hsm_logout),
    )
}

/// Without the `fault-injection` feature (every shipped build): no hook.
#[cfg(not(feature = "fault-injection"))]
fn test_hooks() -> Router<AppState> {
    Router::new()
}

/// The HTTP API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/accounts/{account}",
            put(accounts::put_account)
                .get(accounts::get_account)
                .delete(accounts::delete_account),
        )
        .route("/v1/accounts/{account}/shards", get(shards::list_shards))
        .route(
            "/v1/accounts/{account}/shards/{shard}",
            put(shards::put_shard)
                .get(shards::get_shard)
                .delete(shards::delete_shard),
        )
        .route(
            "/v1/accounts/{account}/shards/{shard}/versions/{version}",
            delete(shards::delete_shard_version),
        )
        .route("/v1/shards:batchGet", post(batch::batch_get))
        .route("/v1/admin/migrations", post(admin::start_migration))
        .route("/v1/admin/migrations/{id}", get(admin::get_migration))
        .route(
            "/v1/admin/migrations/{id}/pause",
            post(admin::pause_migration),
        )
        .route(
            "/v1/admin/migrations/{id}/resume",
            post(admin::resume_migration),
        )
        .route(
            "/v1/admin/migrations/{id}/cancel",
            post(admin::cancel_migration),
        )
        .route("/v1/admin/audit/events", get(audit::search_events))
        .route(
            "/v1/admin/policy",
            get(policy::get_policy).put(policy::put_policy),
        )
        .route(
            "/v1/admin/approvals/{id}",
            get(approvals::get_approval).post(approvals::approve),
        )
        .route("/v1/admin/keys", get(admin::list_keys))
        .route(
            "/v1/admin/keys/{backend}/{version}/state",
            post(admin::set_key_state),
        )
        .route(
            "/v1/admin/backends/{name}/circuit:close",
            post(admin::close_circuit),
        )
        .route(
            "/v1/admin/backends/{name}/circuit:open",
            post(admin::open_circuit),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(ops::render))
        .merge(test_hooks())
        .method_not_allowed_fallback(api::method_not_allowed)
        .fallback(api::not_found)
        .layer(from_fn_with_state(state.clone(), api::deadline))
        .layer(from_fn(api::no_store))
        // Every route and the fallbacks: unknown paths are counted as route `unmatched`.
        .layer(from_fn(ops::track))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(api::request_span)
                .on_response(api::LogResponse(
                    DefaultOnResponse::new().level(Level::INFO),
                )),
        )
        // Before the span, the log line and everything else: an over-long target is 414.
        .layer(from_fn_with_state(state.clone(), api::limit_uri))
        // Around the 414s and the refusals: answers past an address's budget are held back.
        .layer(from_fn_with_state(state.clone(), api::hold_past_budget))
        // Outermost: the id is decided before the request's span is made.
        .layer(from_fn(api::assign_request_id))
        .with_state(state)
}

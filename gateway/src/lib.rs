//! shardgate: a key-management gateway for MPC wallet key shards.
//!
//! Signing services store and fetch key shards over one HTTP API ([`app`]). Every shard is
//! envelope-encrypted ([`envelope`]) under a fresh data key wrapped by a backend from
//! `shardgate-backends`, chosen by the tier policy of `shardgate-policy`, stored through
//! `shardgate-store`, and every access is written to a tamper-evident audit chain
//! ([`audit`]). This crate wires them: HTTP, auth, config, CLI.

pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod breaker;
pub mod checkpoints;
pub mod cluster;
pub mod config;
pub mod envelope;
pub mod error;
pub mod files;
pub mod hygiene;
pub mod ids;
pub mod integrity;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod refusals;
pub mod server;
pub mod state;
pub mod tls;
pub mod token_admin;
pub mod tokens;
pub mod write_group;

use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{delete, get, post, put};
use axum::Router;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

pub use state::AppState;

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The HTTP API.
pub fn app(state: AppState) -> Router {
    use api::{accounts, admin, batch, health, shards};
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
        .route("/v1/admin/keys", get(admin::list_keys))
        .route(
            "/v1/admin/keys/{backend}/{version}/state",
            post(admin::set_key_state),
        )
        .route(
            "/v1/admin/backends/{name}/circuit:close",
            post(admin::close_circuit),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(metrics::render))
        .method_not_allowed_fallback(api::method_not_allowed)
        .fallback(api::not_found)
        .layer(from_fn_with_state(state.clone(), api::deadline))
        .layer(from_fn(api::no_store))
        // Every route and the fallbacks: unknown paths are counted as route `unmatched`.
        .layer(from_fn(metrics::track))
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

//! `null_route`: the HTTP floor. The gateway's shard routes with nothing behind them: same
//! server (`shardgate::http::server::serve`, same hyper settings and timers), same JSON shapes and
//! sizes, no authentication, no database, no crypto, no audit.

use anyhow::{Context, Result};
use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use shardgate::app::config::Timeouts;
use std::sync::Arc;

#[derive(Serialize)]
struct ShardResponse<'a> {
    shard: &'a str,
    version: i64,
    backend: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutShardRequest {
    shard: String,
    #[serde(default)]
    #[allow(dead_code)]
    expected_version: Option<i64>,
}

#[derive(Serialize)]
struct PutShardResponse {
    version: i64,
    backend: &'static str,
}

/// Serve on `listen` until killed; prints `{"listening": ADDR}` once bound.
pub(crate) async fn run(listen: &str, shard_bytes: usize) -> Result<()> {
    let body: Arc<str> = B64.encode(vec![0x5au8; shard_bytes]).into();
    let app =
        Router::new().route(
            "/v1/accounts/{account}/shards/{shard}",
            get({
                let body = body.clone();
                move |Path((account, shard)): Path<(String, String)>| {
                    let body = body.clone();
                    async move {
                        // The same work on the ids a real route does first: look at them.
                        let ok = !account.is_empty() && !shard.is_empty();
                        let status = if ok {
                            StatusCode::OK
                        } else {
                            StatusCode::BAD_REQUEST
                        };
                        (
                            status,
                            [(header::CACHE_CONTROL, "no-store")],
                            Json(ShardResponse {
                                shard: &body,
                                version: 1,
                                backend: "local",
                            }),
                        )
                            .into_response()
                    }
                }
            })
            .put(
                |Path((_account, _shard)): Path<(String, String)>,
                 Json(req): Json<PutShardRequest>| async move {
                    match B64.decode(req.shard.as_bytes()) {
                        Ok(_) => (
                            StatusCode::CREATED,
                            Json(PutShardResponse {
                                version: 1,
                                backend: "local",
                            }),
                        )
                            .into_response(),
                        Err(_) => StatusCode::BAD_REQUEST.into_response(),
                    }
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    println!(
        "{}",
        serde_json::json!({ "listening": listener.local_addr()?.to_string() })
    );
    shardgate::http::server::serve(
        listener,
        app,
        &Timeouts::default(),
        std::future::pending::<()>(),
    )
    .await;
    Ok(())
}

//! `/healthz` (liveness) and `/readyz` (can this process serve at all, so that one backend's
//! outage never takes every replica out of a load balancer). `/readyz` answers its status to
//! anyone (load balancers carry no token); the per-backend detail (names, breaker states,
//! pool and cache figures) only to a caller holding `metrics`, as `/metrics` does.

use super::api::json;
use crate::domain::auth::Scope;
use crate::http::state::AppState;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Liveness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Healthz {
    /// Always `ok`.
    pub status: String,
}

/// Store readiness.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoreReadiness {
    /// `postgres` or `sqlite`.
    pub kind: String,
    /// Whether a round trip succeeded.
    pub ok: bool,
    /// Error class when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One backend's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackendReadiness {
    /// Backend kind.
    pub kind: String,
    /// Whether it can wrap and unwrap now.
    pub usable: bool,
    /// Secret-free detail.
    pub detail: String,
    /// Gauges and counters (pool occupancy and recoveries, cache hits, KMS calls, CloudHSM
    /// cluster), the same numbers `/metrics` exposes.
    pub stats: BTreeMap<String, u64>,
}

/// Readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readyz {
    /// Whether this process can serve (store reachable and at least one backend usable).
    pub ready: bool,
    /// The store (only for a caller holding `metrics`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreReadiness>,
    /// Every backend by name (only for a caller holding `metrics`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backends: Option<BTreeMap<String, BackendReadiness>>,
    /// The cluster policy version this replica serves (only for a caller holding `metrics`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<i64>,
}

/// Process liveness only.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "alive", body = Healthz)))]
pub async fn healthz() -> Response {
    json(
        StatusCode::OK,
        Healthz {
            status: "ok".into(),
        },
    )
}

/// Readiness: the status for anyone; with a `metrics` credential, per-backend detail too.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "ready (detail only with a `metrics` credential)", body = Readyz),
              (status = 503, description = "cannot serve at all", body = Readyz)))]
pub async fn readyz(State(state): State<AppState>, parts: Parts) -> Response {
    let detailed =
        super::api::optional_caller(&parts, &state).is_some_and(|c| c.has(Scope::Metrics));
    // Bounded, so that an unreachable store answers 503 within the request's deadline
    // rather than the deadline's 504: half the deadline, at most 2 s.
    let ping_limit = std::time::Duration::from_millis((state.timeouts.request_ms / 2).min(2000));
    let ping = tokio::time::timeout(ping_limit, state.store.ping())
        .await
        .unwrap_or_else(|_| {
            Err(shardgate_store::StoreError::Unavailable(
                "ping timed out".into(),
            ))
        });
    let store = match ping {
        Ok(()) => StoreReadiness {
            kind: state.store.kind().into(),
            ok: true,
            error: None,
        },
        Err(e) => StoreReadiness {
            kind: state.store.kind().into(),
            ok: false,
            error: Some(
                match e {
                    shardgate_store::StoreError::Unavailable(_) => "unavailable",
                    _ => "error",
                }
                .into(),
            ),
        },
    };
    let mut backends = BTreeMap::new();
    for (name, b) in &state.backends {
        let h = b.health().await;
        backends.insert(
            name.clone(),
            BackendReadiness {
                kind: b.kind().into(),
                usable: h.usable,
                detail: h.detail,
                stats: b
                    .stats()
                    .into_iter()
                    .map(|s| (s.name.to_string(), s.value))
                    .collect(),
            },
        );
    }
    let ready = store.ok && backends.values().any(|b| b.usable);
    json(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Readyz {
            ready,
            store: detailed.then_some(store),
            backends: detailed.then_some(backends),
            policy_version: detailed.then(|| state.policy.version()),
        },
    )
}

//! Admin routes (scope `admin`): tier-migration jobs, key lifecycle states, breakers.

use super::api::{json, ApiJson, Ctx};
use crate::domain::auth::Scope;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::state::AppState;
use crate::service::{breakers, migrate};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use shardgate_store::{job_state, MigrationJob, MigrationSelector};
use utoipa::ToSchema;

/// `POST /v1/admin/migrations` body: one of `account` or `from_backend`
/// (+ `key_version_below` for a KEK rotation).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartMigrationRequest {
    /// Move this account's shard versions to where the policy places them now.
    #[serde(default)]
    pub account: Option<String>,
    /// Move every version wrapped by this backend instance.
    #[serde(default)]
    pub from_backend: Option<String>,
    /// With `from_backend`: also re-wrap versions whose key version is below this.
    #[serde(default)]
    pub key_version_below: Option<i64>,
}

/// `202` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct StartMigrationResponse {
    /// The job id.
    pub job: String,
    /// Shard versions the job looks at.
    pub total: i64,
}

/// One failed item.
#[derive(Debug, Serialize, ToSchema)]
pub struct MigrationFailureView {
    /// Account id.
    pub account: String,
    /// Shard id.
    pub shard: String,
    /// Version.
    pub version: i64,
    /// Why it stayed on its source.
    pub error: String,
}

/// A job's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct MigrationJobView {
    /// Job id.
    pub job: String,
    /// `running`, `paused`, `cancelled`, `completed` or `completed_with_errors`.
    pub state: String,
    /// Selector: account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Selector: source backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_backend: Option<String>,
    /// Selector: key version bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_version_below: Option<i64>,
    /// Items snapshotted at the start.
    pub total: i64,
    /// Re-wrapped.
    pub done: i64,
    /// Failed (still readable on their source).
    pub failed: i64,
    /// Needed nothing, or changed meanwhile.
    pub skipped: i64,
    /// Not settled yet.
    pub remaining: i64,
    /// The most recent item error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Failed items (at most 100).
    pub errors: Vec<MigrationFailureView>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
    /// A policy apply's job: when (unix milliseconds) it snapshots its selector once more
    /// before it completes (the versions replicas still on the previous policy version placed
    /// meanwhile); absent once taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up_at: Option<i64>,
}

async fn view(state: &AppState, job: MigrationJob) -> Result<MigrationJobView, ApiError> {
    // Listing failures reads through the job's items: not for a job without any.
    let failures = if job.failed > 0 {
        state.store.migration_failures(&job.id, 100).await?
    } else {
        Vec::new()
    };
    let errors = failures
        .into_iter()
        .map(|f| MigrationFailureView {
            account: f.account,
            shard: f.shard,
            version: f.version.get(),
            error: f.error,
        })
        .collect();
    Ok(MigrationJobView {
        remaining: job.remaining(),
        job: job.id,
        state: job.state,
        account: job.selector.account,
        from_backend: job.selector.from_backend,
        key_version_below: job.selector.key_version_below,
        total: job.total,
        done: job.done,
        failed: job.failed,
        skipped: job.skipped,
        last_error: job.last_error,
        errors,
        created_at: job.created_at,
        updated_at: job.updated_at,
        catch_up_at: job.catch_up_at,
    })
}

fn job_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path.map_err(|_| ApiError::new(ErrorCode::InvalidId, "invalid job id"))?;
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(ApiError::new(ErrorCode::InvalidId, "invalid job id"));
    }
    Ok(id)
}

/// Start a re-wrap job.
#[utoipa::path(post, path = "/v1/admin/migrations", tag = "admin",
    request_body = StartMigrationRequest,
    responses((status = 202, description = "started", body = StartMigrationResponse)),
    security(("bearer" = ["admin"])))]
pub async fn start_migration(
    State(state): State<AppState>,
    ctx: Ctx,
    ApiJson(body): ApiJson<StartMigrationRequest>,
) -> Result<Response, ApiError> {
    // The admin rule: a job of one account checks the prefix; a backend-wide one has
    // global effect and needs a token without a prefix.
    match &body.account {
        Some(account) => ctx.require(&state, Scope::Admin, Some(account), "migration.start")?,
        None => ctx.require_global(&state, Scope::Admin, "migration.start")?,
    }
    if body.account.is_some() == body.from_backend.is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "give exactly one of account and from_backend",
        ));
    }
    if body.key_version_below.is_some() && body.from_backend.is_none() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "key_version_below goes with from_backend",
        ));
    }
    let selector = MigrationSelector {
        account: body.account,
        from_backend: body.from_backend,
        key_version_below: body.key_version_below,
    };
    let job = migrate::start(&state, selector, &ctx.origin()).await?;
    Ok(json(
        StatusCode::ACCEPTED,
        StartMigrationResponse {
            job: job.id,
            total: job.total,
        },
    ))
}

/// A job's state, counts and failed items.
#[utoipa::path(get, path = "/v1/admin/migrations/{id}", tag = "admin",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, description = "the job", body = MigrationJobView)),
    security(("bearer" = ["admin"])))]
pub async fn get_migration(
    State(state): State<AppState>,
    ctx: Ctx,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let job = reachable_job(&state, &ctx, path, "migration.get").await?;
    Ok(json(StatusCode::OK, view(&state, job).await?))
}

/// The job a path names, once the caller holds `admin` and reaches it: a job of one account
/// checks the prefix, a backend-wide job needs a token without one (the admin rule).
async fn reachable_job(
    state: &AppState,
    ctx: &Ctx,
    path: Result<Path<String>, PathRejection>,
    action: &str,
) -> Result<MigrationJob, ApiError> {
    ctx.require(state, Scope::Admin, None, action)?;
    let id = job_id(path)?;
    let job = state
        .store
        .get_migration_job(&id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such migration job"))?;
    match &job.selector.account {
        Some(account) => ctx.require(state, Scope::Admin, Some(account), action)?,
        None => ctx.require_global(state, Scope::Admin, action)?,
    }
    Ok(job)
}

async fn change(
    state: AppState,
    ctx: Ctx,
    path: Result<Path<String>, PathRejection>,
    to: &str,
) -> Result<Response, ApiError> {
    let id = reachable_job(&state, &ctx, path, "migration.state")
        .await?
        .id;
    let job = migrate::transition(&state, &id, to, &ctx.origin()).await?;
    Ok(json(StatusCode::OK, view(&state, job).await?))
}

/// Pause a running job (workers stop claiming; claimed items finish).
#[utoipa::path(post, path = "/v1/admin/migrations/{id}/pause", tag = "admin",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, description = "paused", body = MigrationJobView)),
    security(("bearer" = ["admin"])))]
pub async fn pause_migration(
    State(state): State<AppState>,
    ctx: Ctx,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    change(state, ctx, path, job_state::PAUSED).await
}

/// Resume a paused job.
#[utoipa::path(post, path = "/v1/admin/migrations/{id}/resume", tag = "admin",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, description = "running", body = MigrationJobView)),
    security(("bearer" = ["admin"])))]
pub async fn resume_migration(
    State(state): State<AppState>,
    ctx: Ctx,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    change(state, ctx, path, job_state::RUNNING).await
}

/// Cancel a job: moved rows stay moved, the others stay on their source.
#[utoipa::path(post, path = "/v1/admin/migrations/{id}/cancel", tag = "admin",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, description = "cancelled", body = MigrationJobView)),
    security(("bearer" = ["admin"])))]
pub async fn cancel_migration(
    State(state): State<AppState>,
    ctx: Ctx,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    change(state, ctx, path, job_state::CANCELLED).await
}

/// A backend's breaker after an operator override.
#[derive(Debug, Serialize, ToSchema)]
pub struct CircuitResponse {
    /// Backend instance.
    pub backend: String,
    /// `closed` or `forced-open` (on this replica; the others follow within `[breaker]
    /// refresh_ms`).
    pub state: String,
}

/// `circuit:open` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenCircuitRequest {
    /// How long every call to the backend is refused (1 to 604800 seconds), then it closes.
    pub ttl_secs: u64,
}

pub(crate) fn backend_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) =
        path.map_err(|_| ApiError::new(ErrorCode::InvalidId, "invalid backend name"))?;
    Ok(name)
}

async fn set_circuit(
    state: &AppState,
    ctx: &Ctx,
    name: String,
    action: breakers::CircuitAction,
) -> Result<Response, ApiError> {
    let now = breakers::set_circuit(state, &name, action, &ctx.origin()).await?;
    Ok(json(
        StatusCode::OK,
        CircuitResponse {
            backend: name,
            state: now.to_string(),
        },
    ))
}

/// Operator override: close a backend's circuit breaker now, on every replica (audited).
#[utoipa::path(post, path = "/v1/admin/backends/{name}/circuit:close", tag = "admin",
    params(("name" = String, Path, description = "backend instance")),
    responses((status = 200, description = "closed", body = CircuitResponse)),
    security(("bearer" = ["admin"])))]
pub async fn close_circuit(
    State(state): State<AppState>,
    ctx: Ctx,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    ctx.require_global(&state, Scope::Admin, "backend.circuit_close")?;
    let name = backend_name(path)?;
    set_circuit(&state, &ctx, name, breakers::CircuitAction::Close).await
}

/// Operator override (maintenance): open a backend's circuit breaker on every replica for
/// `ttl_secs`; calls to it answer 503 with the rest as `Retry-After` (audited).
#[utoipa::path(post, path = "/v1/admin/backends/{name}/circuit:open", tag = "admin",
    params(("name" = String, Path, description = "backend instance")),
    request_body = OpenCircuitRequest,
    responses((status = 200, description = "opened", body = CircuitResponse)),
    security(("bearer" = ["admin"])))]
pub async fn open_circuit(
    State(state): State<AppState>,
    ctx: Ctx,
    path: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<OpenCircuitRequest>,
) -> Result<Response, ApiError> {
    ctx.require_global(&state, Scope::Admin, "backend.circuit_open")?;
    let name = backend_name(path)?;
    let action = breakers::CircuitAction::Open {
        ttl_secs: body.ttl_secs,
    };
    set_circuit(&state, &ctx, name, action).await
}

/// `GET /v1/admin/keys` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeysResponse {
    /// Every registered KEK version of every backend, by backend and version.
    pub keys: Vec<crate::service::keys_admin::KeyView>,
    /// Reserved wraps of one version past which the gateway warns.
    pub wrap_warn_at: u64,
    /// Reserved wraps of one version at which new wraps are refused.
    pub wrap_limit: u64,
}

/// Every KEK version of every backend: state, when and by whom it last changed, the shard
/// versions wrapped under it, and its wrap counter.
#[utoipa::path(get, path = "/v1/admin/keys", tag = "admin",
    responses((status = 200, description = "key versions", body = KeysResponse)),
    security(("bearer" = ["admin"])))]
pub async fn list_keys(State(state): State<AppState>, ctx: Ctx) -> Result<Response, ApiError> {
    ctx.require_global(&state, Scope::Admin, "key.list")?;
    let keys = crate::service::keys_admin::list(&state).await?;
    let cfg = state.keys.config();
    Ok(json(
        StatusCode::OK,
        KeysResponse {
            keys,
            wrap_warn_at: cfg.wrap_warn_at,
            wrap_limit: cfg.wrap_limit,
        },
    ))
}

/// `POST /v1/admin/keys/{backend}/{version}/state` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyStateRequest {
    /// `active` (promote: the backend's active version becomes `decrypt-only`),
    /// `decrypt-only` or `destroyed` (only from `decrypt-only`, and only once no shard
    /// version references it).
    pub state: String,
}

/// Change a KEK version's lifecycle state (audited). `destroyed` is final and refused with
/// 409 while shard versions still reference the version.
#[utoipa::path(post, path = "/v1/admin/keys/{backend}/{version}/state", tag = "admin",
    params(("backend" = String, Path, description = "backend instance"),
           ("version" = i64, Path, description = "KEK version")),
    request_body = KeyStateRequest,
    responses((status = 200, description = "the version now", body = crate::service::keys_admin::TransitionResponse),
               (status = 202, description = "held for approval (dual control)", body = crate::http::held::HeldResponse)),
    security(("bearer" = ["admin"])))]
pub async fn set_key_state(
    State(state): State<AppState>,
    ctx: Ctx,
    path: Result<Path<(String, String)>, PathRejection>,
    ApiJson(body): ApiJson<KeyStateRequest>,
) -> Result<Response, ApiError> {
    ctx.require_global(&state, Scope::Admin, "key.state")?;
    let Path((backend, version)) =
        path.map_err(|_| ApiError::new(ErrorCode::InvalidId, "invalid backend or version"))?;
    let version = version
        .parse::<u32>()
        .map_err(|_| ApiError::new(ErrorCode::InvalidId, "a key version is a number"))?;
    let to = crate::service::keys_admin::parse_state(&body.state)?;
    // Dual control: a destroy waits for a second credential.
    if to == shardgate_policy::KeyState::Destroyed {
        let op = crate::service::approvals::HeldOp::KeyDestroy {
            backend: backend.clone(),
            version: i64::from(version),
        };
        if let Some(h) = crate::service::approvals::hold(&state, &op, &ctx.origin()).await? {
            return Ok(super::held::held(h));
        }
    }
    let answer = crate::service::keys_admin::transition(
        &state,
        &backend,
        i64::from(version),
        to,
        &ctx.origin(),
    )
    .await?;
    Ok(json(StatusCode::OK, answer))
}

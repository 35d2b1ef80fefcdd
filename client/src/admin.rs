//! The operators' routes (scope `admin`, `audit:read`, `metrics`) and the open ones: re-wrap
//! jobs, key states, breakers, the audit search, health, readiness, metrics and the API
//! document. Reads are retried; the admin writes are not (none takes an idempotency key).

use crate::retry::Repeat;
use crate::shards::{body, seg};
use crate::transport::{json, Call, Client};
use crate::types::{Circuit, Health, MigrationJob, MigrationSelector, Readiness, StartedMigration};
use crate::Error;
use reqwest::Method;

/// A KEK version as `GET /v1/admin/keys` lists it.
#[derive(Debug, Clone, serde::Deserialize, PartialEq, Eq)]
pub struct KeyVersion {
    /// Backend instance.
    pub backend: String,
    /// Version.
    pub version: i64,
    /// `active`, `decrypt-only`, `disabled`, `destroyed`.
    pub state: String,
    /// Shard versions wrapped under it.
    pub shard_versions: i64,
    /// Last change, unix ms.
    pub changed_ms: i64,
    /// Who changed it.
    pub changed_by: String,
}

/// The policy version a gateway serves.
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
pub struct ServedPolicy {
    /// Its version number.
    pub version: i64,
    /// Hex SHA-256 of its canonical document.
    pub digest: String,
    /// Its rules: `{"tiers":{...},"pins":[...],"rollouts":[...]}`.
    pub policy: serde_json::Value,
}

/// How [`Client::apply_policy`] applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyPolicy {
    /// Measure and show; commit nothing.
    pub dry_run: bool,
    /// Apply only if this is still the served version.
    pub expected_version: Option<i64>,
    /// Start the re-wrap jobs of the moved accounts.
    pub migrate: bool,
    /// Confirm moves that lower accounts' protection (admin).
    pub allow_downgrade: bool,
}

/// What an apply measured (and did).
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
pub struct PolicyChange {
    /// The version measured against.
    pub from_version: i64,
    /// The version committed (a dry run: the one it would be).
    pub version: i64,
    /// Whether a version was committed.
    pub applied: bool,
    /// Rules added, removed or changed (`kind`, `name`, `before`, `after`).
    pub changes: Vec<serde_json::Value>,
    /// Accounts measured.
    pub accounts_scanned: u64,
    /// Accounts whose new versions change backend.
    pub moved_total: u64,
    /// The moves by tier, backends and rule.
    pub moves: Vec<serde_json::Value>,
    /// The first 1,000 moved accounts.
    pub moved_accounts: Vec<String>,
    /// Re-wrap jobs started.
    pub migration_jobs: Vec<String>,
}

/// One page of an audit search.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    /// The events, one JSON object each (docs/api.md lists their fields).
    pub events: Vec<serde_json::Value>,
    /// Pass as `cursor` for the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// What an audit search selects (every field optional; times are unix ms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Account.
    pub account: Option<String>,
    /// Shard.
    pub shard: Option<String>,
    /// Action, e.g. `shard.get`.
    pub action: Option<String>,
    /// Outcome, e.g. `ok`.
    pub outcome: Option<String>,
    /// From (inclusive).
    pub from: Option<i64>,
    /// To (exclusive).
    pub to: Option<i64>,
    /// Most events.
    pub limit: Option<u32>,
    /// The previous page's cursor.
    pub cursor: Option<String>,
}

impl Client {
    /// Start a re-wrap job.
    pub async fn start_migration(
        &self,
        select: &MigrationSelector,
    ) -> Result<StartedMigration, Error> {
        let mut call = Call::new(Method::POST, "/v1/admin/migrations".into(), Repeat::Unsafe);
        call.body = Some(body(
            &serde_json::to_value(select).map_err(|e| Error::Invalid(e.to_string()))?,
        )?);
        json(self.send(&call).await?).await
    }

    /// A re-wrap job.
    pub async fn get_migration(&self, job: &str) -> Result<MigrationJob, Error> {
        let call = Call::new(
            Method::GET,
            format!("/v1/admin/migrations/{}", seg(job)),
            Repeat::Safe,
        );
        json(self.send(&call).await?).await
    }

    /// Pause, resume or cancel a job (`action`: `pause`, `resume`, `cancel`).
    pub async fn control_migration(
        &self,
        job: &str,
        action: MigrationAction,
    ) -> Result<MigrationJob, Error> {
        let path = format!("/v1/admin/migrations/{}/{}", seg(job), action.as_str());
        json(
            self.send(&Call::new(Method::POST, path, Repeat::Unsafe))
                .await?,
        )
        .await
    }

    /// Every KEK version of every backend.
    pub async fn list_keys(&self) -> Result<Vec<KeyVersion>, Error> {
        #[derive(serde::Deserialize)]
        struct Wire {
            keys: Vec<KeyVersion>,
        }
        let call = Call::new(Method::GET, "/v1/admin/keys".into(), Repeat::Safe);
        Ok(json::<Wire>(self.send(&call).await?).await?.keys)
    }

    /// Move a KEK version to `state` (`decrypt-only`, `disabled`, `destroyed`, ...); the
    /// gateway's answer as it is.
    pub async fn set_key_state(
        &self,
        backend: &str,
        version: i64,
        state: &str,
    ) -> Result<serde_json::Value, Error> {
        let path = format!("/v1/admin/keys/{}/{version}/state", seg(backend));
        let mut call = Call::new(Method::POST, path, Repeat::Unsafe);
        call.body = Some(body(&serde_json::json!({ "state": state }))?);
        json(self.send(&call).await?).await
    }

    /// Close a backend's breaker (operator override).
    pub async fn close_circuit(&self, backend: &str) -> Result<Circuit, Error> {
        let path = format!("/v1/admin/backends/{}/circuit:close", seg(backend));
        json(
            self.send(&Call::new(Method::POST, path, Repeat::Unsafe))
                .await?,
        )
        .await
    }

    /// Open a backend's breaker on every replica for `ttl_secs` (maintenance; operator
    /// override): calls to it answer 503 until the window ends or [`Client::close_circuit`].
    pub async fn open_circuit(&self, backend: &str, ttl_secs: u64) -> Result<Circuit, Error> {
        let path = format!("/v1/admin/backends/{}/circuit:open", seg(backend));
        let mut call = Call::new(Method::POST, path, Repeat::Unsafe);
        call.body = Some(body(&serde_json::json!({ "ttl_secs": ttl_secs }))?);
        json(self.send(&call).await?).await
    }

    /// The cluster policy version the gateway serves (`GET /v1/admin/policy`).
    pub async fn get_policy(&self) -> Result<ServedPolicy, Error> {
        let call = Call::new(Method::GET, "/v1/admin/policy".into(), Repeat::Safe);
        json(self.send(&call).await?).await
    }

    /// Measure `policy` (`{"tiers":{...},"pins":[...],"rollouts":[...]}`) against every
    /// account and, unless `opts.dry_run`, commit it as the next version
    /// (`PUT /v1/admin/policy`).
    pub async fn apply_policy(
        &self,
        policy: &serde_json::Value,
        opts: &ApplyPolicy,
    ) -> Result<PolicyChange, Error> {
        let mut req = serde_json::json!({
            "policy": policy,
            "dry_run": opts.dry_run,
            "migrate": opts.migrate,
            "allow_downgrade": opts.allow_downgrade,
        });
        if let Some(v) = opts.expected_version {
            req["expected_version"] = v.into();
        }
        let mut call = Call::new(Method::PUT, "/v1/admin/policy".into(), Repeat::Unsafe);
        call.body = Some(body(&req)?);
        json(self.send(&call).await?).await
    }

    /// One page of the audit trail (scope `audit:read`).
    pub async fn search_audit(&self, q: &AuditQuery) -> Result<AuditPage, Error> {
        let mut call = Call::new(Method::GET, "/v1/admin/audit/events".into(), Repeat::Safe);
        let text = [
            ("account", &q.account),
            ("shard", &q.shard),
            ("action", &q.action),
            ("outcome", &q.outcome),
            ("cursor", &q.cursor),
        ];
        for (k, v) in text {
            if let Some(v) = v {
                call.query.push((k, v.clone()));
            }
        }
        for (k, v) in [
            ("from", q.from),
            ("to", q.to),
            ("limit", q.limit.map(i64::from)),
        ] {
            if let Some(v) = v {
                call.query.push((k, v.to_string()));
            }
        }
        let resp = self.send(&call).await?;
        let next_cursor = resp
            .headers()
            .get("x-shardgate-next-cursor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp
            .text()
            .await
            .map_err(|e| Error::Transport(e.without_url().to_string()))?;
        let events = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| Error::Decode(e.to_string())))
            .collect::<Result<_, _>>()?;
        Ok(AuditPage {
            events,
            next_cursor,
        })
    }

    /// Liveness (`GET /healthz`).
    pub async fn healthz(&self) -> Result<Health, Error> {
        json(
            self.send(&Call::new(Method::GET, "/healthz".into(), Repeat::Safe))
                .await?,
        )
        .await
    }

    /// Readiness (`GET /readyz`): `ready` is false (not an error) when the gateway answers 503.
    pub async fn readyz(&self) -> Result<Readiness, Error> {
        let call = Call::new(Method::GET, "/readyz".into(), Repeat::Safe);
        match self.send(&call).await {
            Ok(resp) => json(resp).await,
            Err(Error::Api(e)) if e.status == 503 => Ok(Readiness {
                ready: false,
                store: None,
                backends: None,
                policy_version: None,
            }),
            Err(e) => Err(e),
        }
    }

    /// The Prometheus text of `GET /metrics` (scope `metrics`).
    pub async fn metrics(&self) -> Result<String, Error> {
        let resp = self
            .send(&Call::new(Method::GET, "/metrics".into(), Repeat::Safe))
            .await?;
        resp.text()
            .await
            .map_err(|e| Error::Transport(e.without_url().to_string()))
    }

    /// The OpenAPI document the gateway serves.
    pub async fn openapi(&self) -> Result<serde_json::Value, Error> {
        json(
            self.send(&Call::new(
                Method::GET,
                "/openapi.json".into(),
                Repeat::Safe,
            ))
            .await?,
        )
        .await
    }
}

/// What to do with a re-wrap job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationAction {
    /// Stop between items; resumable.
    Pause,
    /// Go on.
    Resume,
    /// Stop for good.
    Cancel,
}

impl MigrationAction {
    fn as_str(self) -> &'static str {
        match self {
            MigrationAction::Pause => "pause",
            MigrationAction::Resume => "resume",
            MigrationAction::Cancel => "cancel",
        }
    }
}

//! The downgrade guard (issue 30, guarded destructive operations) over HTTP, on both stores,
//! with real backends of two kinds: `local` keyrings and an `aws-kms` key on moto. A tier
//! change that lowers an account's protection (judged by its placement, pins and rollouts
//! included) is refused with 409 `downgrade_refused` and audited, unless the request sends
//! `allow_downgrade` with an `admin` credential; nothing else needs a confirmation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::db::Db;
use common::{StoreKind, Tokens};
use serde_json::{json, Value};
use shardgate::app::config::BackendConfig;
use shardgate_policy::{Pin, Rollout};
use std::time::Duration;

struct Gw {
    app: axum::Router,
    tokens: Tokens,
    db: Db,
    _dir: tempfile::TempDir,
}

/// Tiers: `retail` (and `institutional`) on `local`, `basic` on `local-b` (the same kind),
/// `cloud` on `kms`, `pilot` on `local-b` with half its accounts rolled out to `kms`; the
/// account `acct-A-pin` is pinned to `local`.
async fn setup(kind: StoreKind) -> Option<Gw> {
    let endpoint = common::require_env("SHARDGATE_TEST_MOTO_ENDPOINT")?;
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(kind, dir.path()).await?;
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    let kms = common::moto_kms(&endpoint).await;
    cfg.backends
        .insert("kms".into(), BackendConfig::AwsKms(kms));
    cfg.backends.insert(
        "local-b".into(),
        common::local_backend(dir.path(), "local-b"),
    );
    for (tier, backend) in [("cloud", "kms"), ("basic", "local-b"), ("pilot", "local-b")] {
        cfg.tiers.insert(tier.into(), backend.into());
    }
    cfg.policy.pins.push(Pin {
        account: "acct-A-pin".into(),
        backend: "local".into(),
    });
    cfg.policy.rollouts.push(Rollout {
        name: "kms-pilot".into(),
        tier: "pilot".into(),
        backend: "kms".into(),
        percent: 50.0,
    });
    cfg.migration.poll_interval_ms = 200;
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    Some(Gw {
        app: shardgate::router(state),
        tokens,
        db: Db::connect(&url).await,
        _dir: dir,
    })
}

impl Gw {
    /// A tier put as `token`, with `allow_downgrade` when `allow`.
    async fn tier_as(
        &self,
        token: &str,
        account: &str,
        tier: &str,
        allow: bool,
    ) -> (StatusCode, Value) {
        let body = if allow {
            json!({"tier": tier, "allow_downgrade": true})
        } else {
            json!({"tier": tier})
        };
        common::call(
            &self.app,
            token,
            "PUT",
            &format!("/v1/accounts/{account}"),
            Some(body),
        )
        .await
    }

    /// A tier put by the admin token (every scope).
    async fn tier(&self, account: &str, tier: &str, allow: bool) -> (StatusCode, Value) {
        self.tier_as(&self.tokens.admin, account, tier, allow).await
    }

    /// A tier put by the prefixed token (every scope but `admin`, accounts `acct-A...`).
    async fn tier_no_admin(&self, account: &str, tier: &str, allow: bool) -> (StatusCode, Value) {
        self.tier_as(&self.tokens.prefixed, account, tier, allow)
            .await
    }

    async fn account(&self, account: &str) -> Value {
        let (s, v) = common::call(
            &self.app,
            &self.tokens.admin,
            "GET",
            &format!("/v1/accounts/{account}"),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    async fn put_shard(&self, account: &str, shard: &str, data: &[u8]) -> Value {
        let (s, v) = common::call(
            &self.app,
            &self.tokens.admin,
            "PUT",
            &format!("/v1/accounts/{account}/shards/{shard}"),
            Some(json!({"shard": B64.encode(data)})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }

    async fn jobs(&self) -> i64 {
        self.db.count("SELECT COUNT(*) FROM migration_jobs").await
    }

    /// The `account.put` events of `account` with `outcome`.
    async fn puts(&self, account: &str, outcome: &str) -> i64 {
        self.db
            .count(&format!(
                "SELECT COUNT(*) FROM audit_events WHERE action = 'account.put' \
                 AND account = '{account}' AND outcome = '{outcome}'"
            ))
            .await
    }

    /// The account, created on `tier`, with one shard on the tier's backend.
    async fn with_shard(&self, account: &str, tier: &str) -> Value {
        let (s, v) = self.tier(account, tier, false).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        self.put_shard(account, "s", format!("{account} shard bytes").as_bytes())
            .await
    }
}

fn code(v: &Value) -> Option<&str> {
    v["error"]["code"].as_str()
}

async fn a_downgrade_without_allow_downgrade_is_refused_audited_and_changes_nothing(gw: Gw) {
    let put = gw.with_shard("acct-d", "cloud").await;
    assert_eq!(put["backend"], "kms", "{put}");
    let (s, v) = gw.tier("acct-d", "retail", false).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, Some("downgrade_refused")),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    for word in ["aws-kms", "local", "allow_downgrade", "admin"] {
        assert!(message.contains(word), "{word}: {message}");
    }
    // Nothing changed: tier, placement, no job; the shard still reads from KMS.
    let a = gw.account("acct-d").await;
    assert_eq!(
        (a["tier"].as_str(), a["backend"].as_str()),
        (Some("cloud"), Some("kms")),
        "{a}"
    );
    assert_eq!(a["versions_on_other_backends"], 0, "{a}");
    assert_eq!(gw.jobs().await, 0);
    let (s, v) = common::call(
        &gw.app,
        &gw.tokens.admin,
        "GET",
        "/v1/accounts/acct-d/shards/s",
        None,
    )
    .await;
    assert_eq!(
        (s, v["backend"].as_str()),
        (StatusCode::OK, Some("kms")),
        "{v}"
    );
    // Audited: the refused put, with the move it refused.
    assert_eq!(gw.puts("acct-d", "downgrade_refused").await, 1);
    let detail = gw
        .db
        .count(
            "SELECT COUNT(*) FROM audit_events WHERE outcome = 'downgrade_refused' \
             AND detail LIKE '%aws-kms->local%' AND actor = 'admin'",
        )
        .await;
    assert_eq!(detail, 1);
    // kms -> local-b, the other keyring: the kind decides, not the instance.
    let (s, v) = gw.tier("acct-d", "basic", false).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, Some("downgrade_refused")),
        "{v}"
    );
}

async fn an_admin_downgrade_with_allow_downgrade_moves_the_account_and_starts_its_migration(
    gw: Gw,
) {
    gw.with_shard("acct-d", "cloud").await;
    let (s, v) = gw.tier("acct-d", "retail", true).await;
    assert_eq!(
        (s, v["backend"].as_str()),
        (StatusCode::OK, Some("local")),
        "{v}"
    );
    let job = v["migration_job"]
        .as_str()
        .expect("a migration job")
        .to_string();
    let a = gw.account("acct-d").await;
    assert_eq!(a["tier"], "retail", "{a}");
    // The job exists (its snapshot may be committed just after the answer).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = common::call(
            &gw.app,
            &gw.tokens.admin,
            "GET",
            &format!("/v1/admin/migrations/{job}"),
            None,
        )
        .await;
        if s == StatusCode::OK {
            assert_eq!(v["total"], 1, "{v}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job} never appeared: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Audited as a confirmed downgrade.
    let confirmed = gw
        .db
        .count(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'account.put' AND outcome = 'ok' \
             AND account = 'acct-d' AND detail LIKE '%downgrade=aws-kms->local%'",
        )
        .await;
    assert_eq!(confirmed, 1);
}

async fn allow_downgrade_without_admin_is_forbidden_and_changes_nothing(gw: Gw) {
    gw.with_shard("acct-A-d", "cloud").await;
    // Without the flag: the same refusal as anyone's.
    let (s, v) = gw.tier_no_admin("acct-A-d", "retail", false).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, Some("downgrade_refused")),
        "{v}"
    );
    // With it: the caller lacks admin.
    let (s, v) = gw.tier_no_admin("acct-A-d", "retail", true).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("admin"),
        "{v}"
    );
    let a = gw.account("acct-A-d").await;
    assert_eq!(
        (a["tier"].as_str(), a["backend"].as_str()),
        (Some("cloud"), Some("kms")),
        "{a}"
    );
    assert_eq!(gw.jobs().await, 0);
    assert_eq!(gw.puts("acct-A-d", "downgrade_refused").await, 1);
    assert_eq!(gw.puts("acct-A-d", "forbidden").await, 1);
    let by = gw
        .db
        .count(
            "SELECT COUNT(*) FROM audit_events WHERE account = 'acct-A-d' \
             AND outcome = 'forbidden' AND actor = 'prefixed'",
        )
        .await;
    assert_eq!(by, 1);
}

async fn upgrades_same_rank_moves_and_creates_need_no_confirmation(gw: Gw) {
    // Created on the lowest kind by a caller without admin: never a downgrade.
    let (s, v) = gw.tier_no_admin("acct-A-u", "retail", false).await;
    assert_eq!(
        (s, v["backend"].as_str()),
        (StatusCode::CREATED, Some("local")),
        "{v}"
    );
    // local -> local-b: another instance of the same kind.
    let (s, v) = gw.tier_no_admin("acct-A-u", "basic", false).await;
    assert_eq!(
        (s, v["backend"].as_str()),
        (StatusCode::OK, Some("local-b")),
        "{v}"
    );
    // local-b -> kms: an upgrade.
    let (s, v) = gw.tier_no_admin("acct-A-u", "cloud", false).await;
    assert_eq!(
        (s, v["backend"].as_str()),
        (StatusCode::OK, Some("kms")),
        "{v}"
    );
    // The same tier again (a retention change): not a tier change.
    let (s, v) = gw
        .tier_as(&gw.tokens.prefixed, "acct-A-u", "cloud", false)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // `allow_downgrade` on a move that is no downgrade is ignored, admin or not.
    let (s, v) = gw.tier_no_admin("acct-A-v", "retail", true).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = gw.tier_no_admin("acct-A-v", "cloud", true).await;
    assert_eq!(
        (s, v["backend"].as_str()),
        (StatusCode::OK, Some("kms")),
        "{v}"
    );
    assert_eq!(
        gw.db
            .count("SELECT COUNT(*) FROM audit_events WHERE outcome <> 'ok' AND action = 'account.put'")
            .await,
        0
    );
}

async fn a_downgrade_is_judged_by_the_placement_pins_and_rollouts_included(gw: Gw) {
    // Pinned to local: on tier `cloud` it is placed on local, so moving it to `retail` (whose
    // default is below cloud's) lowers nothing.
    let (s, v) = gw.tier_no_admin("acct-A-pin", "cloud", false).await;
    assert_eq!(
        (s, v["backend"].as_str()),
        (StatusCode::CREATED, Some("local")),
        "{v}"
    );
    let (s, v) = gw.tier_no_admin("acct-A-pin", "retail", false).await;
    assert_eq!(
        (s, v["backend"].as_str()),
        (StatusCode::OK, Some("local")),
        "{v}"
    );
    // Rolled out: accounts of `pilot` are on kms or on local-b, the tier `basic` is on
    // local-b: a move pilot -> basic is a downgrade exactly for those rolled out to kms.
    let (mut on_kms, mut on_local) = (None, None);
    for i in 0..64 {
        let account = format!("acct-A-p{i}");
        let (s, v) = gw.tier_no_admin(&account, "pilot", false).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        match v["backend"].as_str() {
            Some("kms") if on_kms.is_none() => on_kms = Some(account),
            Some("local-b") if on_local.is_none() => on_local = Some(account),
            _ => {}
        }
        if on_kms.is_some() && on_local.is_some() {
            break;
        }
    }
    let (on_kms, on_local) = (
        on_kms.expect("an account rolled out"),
        on_local.expect("one not"),
    );
    let (s, v) = gw.tier_no_admin(&on_kms, "basic", false).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, Some("downgrade_refused")),
        "{v}"
    );
    assert_eq!(gw.account(&on_kms).await["tier"], "pilot");
    let (s, v) = gw.tier_no_admin(&on_local, "basic", false).await;
    assert_eq!(
        (s, v["backend"].as_str()),
        (StatusCode::OK, Some("local-b")),
        "{v}"
    );
}

/// The race the store's tier precondition closes: a same-rank move (basic -> retail) judged
/// on a read of `basic` must not land after a concurrent upgrade to `cloud` (that would be
/// an unconfirmed kms -> local). Whatever the interleaving, the account ends on `cloud`:
/// either the move went first and the upgrade followed, or the move saw `cloud` and was
/// refused.
async fn a_concurrent_upgrade_never_lets_an_unconfirmed_downgrade_through(gw: Gw) {
    let (s, v) = gw.tier_no_admin("acct-A-race", "basic", false).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for round in 0..20 {
        let (s, v) = gw.tier("acct-A-race", "basic", true).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let up = gw.tier("acct-A-race", "cloud", false);
        let side = gw.tier_no_admin("acct-A-race", "retail", false);
        let ((su, vu), (ss, vs)) = tokio::join!(up, side);
        assert_eq!(su, StatusCode::OK, "round {round}: {vu}");
        assert!(
            ss == StatusCode::OK || code(&vs) == Some("downgrade_refused"),
            "round {round}: {ss} {vs}"
        );
        let a = gw.account("acct-A-race").await;
        assert_eq!(a["tier"], "cloud", "round {round}: side {ss} {vs}");
    }
}

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(gw) = super::setup(super::StoreKind::Sqlite).await { super::$name(gw).await; }
            }
        )* }
        mod postgres { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(gw) = super::setup(super::StoreKind::Postgres).await { super::$name(gw).await; }
            }
        )* }
    };
}

both_stores!(
    a_downgrade_without_allow_downgrade_is_refused_audited_and_changes_nothing,
    an_admin_downgrade_with_allow_downgrade_moves_the_account_and_starts_its_migration,
    allow_downgrade_without_admin_is_forbidden_and_changes_nothing,
    upgrades_same_rank_moves_and_creates_need_no_confirmation,
    a_downgrade_is_judged_by_the_placement_pins_and_rollouts_included,
    a_concurrent_upgrade_never_lets_an_unconfirmed_downgrade_through,
);

//! Tiers from account attributes (issue 30, item 5) over HTTP, on both stores, with backends of
//! two kinds: `retail` on a `local` keyring, `institutional` on an `aws-kms` key on moto. An
//! account whose attributes cross a tier rule's threshold moves to the rule's tier (and its
//! versions start moving); falling back below is a downgrade, refused unless confirmed; a
//! policy apply that adds a rule moves the accounts it derives, and repeating the apply
//! finishes a pass that was cut short.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;

use axum::http::StatusCode;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::db::Db;
use common::{StoreKind, Tokens};
use serde_json::{json, Value};
use shardgate::app::config::BackendConfig;
use shardgate_policy::{Threshold, TierRule};

both_stores!(
    attributes_over_a_threshold_move_the_account_and_falling_back_is_a_guarded_downgrade,
    an_apply_adding_a_tier_rule_moves_the_accounts_it_derives_and_a_repeat_finishes_a_cut_pass,
);

struct Gw {
    app: axum::Router,
    tokens: Tokens,
    db: Db,
    _dir: tempfile::TempDir,
}

fn big_custody() -> TierRule {
    TierRule {
        name: "big-custody".into(),
        tier: "institutional".into(),
        from: vec!["retail".into()],
        any: vec![
            Threshold {
                attribute: "aum_usd".into(),
                at_least: 10_000_000.0,
            },
            Threshold {
                attribute: "users".into(),
                at_least: 50_000.0,
            },
        ],
    }
}

/// `institutional` on moto's KMS, `retail` on `local`; the rule `big-custody` when `rules`.
async fn setup(kind: StoreKind, rules: bool) -> Option<Gw> {
    let endpoint = common::require_env("SHARDGATE_TEST_MOTO_ENDPOINT")?;
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(kind, dir.path()).await?;
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    let kms = common::moto_kms(&endpoint).await;
    cfg.backends
        .insert("kms".into(), BackendConfig::AwsKms(kms));
    cfg.tiers.insert("institutional".into(), "kms".into());
    if rules {
        cfg.policy.tier_rules.push(big_custody());
    }
    cfg.migration.poll_interval_ms = 100;
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    Some(Gw {
        app: shardgate::router(state),
        tokens,
        db: Db::connect(&url).await,
        _dir: dir,
    })
}

impl Gw {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        common::call(&self.app, &self.tokens.admin, method, path, body).await
    }

    async fn put(&self, account: &str, body: Value) -> (StatusCode, Value) {
        self.call("PUT", &format!("/v1/accounts/{account}"), Some(body))
            .await
    }

    async fn account(&self, account: &str) -> Value {
        let (s, v) = self
            .call("GET", &format!("/v1/accounts/{account}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    async fn put_shard(&self, account: &str) {
        let body = json!({"shard": B64.encode(format!("{account} bytes"))});
        let (s, v) = self
            .call(
                "PUT",
                &format!("/v1/accounts/{account}/shards/s"),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
}

async fn attributes_over_a_threshold_move_the_account_and_falling_back_is_a_guarded_downgrade(
    kind: StoreKind,
) {
    let Some(gw) = setup(kind, true).await else {
        return;
    };
    let (s, v) = gw
        .put(
            "acct-1",
            json!({"tier": "retail", "attributes": {"aum_usd": 5e6}}),
        )
        .await;
    assert_eq!(
        (s, v["tier"].as_str()),
        (StatusCode::CREATED, Some("retail")),
        "{v}"
    );
    assert_eq!(v["tier_rule"], "asked for", "{v}");
    gw.put_shard("acct-1").await;
    // Over the threshold: the rule's tier, its backend, and a re-wrap job of its versions.
    let (s, v) = gw
        .put(
            "acct-1",
            json!({"tier": "retail", "attributes": {"aum_usd": 2e7, "users": 10}}),
        )
        .await;
    assert_eq!(
        (s, v["tier"].as_str()),
        (StatusCode::OK, Some("institutional")),
        "{v}"
    );
    assert_eq!(v["requested_tier"], "retail", "{v}");
    assert_eq!(v["backend"], "kms", "{v}");
    assert_eq!(
        v["tier_rule"], "tier rule big-custody (aum_usd 20000000 >= 10000000)",
        "{v}"
    );
    assert!(v["migration_job"].is_string(), "{v}");
    let a = gw.account("acct-1").await;
    assert_eq!(
        (a["tier"].as_str(), a["requested_tier"].as_str()),
        (Some("institutional"), Some("retail")),
        "{a}"
    );
    assert_eq!(
        a["attributes"],
        json!({"aum_usd": 2e7, "users": 10.0}),
        "{a}"
    );
    // A put that leaves the attributes out keeps them, and so the derived tier.
    let (s, v) = gw.put("acct-1", json!({"tier": "retail"})).await;
    assert_eq!(
        (s, v["tier"].as_str()),
        (StatusCode::OK, Some("institutional")),
        "{v}"
    );
    // Back below: HSM-or-KMS to local is a downgrade, refused and audited; nothing changes.
    let (s, v) = gw
        .put(
            "acct-1",
            json!({"tier": "retail", "attributes": {"aum_usd": 1e6}}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("downgrade_refused")),
        "{v}"
    );
    let a = gw.account("acct-1").await;
    assert_eq!(a["tier"], "institutional", "{a}");
    assert_eq!(
        a["attributes"]["aum_usd"], 2e7,
        "the refused put wrote nothing: {a}"
    );
    // Confirmed by an admin, it goes.
    let body = json!({"tier": "retail", "attributes": {"aum_usd": 1e6}, "allow_downgrade": true});
    let (s, v) = gw.put("acct-1", body).await;
    assert_eq!(
        (s, v["tier"].as_str(), v["backend"].as_str()),
        (StatusCode::OK, Some("retail"), Some("local")),
        "{v}"
    );
    let refused = gw
        .db
        .count("SELECT COUNT(*) FROM audit_events WHERE action = 'account.put' AND outcome = 'downgrade_refused'")
        .await;
    assert_eq!(refused, 1);
    // Bad attributes: 400, nothing written.
    for bad in [json!({"bad name": 1}), json!({"users": "many"}), json!([1])] {
        let (s, v) = gw
            .put("acct-1", json!({"tier": "retail", "attributes": bad}))
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{v}"
        );
    }
}

async fn an_apply_adding_a_tier_rule_moves_the_accounts_it_derives_and_a_repeat_finishes_a_cut_pass(
    kind: StoreKind,
) {
    let Some(gw) = setup(kind, false).await else {
        return;
    };
    for (account, users) in [("acct-big", 60_000), ("acct-small", 10)] {
        let body = json!({"tier": "retail", "attributes": {"users": users}});
        let (s, v) = gw.put(account, body).await;
        assert_eq!(
            (s, v["tier"].as_str()),
            (StatusCode::CREATED, Some("retail")),
            "{v}"
        );
    }
    let (_, served) = gw.call("GET", "/v1/admin/policy", None).await;
    let mut policy = served["policy"].clone();
    policy["tier_rules"] = serde_json::to_value(vec![big_custody()]).unwrap();
    // A dry run counts the account the rule moves, and its move.
    let (s, v) = gw
        .call(
            "PUT",
            "/v1/admin/policy",
            Some(json!({"policy": policy, "dry_run": true})),
        )
        .await;
    assert_eq!(
        (s, v["tier_changes"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{v}"
    );
    assert_eq!(v["moves"][0]["tier"], "retail -> institutional", "{v}");
    assert_eq!(v["changes"][0]["kind"], "tier_rule", "{v}");
    assert_eq!(gw.account("acct-big").await["tier"], "retail");
    // Applied: the derived account moves, audited; the other stays.
    let (s, v) = gw
        .call("PUT", "/v1/admin/policy", Some(json!({"policy": policy})))
        .await;
    assert_eq!(
        (s, v["applied"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{v}"
    );
    assert_eq!(gw.account("acct-big").await["tier"], "institutional");
    assert_eq!(gw.account("acct-small").await["tier"], "retail");
    let by_rule = "SELECT COUNT(*) FROM audit_events WHERE action = 'account.put' \
                   AND detail LIKE '%by=tier rule big-custody%policy_version=2%'";
    assert_eq!(gw.db.count(by_rule).await, 1);
    // A pass cut short (as by a crash after the commit): the same apply again commits no
    // version and finishes it.
    gw.db
        .exec("UPDATE accounts SET tier = 'retail' WHERE account = 'acct-big'")
        .await;
    let (s, v) = gw
        .call("PUT", "/v1/admin/policy", Some(json!({"policy": policy})))
        .await;
    assert_eq!(
        (
            s,
            v["applied"].as_bool(),
            v["version"].as_i64(),
            v["tier_changes"].as_u64()
        ),
        (StatusCode::OK, Some(false), Some(2), Some(1)),
        "{v}"
    );
    assert_eq!(gw.account("acct-big").await["tier"], "institutional");
}

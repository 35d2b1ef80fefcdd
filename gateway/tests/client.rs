//! `shardgate-client` against a real gateway process: normal API use goes through the client
//! (typed answers and errors, idempotent retries that never write twice, batchGet chunked to
//! the gateway's `batch_max_items`), and its retry rule meets the gateway's rate limit:
//! a 429 is waited out for its `Retry-After` within the call's deadline, and handed back at
//! once when the deadline is shorter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::served::Served;
use common::{StoreKind, Tokens};
use secrecy::SecretString;
use shardgate_client::{
    ApplyPolicy, BatchItem, Client, Error, ErrorCode, PutOptions, RetryPolicy, ShardBytes,
};
use std::time::{Duration, Instant};

/// A gateway on SQLite in `dir`, changed by `tune` first.
fn serve(
    dir: &std::path::Path,
    url: &str,
    tokens: &Tokens,
    name: &str,
    tune: impl FnOnce(&mut shardgate::app::config::Config),
) -> Served {
    let mut cfg = common::config(dir, url, tokens);
    tune(&mut cfg);
    let config = dir.join("shardgate.toml");
    common::write_config(&cfg, &config);
    Served::start(&config, "client", name)
}

fn client(base: &str, token: &str) -> shardgate_client::ClientBuilder {
    Client::builder(base).bearer_token(SecretString::from(token.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_round_trips_accounts_and_shards() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(StoreKind::Sqlite, dir.path())
        .await
        .unwrap();
    let tokens = Tokens::new();
    let served = serve(dir.path(), &url, &tokens, "round-trip", |c| {
        c.limits.batch_max_items = 2
    });
    let c = client(&served.base, &tokens.admin)
        .batch_max_items(2)
        .build()
        .unwrap();

    let acct = c.put_account("acct-client", "retail").await.unwrap();
    assert_eq!((acct.tier.as_str(), acct.created), ("retail", Some(true)));
    // Attributes go with the put and come back on a read (no tier rule: the tier asked for).
    let attributes = [("aum_usd".to_string(), 1.5e6)].into_iter().collect();
    let a = c
        .put_account_with_attributes("acct-client", "retail", &attributes)
        .await
        .unwrap();
    assert_eq!(
        (a.tier.as_str(), a.tier_rule.as_deref(), a.requested_tier),
        ("retail", Some("asked for"), None)
    );
    let got = c.get_account("acct-client").await.unwrap();
    assert_eq!(got.attributes, Some(attributes));
    let secret = ShardBytes::new(b"client round trip".to_vec());
    // The same idempotency key twice: one version, the second answer a replay.
    let opts = PutOptions {
        expected_version: Some(0),
        idempotency_key: Some("put-1".into()),
    };
    let first = c
        .put_shard("acct-client", "s0", &secret, opts.clone())
        .await
        .unwrap();
    let again = c
        .put_shard("acct-client", "s0", &secret, opts)
        .await
        .unwrap();
    assert_eq!((first.version, again.version), (1, 1));
    let second = c
        .put_shard(
            "acct-client",
            "s0",
            &ShardBytes::new(vec![2; 8]),
            PutOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(second.version, 2);
    let got = c.get_shard("acct-client", "s0", Some(1)).await.unwrap();
    assert_eq!(
        (got.bytes.expose(), got.version),
        (&b"client round trip"[..], 1)
    );
    assert!(
        !format!("{got:?}").contains("round trip"),
        "shard bytes in Debug"
    );

    for s in ["s1", "s2", "s3"] {
        c.put_shard(
            "acct-client",
            s,
            &ShardBytes::new(s.as_bytes().to_vec()),
            PutOptions::default(),
        )
        .await
        .unwrap();
    }
    let page = c.list_shards("acct-client", None, Some(2)).await.unwrap();
    assert_eq!(page.shards.len(), 2);
    let rest = c
        .list_shards("acct-client", page.next_after.as_deref(), None)
        .await
        .unwrap();
    assert_eq!(rest.shards.len(), 2);

    // Five items with batch_max_items 2: three requests, results in the items' order.
    let mut items: Vec<BatchItem> = ["s3", "s1", "nope", "s2", "s0"]
        .iter()
        .map(|s| BatchItem::latest("acct-client", *s))
        .collect();
    items[4].version = Some(1);
    let results = c.batch_get(&items).await.unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(results[0].as_ref().unwrap().bytes.expose(), b"s3");
    assert_eq!(results[1].as_ref().unwrap().bytes.expose(), b"s1");
    assert_eq!(
        results[2].as_ref().unwrap_err().code,
        ErrorCode::ShardNotFound
    );
    assert_eq!(
        results[4].as_ref().unwrap().bytes.expose(),
        &b"client round trip"[..]
    );
    // The gateway refuses an over-long batch: the client never sends one.
    let six: Vec<BatchItem> = (0..6)
        .map(|_| BatchItem::latest("acct-client", "s1"))
        .collect();
    assert_eq!(c.batch_get(&six).await.unwrap().len(), 6);

    let one = c
        .delete_shard_version("acct-client", "s0", 1, None)
        .await
        .unwrap();
    assert_eq!(one.destroyed_versions, 1);
    let err = c.get_shard("acct-client", "s0", Some(1)).await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::VersionNotFound), "{err}");
    c.delete_shard("acct-client", "s0", None).await.unwrap();
    let err = c.get_shard("acct-client", "s0", None).await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::ShardNotFound), "{err}");
    let Error::Api(api) = err else {
        panic!("not an API error")
    };
    assert!(api.request_id.is_some_and(|id| !id.is_empty()));

    let reader = client(&served.base, &tokens.reader).build().unwrap();
    let err = reader
        .put_account("acct-client-2", "retail")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::Forbidden), "{err}");
    let err = c
        .put_account("acct-client-2", "no-such-tier")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::UnknownTier), "{err}");
    let gone = c.delete_account("acct-client", None).await.unwrap();
    assert_eq!(gone.destroyed_shards, Some(3));
    assert!(c.healthz().await.unwrap().status == "ok");
    assert!(c.readyz().await.unwrap().ready);
    assert!(c.metrics().await.unwrap().contains("shardgate_"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_call_waits_out_retry_after_within_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(StoreKind::Sqlite, dir.path())
        .await
        .unwrap();
    let tokens = Tokens::new();
    let served = serve(dir.path(), &url, &tokens, "rate-limited", |c| {
        c.limits.rate_per_identity_per_sec = 1;
        c.limits.rate_per_identity_burst = 1;
    });
    let once = client(&served.base, &tokens.admin)
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let patient = client(&served.base, &tokens.admin)
        .deadline(Duration::from_secs(10))
        .build()
        .unwrap();
    let hasty = patient.with_deadline(Duration::from_millis(300));

    // The budget is one request a second: the first call spends it.
    once.put_account("acct-rl", "retail").await.unwrap();
    let err = once.get_account("acct-rl").await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::RateLimited), "{err}");
    let retry_after = err.retry_after().expect("a 429 says Retry-After");
    assert!(retry_after >= Duration::from_secs(1), "{retry_after:?}");

    // Shorter than Retry-After: the 429 comes back at once, not after the deadline.
    let err = hasty.get_account("acct-rl").await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::RateLimited), "{err}");

    // Long enough: the call waits out Retry-After and then succeeds.
    let t0 = Instant::now();
    let acct = patient.get_account("acct-rl").await.unwrap();
    assert_eq!(acct.account, "acct-rl");
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "answered before any Retry-After passed"
    );
}

/// The guard on tier changes that lower an account's protection, through the client: the
/// refusal is a typed `DowngradeRefused`, `put_account_allowing_downgrade` confirms the move
/// with an admin credential and is `Forbidden` without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_names_a_refused_downgrade_and_confirms_one_as_admin() {
    let Some(endpoint) = common::require_env("SHARDGATE_TEST_MOTO_ENDPOINT") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(StoreKind::Sqlite, dir.path())
        .await
        .unwrap();
    let tokens = Tokens::new();
    let kms = common::moto_kms(&endpoint).await;
    let gw = serve(dir.path(), &url, &tokens, "downgrade", |cfg| {
        cfg.backends.insert(
            "kms".into(),
            shardgate::app::config::BackendConfig::AwsKms(kms),
        );
        cfg.tiers.insert("cloud".into(), "kms".into());
    });
    let admin = client(&gw.base, &tokens.admin).build().unwrap();
    let prefixed = client(&gw.base, &tokens.prefixed).build().unwrap();
    for (c, account) in [(&admin, "acct-d"), (&prefixed, "acct-A-d")] {
        let a = c.put_account(account, "cloud").await.unwrap();
        assert_eq!(a.backend, "kms");
        let err = c.put_account(account, "retail").await.unwrap_err();
        let Error::Api(api) = err else {
            panic!("{err}")
        };
        assert_eq!((api.status, api.code), (409, ErrorCode::DowngradeRefused));
    }
    let err = prefixed
        .put_account_allowing_downgrade("acct-A-d", "retail")
        .await
        .unwrap_err();
    let Error::Api(api) = err else {
        panic!("{err}")
    };
    assert_eq!((api.status, api.code), (403, ErrorCode::Forbidden));
    let a = admin
        .put_account_allowing_downgrade("acct-d", "retail")
        .await
        .unwrap();
    assert_eq!((a.tier.as_str(), a.backend.as_str()), ("retail", "local"));
    assert_eq!(
        prefixed.get_account("acct-A-d").await.unwrap().tier,
        "cloud"
    );
}

/// The cluster controls through the client: a policy dry run and apply (typed change,
/// served version, `/readyz` version), a stale `expected_version` as `VersionConflict`, and a
/// maintenance window opened and closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_applies_a_policy_and_opens_and_closes_a_circuit() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(StoreKind::Sqlite, dir.path())
        .await
        .unwrap();
    let tokens = Tokens::new();
    let gw = serve(dir.path(), &url, &tokens, "cluster-controls", |cfg| {
        cfg.backends.insert(
            "local-b".into(),
            common::local_backend(dir.path(), "local-b"),
        );
    });
    let c = client(&gw.base, &tokens.admin).build().unwrap();
    c.put_account("acct-1", "retail").await.unwrap();
    let served = c.get_policy().await.unwrap();
    assert_eq!(served.version, 1);
    assert_eq!(served.policy["tiers"]["retail"], "local");
    let next = serde_json::json!({"tiers": {"retail": "local-b", "institutional": "local"}});
    let dry = c
        .apply_policy(
            &next,
            &ApplyPolicy {
                dry_run: true,
                ..ApplyPolicy::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((dry.applied, dry.version, dry.moved_total), (false, 2, 1));
    assert_eq!(dry.moved_accounts, ["acct-1"]);
    let stale = ApplyPolicy {
        expected_version: Some(5),
        ..ApplyPolicy::default()
    };
    let Error::Api(api) = c.apply_policy(&next, &stale).await.unwrap_err() else {
        panic!("not an API error")
    };
    assert_eq!((api.status, api.code), (409, ErrorCode::VersionConflict));
    let done = c
        .apply_policy(&next, &ApplyPolicy::default())
        .await
        .unwrap();
    assert!(done.applied);
    assert_eq!(c.readyz().await.unwrap().policy_version, Some(2));
    assert_eq!(
        c.put_account("acct-2", "retail").await.unwrap().backend,
        "local-b"
    );

    let open = c.open_circuit("local-b", 600).await.unwrap();
    assert_eq!(open.state, "forced-open");
    // A 503 whose Retry-After (the rest of the window) is past the call's deadline comes
    // back at once.
    let bytes = ShardBytes::from(b"bytes".to_vec());
    let Error::Api(api) = c
        .put_shard("acct-2", "s", &bytes, PutOptions::default())
        .await
        .unwrap_err()
    else {
        panic!("not an API error")
    };
    assert_eq!((api.status, api.code), (503, ErrorCode::BackendUnavailable));
    assert_eq!(c.close_circuit("local-b").await.unwrap().state, "closed");
    c.put_shard("acct-2", "s", &bytes, PutOptions::default())
        .await
        .unwrap();
}

#[test]
fn the_client_knows_every_error_code_of_the_gateway() {
    for code in shardgate::http::error::ErrorCode::ALL {
        let known = ErrorCode::from_wire(code.as_str());
        assert!(
            !matches!(known, ErrorCode::Other(_)),
            "{code:?} unknown to the client"
        );
        assert_eq!(
            known.is_transient(),
            matches!(code.status().as_u16(), 429 | 503),
            "{code:?}"
        );
    }
}

//! A stored row whose key its backend refuses (a `key_ref` or `key_version` edited in the
//! database, or a keyring missing here) answers 502 `key_unusable`, and is visible: counted
//! in `shardgate_key_unusable_rows_total` on every read (an alert can fire on it), logged once
//! per row, and it cannot turn every read into a re-read of the keyring file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;

use axum::http::StatusCode;
use common::db::Db;
use common::{StoreKind, Tokens};
use serde_json::json;

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn rows_naming_unknown_keys_are_counted_and_answer_key_unusable(kind: StoreKind) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = common::store_url(kind, dir.path()).await else {
        return;
    };
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    // Its own backend name: the metric is process-wide and the other store's run counts too.
    let name = format!("local-{kind:?}").to_ascii_lowercase();
    let local = cfg.backends.remove("local").unwrap();
    cfg.backends.insert(name.clone(), local);
    for backend in cfg.tiers.values_mut() {
        *backend = name.clone();
    }
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    let app = shardgate::router(state);
    let admin = tokens.admin.as_str();
    let (s, v) = common::call(
        &app,
        admin,
        "PUT",
        "/v1/accounts/acct-k",
        Some(json!({"tier": "retail"})),
    )
    .await;
    assert!(s.is_success(), "{v}");
    for shard in ["s1", "s2"] {
        let path = format!("/v1/accounts/acct-k/shards/{shard}");
        let (s, v) = common::call(
            &app,
            admin,
            "PUT",
            &path,
            Some(json!({"shard": "c2hhcmQ="})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let db = Db::connect(&url).await;
    db.exec("UPDATE shard_versions SET key_version = 7 WHERE shard = 's1'")
        .await;
    db.exec("UPDATE shard_versions SET key_ref = 'not-this-keyring' WHERE shard = 's2'")
        .await;

    let series = format!("shardgate_key_unusable_rows_total{{backend=\"{name}\"}} ");
    let series = series.as_str();
    let before = metric(&common::scrape(&app, admin).await, series);
    for shard in ["s1", "s2", "s1", "s2", "s1"] {
        let path = format!("/v1/accounts/acct-k/shards/{shard}");
        let (s, v) = common::call(&app, admin, "GET", &path, None).await;
        assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
        assert_eq!(v["error"]["code"], "key_unusable", "{v}");
    }
    let text = common::scrape(&app, admin).await;
    assert_eq!(
        metric(&text, series) - before,
        5.0,
        "every refused read counted"
    );
}

both_stores!(rows_naming_unknown_keys_are_counted_and_answer_key_unusable);

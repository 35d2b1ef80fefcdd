//! Key lifecycle through the HTTP API, on both stores: states listed with reference counts
//! and wrap counters, audited and timestamped transitions, the destroy guard (refused while
//! shard versions reference the version, allowed once a migration moved them), unwraps
//! under a destroyed version, the wrap limit, and one wrap counter shared by two gateways on
//! one database. Every response is checked against the OpenAPI document.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::db::Db;
use common::openapi::OpenApi;
use common::{StoreKind, Tokens};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

both_stores!(
    transitions_are_listed_audited_and_timestamped,
    destroy_is_refused_while_referenced_and_allowed_after_migrating_away,
    unwrap_under_a_destroyed_version_is_key_unusable_not_an_integrity_failure,
    batch_calls_refuse_only_the_items_under_a_destroyed_version,
    a_wrap_naming_a_key_version_still_goes_through_the_lifecycle,
    wraps_are_refused_at_the_limit_until_a_new_version_is_promoted,
    two_gateways_on_one_database_share_one_wrap_counter,
);

struct Gw {
    app: axum::Router,
    state: shardgate::AppState,
    tokens: Tokens,
    db: Db,
    api: OpenApi,
    dir: tempfile::TempDir,
    cfg: shardgate::app::config::Config,
}

impl Gw {
    async fn new(kind: StoreKind, keys: shardgate::domain::keys::KeysConfig) -> Option<Gw> {
        let dir = tempfile::tempdir().unwrap();
        let url = common::store_url(kind, dir.path()).await?;
        let tokens = Tokens::new();
        let mut cfg = common::config(dir.path(), &url, &tokens);
        cfg.keys = keys;
        cfg.migration.poll_interval_ms = 100;
        let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
        Some(Gw {
            app: shardgate::router(state.clone()),
            state,
            tokens,
            db: Db::connect(&url).await,
            api: OpenApi::load(),
            dir,
            cfg,
        })
    }

    /// Another gateway process on the same database, keyring and audit key.
    async fn replica(&self) -> (axum::Router, shardgate::AppState) {
        let (state, _) = shardgate::AppState::build(&self.cfg).await.unwrap();
        (shardgate::router(state.clone()), state)
    }

    async fn call_on(
        &self,
        app: &axum::Router,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, v) = common::call(app, &self.tokens.admin, method, path, body).await;
        let status = status.as_u16();
        self.api
            .check(method, path.split('?').next().unwrap(), status, &v);
        (status, v)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_on(&self.app, method, path, body).await
    }

    async fn account(&self) {
        let (s, v) = self
            .call(
                "PUT",
                "/v1/accounts/acct-1",
                Some(json!({"tier": "retail"})),
            )
            .await;
        assert!(s == 200 || s == 201, "{v}");
    }

    async fn put_on(&self, app: &axum::Router, shard: &str) -> (u16, Value) {
        self.call_on(
            app,
            "PUT",
            &format!("/v1/accounts/acct-1/shards/{shard}"),
            Some(json!({ "shard": B64.encode(shard.as_bytes()) })),
        )
        .await
    }

    async fn put(&self, shard: &str) -> (u16, Value) {
        self.put_on(&self.app, shard).await
    }

    async fn get(&self, shard: &str) -> (u16, Value) {
        self.call("GET", &format!("/v1/accounts/acct-1/shards/{shard}"), None)
            .await
    }

    async fn keys(&self) -> Vec<Value> {
        let (s, v) = self.call("GET", "/v1/admin/keys", None).await;
        assert_eq!(s, 200, "{v}");
        v["keys"].as_array().unwrap().clone()
    }

    async fn key(&self, version: i64) -> Value {
        self.keys()
            .await
            .into_iter()
            .find(|k| k["backend"] == "local" && k["version"] == version)
            .unwrap_or_else(|| panic!("no local v{version}"))
    }

    async fn set(&self, version: i64, to: &str) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/v1/admin/keys/local/{version}/state"),
            Some(json!({ "state": to })),
        )
        .await
    }

    /// `keys rotate` on the keyring file: a new decrypt-only version.
    fn rotate(&self) -> i64 {
        let path = self.dir.path().join("local.keyring");
        let mut k = shardgate_backends::local::Keyring::load(&path).unwrap();
        let v = k.rotate();
        k.save(&path).unwrap();
        i64::from(v)
    }

    async fn key_version_of(&self, shard: &str) -> i64 {
        self.db
            .count(&format!(
                "SELECT key_version FROM shard_versions WHERE account = 'acct-1' AND shard = '{shard}'"
            ))
            .await
    }
}

fn small_counter(block: u64, warn_at: u64, limit: u64) -> shardgate::domain::keys::KeysConfig {
    shardgate::domain::keys::KeysConfig {
        wrap_block: block,
        wrap_warn_at: warn_at,
        wrap_limit: limit,
        ..Default::default()
    }
}

async fn transitions_are_listed_audited_and_timestamped(kind: StoreKind) {
    let Some(gw) = Gw::new(kind, Default::default()).await else {
        return;
    };
    let v1 = gw.key(1).await;
    assert_eq!(
        (
            v1["state"].as_str(),
            v1["changed_by"].as_str(),
            v1["kind"].as_str()
        ),
        (Some("active"), Some("registered"), Some("local"))
    );
    assert_eq!(v1["shard_versions"], 0);
    assert_eq!(v1["wraps_reserved"], 0);
    assert_eq!(v1["held_here"], true);

    gw.account().await;
    assert_eq!(gw.put("s1").await.0, 201);
    let v1 = gw.key(1).await;
    assert_eq!(v1["shard_versions"], 1);
    assert_eq!(
        v1["wraps_reserved"], 1024,
        "one block reserved, not one write per wrap"
    );
    assert_eq!(gw.put("s2").await.0, 201);
    assert_eq!(gw.key(1).await["wraps_reserved"], 1024);

    let v2 = gw.rotate();
    let listed = gw.key(v2).await;
    assert_eq!(
        listed["state"], "decrypt-only",
        "a rotated version does not wrap yet"
    );
    assert_eq!(gw.put("s3").await.0, 201);
    assert_eq!(gw.key_version_of("s3").await, 1);

    let before = shardgate::now_ms();
    let (s, v) = gw.set(v2, "active").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["changed"], true);
    assert_eq!(v["demoted"], 1);
    assert_eq!(v["key"]["state"], "active");
    assert_eq!(v["key"]["changed_by"], "admin");
    let changed = v["key"]["changed_ms"].as_i64().unwrap();
    assert!(changed >= before && changed <= shardgate::now_ms());
    let event_id = v["audit_event"].as_str().unwrap().to_string();
    assert_eq!(gw.key(1).await["state"], "decrypt-only");
    assert_eq!(gw.put("s4").await.0, 201);
    assert_eq!(
        gw.key_version_of("s4").await,
        v2,
        "the promoted version wraps"
    );
    // Old versions still open.
    for s in ["s1", "s2", "s3", "s4"] {
        assert_eq!(gw.get(s).await.0, 200);
    }

    // Asking for the current state changes nothing and writes no event.
    let (s, v) = gw.set(v2, "active").await;
    assert_eq!((s, v["changed"].as_bool()), (200, Some(false)), "{v}");
    assert!(v.get("audit_event").is_none());

    // The audit event: who, when, what (and the chain verifies).
    let (chain, seq) = event_id.rsplit_once(':').unwrap();
    let events = gw.state.store.audit_events(chain, 0, 10_000).await.unwrap();
    let key_events: Vec<_> = events.iter().filter(|e| e.action == "key.state").collect();
    assert_eq!(key_events.len(), 1);
    let e = key_events[0];
    assert_eq!(e.seq.to_string(), seq);
    assert_eq!(e.actor, "admin");
    assert_eq!(e.backend.as_deref(), Some("local"));
    // The request's trace id follows the detail (FORMAT.md, "Audit events").
    let (detail, trace) = e.detail.split_once(" trace_id=").unwrap();
    assert_eq!(
        detail,
        format!("key_version={v2} from=decrypt-only to=active demoted=1")
    );
    assert_eq!(trace.len(), 32, "{}", e.detail);
    assert_eq!(e.ts_ms, changed);
    let key = shardgate::app::state::audit_key(&gw.cfg).unwrap();
    shardgate::domain::audit::verify(gw.state.store.as_ref(), &key)
        .await
        .unwrap();

    // Bad requests.
    let (s, v) = gw.set(v2, "retired").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (s, _) = gw
        .call(
            "POST",
            "/v1/admin/keys/nope/1/state",
            Some(json!({"state": "active"})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = gw.set(9, "active").await;
    assert_eq!(s, 404);
    let (s, v) = gw
        .call_on(
            &gw.app,
            "POST",
            "/v1/admin/keys/local/x/state",
            Some(json!({"state": "active"})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = common::call(&gw.app, &gw.tokens.reader, "GET", "/v1/admin/keys", None).await;
    assert_eq!(s.as_u16(), 403, "{v}");
}

async fn destroy_is_refused_while_referenced_and_allowed_after_migrating_away(kind: StoreKind) {
    let Some(gw) = Gw::new(kind, Default::default()).await else {
        return;
    };
    gw.state.start_migration_workers();
    gw.account().await;
    for s in ["s1", "s2", "s3"] {
        assert_eq!(gw.put(s).await.0, 201);
    }
    let v2 = gw.rotate();
    // An active version is never destroyed directly.
    let (s, v) = gw.set(1, "destroyed").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("version_conflict")),
        "{v}"
    );
    assert_eq!(gw.set(v2, "active").await.0, 200);

    let (s, v) = gw.set(1, "destroyed").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("version_conflict")),
        "{v}"
    );
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("referenced by 3 shard version(s)"), "{msg}");
    assert_eq!(gw.key(1).await["state"], "decrypt-only");
    assert_eq!(gw.key(1).await["shard_versions"], 3);

    // Move them: a KEK rotation job re-wraps everything below the new version.
    let (s, v) = gw
        .call(
            "POST",
            "/v1/admin/migrations",
            Some(json!({"from_backend": "local", "key_version_below": v2})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let job = v["job"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, j) = gw
            .call("GET", &format!("/v1/admin/migrations/{job}"), None)
            .await;
        if j["state"] != "running" {
            assert_eq!(j["state"], "completed", "{j}");
            assert_eq!(j["done"], 3, "{j}");
            break;
        }
        assert!(Instant::now() < deadline, "job never settled: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.key(1).await["shard_versions"], 0);

    let (s, v) = gw.set(1, "destroyed").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["key"]["state"], "destroyed");
    for s in ["s1", "s2", "s3"] {
        let (st, body) = gw.get(s).await;
        assert_eq!(st, 200, "{body}");
        assert_eq!(
            B64.decode(body["shard"].as_str().unwrap()).unwrap(),
            s.as_bytes()
        );
    }
    // Final.
    for to in ["active", "decrypt-only"] {
        let (s, v) = gw.set(1, to).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (409, Some("version_conflict")),
            "{v}"
        );
    }
    assert_eq!(gw.key(1).await["state"], "destroyed");
}

async fn unwrap_under_a_destroyed_version_is_key_unusable_not_an_integrity_failure(
    kind: StoreKind,
) {
    let Some(gw) = Gw::new(kind, Default::default()).await else {
        return;
    };
    gw.account().await;
    assert_eq!(gw.put("old").await.0, 201);
    let v2 = gw.rotate();
    assert_eq!(gw.set(v2, "active").await.0, 200);
    // A row under version 1 that the guard would never have let stay (restored from a
    // backup taken before the destroy): mark the version destroyed behind the gateway.
    gw.db
        .exec("UPDATE key_versions SET state = 'destroyed' WHERE backend = 'local' AND key_version = 1")
        .await;
    gw.state.keys.refresh().await.unwrap();
    let (s, v) = gw.get("old").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (502, Some("key_unusable")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("destroyed"),
        "{v}"
    );
    let (s, v) = gw
        .call(
            "POST",
            "/v1/shards:batchGet",
            Some(json!({"items": [{"account": "acct-1", "shard": "old"}]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["results"][0]["error"]["code"], "key_unusable", "{v}");
    // New writes use the active version and still work.
    assert_eq!(gw.put("new").await.0, 201);
    assert_eq!(gw.get("new").await.0, 200);
}

/// The batch calls a migration makes (`rewrap_many_from`, `verify_many`) go through the key
/// lifecycle item by item: an item under a destroyed version is refused alone, and the
/// others are re-wrapped under the active version.
async fn batch_calls_refuse_only_the_items_under_a_destroyed_version(kind: StoreKind) {
    use shardgate_backends::{BackendError, ShardIdentity, Version};
    let Some(gw) = Gw::new(kind, Default::default()).await else {
        return;
    };
    let local = gw.state.backend("local").unwrap().clone();
    let old_id = ShardIdentity::new("acct-1", "old", Version::FIRST);
    let (old_key, old_wrap) = local.generate_data_key(&old_id).await.unwrap();
    assert_eq!(old_wrap.key_version, 1);
    let v2 = gw.rotate();
    assert_eq!(gw.set(v2, "active").await.0, 200);
    let new_id = ShardIdentity::new("acct-1", "new", Version::FIRST);
    let (new_key, new_wrap) = local.generate_data_key(&new_id).await.unwrap();
    assert_eq!(i64::from(new_wrap.key_version), v2);
    let items = [(old_id.clone(), old_wrap), (new_id.clone(), new_wrap)];

    // Both sound: both verified, both re-wrapped under the active version.
    assert!(local.verify_many(&items).await.iter().all(Result::is_ok));
    let moved = local.rewrap_many_from(local.as_ref(), &items).await;
    let fresh = moved[0].clone().unwrap();
    assert_eq!(i64::from(fresh.key_version), v2);
    assert_eq!(
        local.unwrap(&old_id, &fresh).await.unwrap().expose(),
        old_key.expose()
    );

    // Version 1 destroyed behind the gateway: only the item under it is refused.
    gw.db
        .exec("UPDATE key_versions SET state = 'destroyed' WHERE backend = 'local' AND key_version = 1")
        .await;
    gw.state.keys.refresh().await.unwrap();
    let destroyed = |r: Option<&BackendError>| matches!(r, Some(BackendError::Refused(m)) if m.contains("destroyed"));
    let checked = local.verify_many(&items).await;
    assert!(destroyed(checked[0].as_ref().err()), "{:?}", checked[0]);
    assert!(checked[1].is_ok(), "{:?}", checked[1]);
    let moved = local.rewrap_many_from(local.as_ref(), &items).await;
    assert!(destroyed(moved[0].as_ref().err()), "{:?}", moved[0]);
    let fresh = moved[1].clone().unwrap();
    assert_eq!(i64::from(fresh.key_version), v2);
    assert_eq!(
        local.unwrap(&new_id, &fresh).await.unwrap().expose(),
        new_key.expose()
    );
}

/// The lifecycle wrapper is a forwarding decorator, but not for the `_under` calls: a caller
/// naming a decrypt-only version is refused (a pass-through would wrap under it, uncounted),
/// and naming the active version wraps under it.
async fn a_wrap_naming_a_key_version_still_goes_through_the_lifecycle(kind: StoreKind) {
    use shardgate_backends::{BackendError, DataKey, ShardIdentity, Version};
    let Some(gw) = Gw::new(kind, Default::default()).await else {
        return;
    };
    let local = gw.state.backend("local").unwrap().clone();
    let v2 = gw.rotate();
    assert_eq!(gw.set(v2, "active").await.0, 200);
    let v2 = u32::try_from(v2).unwrap();
    let id = ShardIdentity::new("acct-1", "s", Version::FIRST);
    let dek = DataKey::generate();

    let refused = local.wrap_under(1, &id, &dek).await;
    assert!(
        matches!(&refused, Err(BackendError::KeyUnusable(m)) if m.contains("key version 1")),
        "{refused:?}"
    );
    let refused = local.generate_data_key_under(1, &id).await;
    assert!(matches!(refused, Err(BackendError::KeyUnusable(_))));
    let old = local.wrap(&id, &dek).await.unwrap();
    let items = [(id.clone(), old)];
    let moved = local
        .rewrap_many_from_under(1, local.as_ref(), &items)
        .await;
    assert!(matches!(moved[0], Err(BackendError::KeyUnusable(_))));

    let wrapped = local.wrap_under(v2, &id, &dek).await.unwrap();
    assert_eq!(wrapped.key_version, v2);
    assert_eq!(
        local.unwrap(&id, &wrapped).await.unwrap().expose(),
        dek.expose()
    );
}

async fn wraps_are_refused_at_the_limit_until_a_new_version_is_promoted(kind: StoreKind) {
    let Some(gw) = Gw::new(kind, small_counter(2, 3, 5)).await else {
        return;
    };
    gw.account().await;
    for i in 0..5 {
        let (s, v) = gw.put(&format!("s{i}")).await;
        assert_eq!(s, 201, "wrap {i}: {v}");
    }
    let (s, v) = gw.put("s5").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (502, Some("key_unusable")),
        "{v}"
    );
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("wrap limit") && msg.contains("rotate"),
        "{msg}"
    );
    assert_eq!(gw.key(1).await["wraps_reserved"], 5);
    assert_eq!(
        gw.db.count("SELECT COUNT(*) FROM shard_versions").await,
        5,
        "nothing stored past the limit"
    );
    // Reads are not wraps.
    assert_eq!(gw.get("s0").await.0, 200);

    let v2 = gw.rotate();
    assert_eq!(gw.set(v2, "active").await.0, 200);
    assert_eq!(gw.put("s5").await.0, 201);
    assert_eq!(gw.key_version_of("s5").await, v2);
    assert_eq!(gw.key(v2).await["wraps_reserved"], 2);
}

async fn two_gateways_on_one_database_share_one_wrap_counter(kind: StoreKind) {
    const LIMIT: u64 = 30;
    const BLOCK: u64 = 4;
    let Some(gw) = Gw::new(kind, small_counter(BLOCK, 20, LIMIT)).await else {
        return;
    };
    let (app2, _state2) = gw.replica().await;
    gw.account().await;
    // Alternate writes between the two gateways until both refuse.
    let mut ok = 0u64;
    let mut refused = [false, false];
    let mut i = 0;
    while !(refused[0] && refused[1]) {
        let which = i % 2;
        let app = if which == 0 { &gw.app } else { &app2 };
        let (s, v) = gw.put_on(app, &format!("s{i:03}")).await;
        match s {
            201 => {
                assert!(!refused[which], "a gateway wrapped again after its refusal");
                ok += 1;
            }
            502 => {
                assert_eq!(v["error"]["code"], "key_unusable", "{v}");
                refused[which] = true;
            }
            _ => panic!("unexpected answer {s}: {v}"),
        }
        i += 1;
        assert!(i < 200, "the limit was never reached");
    }
    // One counter for both: never more than the limit, whichever gateway wrapped; at most
    // the unused rest of each gateway's last block is lost.
    assert!(ok <= LIMIT, "{ok} wraps under a limit of {LIMIT}");
    assert!(ok > LIMIT - 2 * BLOCK, "{ok} wraps");
    assert_eq!(
        u64::try_from(gw.db.count("SELECT COUNT(*) FROM shard_versions").await).unwrap(),
        ok
    );
    assert_eq!(gw.key(1).await["wraps_reserved"], LIMIT);
}

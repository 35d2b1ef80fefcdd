//! The attack catalogue (issue 8, part 1): every attack the gateway is meant to withstand,
//! each pinned by a test that asserts the documented answer AND that nothing leaked or
//! changed. This list is the one place that names them all; where an attack is already
//! pinned elsewhere, the entry points there instead of repeating it.
//!
//! | attack | answer | test |
//! |---|---|---|
//! | ciphertext, nonce or wrapped DEK copied in SQL to another account, shard or version | 500 `integrity_failure`, audited, counted | [`envelope_parts_copied_between_rows_are_integrity_failures`]; also `api.rs::swapped_ciphertext_or_wrapped_key_fails_with_integrity_error`, `api.rs::batch_get_isolates_a_tampered_item` |
//! | an old version's row restored over a newer one | 500 `integrity_failure` | [`old_version_restored_over_a_newer_one_is_an_integrity_failure`] |
//! | a row's `backend` column changed to a weaker (or unconfigured) backend | 500 `integrity_failure` (not `key_unusable`) | [`backend_column_changed_to_a_weaker_backend_is_an_integrity_failure`] |
//! | a bit flipped in every byte of every stored field; truncated / lengthened fields | never 200, never a panic; 500 `integrity_failure` (502 `key_unusable` only for `key_ref` / `key_version`) | [`a_bit_flipped_anywhere_in_a_stored_envelope_never_answers_200`] |
//! | identity headers (`X-Account-Id`, `X-Forwarded-For`, `Forwarded`, `X-Identity`, ...) | no effect: the token alone is the caller | [`identity_comes_only_from_the_verified_token`] |
//! | two `Authorization` headers | 401 `unauthenticated` (ambiguous credential) | [`identity_comes_only_from_the_verified_token`] |
//! | ids: case, `.`/`..`, `%2F`, `%2e%2e`, 129 bytes, non-ASCII, NUL, whitespace; prefix tokens | 400 `invalid_id`, 403 `forbidden` or 404: never another account's rows | [`ids_are_exact_bytes_and_never_reach_another_accounts_rows`]; also `api.rs::bad_ids_are_invalid_id`, `api.rs::account_prefix_token_never_reaches_beyond_its_prefix` |
//! | duplicate JSON keys (`{"shard":..,"shard":..}`) | 400 `invalid_request` (rejected, never first- or last-wins) | [`duplicate_json_keys_are_rejected`] |
//! | deeply nested JSON | 400 `invalid_request`, the gateway keeps serving | [`deeply_nested_json_is_refused_and_the_gateway_keeps_serving`] |
//! | body over `max_body_bytes` (declared length / chunked without a length, never ending) | 413 `payload_too_large` before the body ends | [`oversized_bodies_are_refused_before_they_end`]; also `api.rs::oversized_empty_and_bad_base64_shards_are_refused` |
//! | slowloris headers | connection closed `header_read_ms` after its first byte | `timeouts.rs::slow_headers_are_cut_off_by_the_header_read_timeout`; many at once: [`many_slowloris_connections_do_not_starve_real_requests`] |
//! | slow body (declared length / chunked) | 400 `invalid_request` after `body_read_ms` | `timeouts.rs::trickled_body_is_cut_off_by_the_body_read_timeout`; chunked: [`trickled_chunked_body_is_cut_off_by_the_body_read_timeout`] |
//! | a request flood from one identity | 429 `rate_limited` + `Retry-After` past `[limits] rate_per_identity_per_sec`; other identities unaffected; spoofed forwarding headers do not help | [`a_flood_from_one_identity_is_rate_limited_and_others_are_not`] |
//! | a request target over `[limits] max_uri_bytes` (8 KiB) | 414 `uri_too_long` before authentication, audit or logging (past 65534 bytes hyper's own bare 414) | [`an_unauthenticated_flood_costs_bounded_audit_rows_and_log_bytes`] |
//! | a flood of bad tokens with long paths from one address | `refusals_per_peer` audited 401s per window, then 429 `rate_limited` + `Retry-After` and one aggregated event per window; paths cut to 256 bytes + hash in details and log lines; a valid token from the same address is served throughout | [`an_unauthenticated_flood_costs_bounded_audit_rows_and_log_bytes`] |
//! | a flood that waits for its answers, driving the machine's CPU | answers past the refusal budget (429, and 414s, which charge it too) held back `refusal_delay_ms`, at most `max_delayed_refusals` at once, past it sent at once with `Connection: close`; a valid token from the same address served meanwhile | [`answers_past_the_refusal_budget_are_held_back_and_close_when_no_slot_is_free`] |
//! | refusals crowding reads out of the audit queue | never: refusals have their own bounded queue | [`refusals_never_crowd_reads_out_of_the_audit_queue`] |
//! | two tokens sharing a name | two callers: own rate-limit bucket, own `Idempotency-Key` space | [`tokens_sharing_a_name_share_neither_bucket_nor_idempotency_keys`] |
//! | more connections than `[limits] max_connections` | not accepted (they wait in the backlog) until one closes | [`connections_past_max_connections_wait_until_one_closes`] |
//! | a stored nonce of the wrong length handed to `envelope::open_with` (found by `fuzz/open_row`) | `Integrity`, no panic | [`open_with_refuses_a_nonce_of_the_wrong_length_without_panicking`]; the fuzz targets themselves run in `scripts/test.sh` |
//! | a secret (token, shard, key) in a log or the audit table | never | `api.rs::tokens_never_appear_in_audit_rows`, `api.rs::stored_bytes_never_contain_the_plaintext`, the secret scan of `scripts/test.sh` over every log |
//!
//! Not covered by the envelope (by design): deleting a newer version's row rolls a shard back
//! to its older version, which opens fine; the audit chain still holds the newer version's
//! `shard.put` event, so the rollback is visible there, not at read time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::db::Db;
use common::{StoreKind, Tokens};
use serde_json::{json, Value};
use shardgate::app::config::Config;
use shardgate::AppState;
use sqlx::Row as _;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

// ------------------------------------------------------------------------------------------
// Harness
// ------------------------------------------------------------------------------------------

/// A gateway with two `local` backends: `local` (tier `retail`) and `vault` (tier
/// `institutional`, its own keyring): the "stronger" backend a tampered row is moved off.
struct Gw {
    app: axum::Router,
    tokens: Tokens,
    db: Db,
    cfg: Config,
    _dir: tempfile::TempDir,
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    json: Value,
    text: String,
}

impl Resp {
    fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

impl Gw {
    async fn start(kind: StoreKind, tweak: impl FnOnce(&mut Config)) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let url = common::store_url(kind, dir.path()).await?;
        let tokens = Tokens::new();
        let mut cfg = common::config(dir.path(), &url, &tokens);
        cfg.backends
            .insert("vault".into(), common::local_backend(dir.path(), "vault"));
        cfg.tiers.insert("institutional".into(), "vault".into());
        tweak(&mut cfg);
        let (state, _) = AppState::build(&cfg).await.unwrap();
        let db = Db::connect(&url).await;
        Some(Self {
            app: shardgate::router(state),
            tokens,
            db,
            cfg,
            _dir: dir,
        })
    }

    async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            assert!(
                json["error"]["code"].is_string(),
                "error without code: {text}"
            );
        }
        Resp {
            status,
            headers,
            json,
            text,
        }
    }

    /// A request with a bearer token (if any), extra headers and a raw body.
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        self.send(req.body(Body::from(body.unwrap_or_default())).unwrap())
            .await
    }

    async fn json(&self, method: &str, path: &str, token: &str, body: Value) -> Resp {
        self.call(
            method,
            path,
            Some(token),
            &[],
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    fn admin(&self) -> &str {
        &self.tokens.admin
    }

    async fn account(&self, account: &str, tier: &str) {
        let r = self
            .json(
                "PUT",
                &format!("/v1/accounts/{account}"),
                self.admin(),
                json!({ "tier": tier }),
            )
            .await;
        assert!(r.status.is_success(), "{}", r.text);
    }

    /// Store a shard version; its number.
    async fn put(&self, account: &str, shard: &str, bytes: &[u8]) -> i64 {
        let b64 = B64.encode(bytes);
        common::plant(&b64);
        let r = self
            .json(
                "PUT",
                &format!("/v1/accounts/{account}/shards/{shard}"),
                self.admin(),
                json!({ "shard": b64 }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json["version"].as_i64().unwrap()
    }

    async fn get(&self, account: &str, shard: &str, version: Option<i64>) -> Resp {
        let q = version.map_or(String::new(), |v| format!("?version={v}"));
        self.call(
            "GET",
            &format!("/v1/accounts/{account}/shards/{shard}{q}"),
            Some(self.admin()),
            &[],
            None,
        )
        .await
    }

    /// The value of `shardgate_integrity_failures_total{backend="..."}` (0 when absent).
    async fn integrity_failures(&self, backend: &str) -> f64 {
        let r = self
            .call("GET", "/metrics", Some(self.admin()), &[], None)
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let prefix = format!("shardgate_integrity_failures_total{{backend=\"{backend}\"}} ");
        r.text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Audit events of `action` on a shard with `outcome`.
    async fn audited(&self, action: &str, account: &str, shard: &str, outcome: &str) -> i64 {
        self.db
            .count(&format!(
                "SELECT COUNT(*) FROM audit_events WHERE action='{action}' AND account='{account}' AND shard='{shard}' AND outcome='{outcome}'"
            ))
            .await
    }
}

fn secret(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed) | 0x80)
        .collect()
}

fn decoded(r: &Resp) -> Vec<u8> {
    B64.decode(r.json["shard"].as_str().unwrap()).unwrap()
}

/// A stored row's envelope: every column the gateway reads to open it.
#[derive(Debug, Clone, PartialEq)]
struct Envelope {
    backend: String,
    key_ref: String,
    key_version: i64,
    format_version: i16,
    wrapped_dek: Vec<u8>,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

type At<'a> = (&'a str, &'a str, i64);

/// Copies some columns of one envelope onto another.
type Copy = fn(&mut Envelope, &Envelope);

const SELECT_ENVELOPE: &str = "SELECT backend, key_ref, key_version, format_version, wrapped_dek, nonce, ciphertext FROM shard_versions WHERE account = $1 AND shard = $2 AND version = $3";
const UPDATE_ENVELOPE: &str = "UPDATE shard_versions SET backend = $1, key_ref = $2, key_version = $3, format_version = $4, wrapped_dek = $5, nonce = $6, ciphertext = $7 WHERE account = $8 AND shard = $9 AND version = $10";

macro_rules! envelope_of_row {
    ($row:expr) => {
        Envelope {
            backend: $row.get(0),
            key_ref: $row.get(1),
            key_version: $row.get(2),
            format_version: $row.get(3),
            wrapped_dek: $row.get(4),
            nonce: $row.get(5),
            ciphertext: $row.get(6),
        }
    };
}

/// Read a row's envelope with plain SQL (what someone with database access sees).
async fn read_envelope(db: &Db, at: At<'_>) -> Envelope {
    match db {
        Db::Pg(p) => {
            let row = sqlx::query(SELECT_ENVELOPE)
                .bind(at.0)
                .bind(at.1)
                .bind(at.2)
                .fetch_one(p)
                .await
                .unwrap();
            envelope_of_row!(row)
        }
        Db::Lite(p) => {
            let row = sqlx::query(&SELECT_ENVELOPE.replace('$', "?"))
                .bind(at.0)
                .bind(at.1)
                .bind(at.2)
                .fetch_one(p)
                .await
                .unwrap();
            envelope_of_row!(row)
        }
    }
}

/// Overwrite a row's envelope with plain SQL (what someone with database access can do).
async fn write_envelope(db: &Db, at: At<'_>, e: &Envelope) {
    macro_rules! run {
        ($pool:expr, $sql:expr) => {
            sqlx::query($sql)
                .bind(&e.backend)
                .bind(&e.key_ref)
                .bind(e.key_version)
                .bind(e.format_version)
                .bind(&e.wrapped_dek)
                .bind(&e.nonce)
                .bind(&e.ciphertext)
                .bind(at.0)
                .bind(at.1)
                .bind(at.2)
                .execute($pool)
                .await
                .unwrap()
                .rows_affected()
        };
    }
    let n = match db {
        Db::Pg(p) => run!(p, UPDATE_ENVELOPE),
        Db::Lite(p) => run!(p, &UPDATE_ENVELOPE.replace('$', "?")),
    };
    assert_eq!(n, 1, "no row at {at:?}");
}

/// A refused read: the expected code, and no shard bytes (nor `secret`) in the answer.
fn assert_refused(r: &Resp, status: StatusCode, code: &str, secret: &[u8], what: &str) {
    assert_eq!((r.status, r.code()), (status, code), "{what}: {}", r.text);
    assert!(r.json.get("shard").is_none(), "{what}: shard in a refusal");
    assert!(
        !r.text.contains(&B64.encode(secret)),
        "{what}: the plaintext leaked"
    );
}

both_stores!(
    envelope_parts_copied_between_rows_are_integrity_failures,
    old_version_restored_over_a_newer_one_is_an_integrity_failure,
    backend_column_changed_to_a_weaker_backend_is_an_integrity_failure,
    a_bit_flipped_anywhere_in_a_stored_envelope_never_answers_200,
    identity_comes_only_from_the_verified_token,
    ids_are_exact_bytes_and_never_reach_another_accounts_rows,
    duplicate_json_keys_are_rejected,
    an_unauthenticated_flood_costs_bounded_audit_rows_and_log_bytes,
    refusals_never_crowd_reads_out_of_the_audit_queue,
    tokens_sharing_a_name_share_neither_bucket_nor_idempotency_keys,
);

// ------------------------------------------------------------------------------------------
// Stored rows tampered with in SQL
// ------------------------------------------------------------------------------------------

async fn envelope_parts_copied_between_rows_are_integrity_failures(kind: StoreKind) {
    let Some(gw) = Gw::start(kind, |_| {}).await else {
        return;
    };
    gw.account("acct-1", "institutional").await;
    gw.account("acct-2", "institutional").await;
    let target = ("acct-1", "s", 2);
    let target_secret = secret(48, 2);
    gw.put("acct-1", "s", &secret(48, 1)).await;
    gw.put("acct-1", "s", &target_secret).await;
    gw.put("acct-1", "t", &secret(48, 3)).await;
    gw.put("acct-2", "s", &secret(48, 4)).await;
    let sources: [(&str, At<'_>, Vec<u8>); 3] = [
        ("another account", ("acct-2", "s", 1), secret(48, 4)),
        ("another shard", ("acct-1", "t", 1), secret(48, 3)),
        ("another version", ("acct-1", "s", 1), secret(48, 1)),
    ];
    let original = read_envelope(&gw.db, target).await;
    let failures_before = gw.integrity_failures("vault").await;
    let mut attacks: i32 = 0;
    for (relation, from, from_secret) in &sources {
        let source = read_envelope(&gw.db, *from).await;
        let parts: [(&str, Copy); 4] = [
            ("ciphertext", |t, s| t.ciphertext = s.ciphertext.clone()),
            ("nonce", |t, s| t.nonce = s.nonce.clone()),
            ("wrapped DEK", |t, s| t.wrapped_dek = s.wrapped_dek.clone()),
            ("whole envelope", |t, s| *t = s.clone()),
        ];
        for (part, copy) in parts {
            let mut tampered = original.clone();
            copy(&mut tampered, &source);
            write_envelope(&gw.db, target, &tampered).await;
            let what = format!("{part} of {relation} copied onto acct-1/s v2");
            let r = gw.get("acct-1", "s", Some(2)).await;
            assert_refused(
                &r,
                StatusCode::INTERNAL_SERVER_ERROR,
                "integrity_failure",
                from_secret,
                &what,
            );
            assert!(!r.text.contains(&B64.encode(&target_secret)), "{what}");
            // The latest-version read (no ?version) is the same row.
            let r = gw.get("acct-1", "s", None).await;
            assert_refused(
                &r,
                StatusCode::INTERNAL_SERVER_ERROR,
                "integrity_failure",
                from_secret,
                &what,
            );
            attacks += 2;
        }
        // The source row was only read: it still opens.
        let r = gw.get(from.0, from.1, Some(from.2)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&decoded(&r), from_secret);
    }
    // A batch reports it per item, next to an untouched item that still opens.
    let r = gw
        .json(
            "POST",
            "/v1/shards:batchGet",
            gw.admin(),
            json!({"items":[{"account":"acct-1","shard":"s","version":2},{"account":"acct-2","shard":"s"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["results"][0]["error"]["code"], "integrity_failure");
    assert!(r.json["results"][0].get("shard").is_none());
    assert_eq!(r.json["results"][1]["version"], 1);
    attacks += 1;
    // Every refusal was audited and counted.
    assert_eq!(
        gw.audited("shard.get", "acct-1", "s", "integrity_failure")
            .await,
        i64::from(attacks - 1)
    );
    assert_eq!(
        gw.audited("shard.batch_get", "acct-1", "s", "integrity_failure")
            .await,
        1
    );
    assert_eq!(
        gw.integrity_failures("vault").await - failures_before,
        f64::from(attacks)
    );
    // Nothing changed for good: restored, the row opens to its own bytes.
    write_envelope(&gw.db, target, &original).await;
    let r = gw.get("acct-1", "s", None).await;
    assert_eq!((r.status, decoded(&r)), (StatusCode::OK, target_secret));
    assert_eq!(gw.db.count("SELECT COUNT(*) FROM shard_versions").await, 4);
}

async fn old_version_restored_over_a_newer_one_is_an_integrity_failure(kind: StoreKind) {
    let Some(gw) = Gw::start(kind, |_| {}).await else {
        return;
    };
    gw.account("acct-1", "retail").await;
    let (old, new) = (secret(32, 10), secret(32, 11));
    gw.put("acct-1", "key-0", &old).await;
    gw.put("acct-1", "key-0", &new).await;
    let v1 = read_envelope(&gw.db, ("acct-1", "key-0", 1)).await;
    let v2 = read_envelope(&gw.db, ("acct-1", "key-0", 2)).await;
    let before = gw.integrity_failures("local").await;
    // The old version's whole row (as in an old backup) written over the newer one.
    write_envelope(&gw.db, ("acct-1", "key-0", 2), &v1).await;
    let r = gw.get("acct-1", "key-0", None).await;
    assert_refused(
        &r,
        StatusCode::INTERNAL_SERVER_ERROR,
        "integrity_failure",
        &old,
        "v1 over v2",
    );
    assert!(!r.text.contains(&B64.encode(&new)));
    assert_eq!(
        gw.audited("shard.get", "acct-1", "key-0", "integrity_failure")
            .await,
        1
    );
    assert_eq!(gw.integrity_failures("local").await - before, 1.0);
    // The old version itself is untouched and still opens at its own number.
    let r = gw.get("acct-1", "key-0", Some(1)).await;
    assert_eq!((r.status, decoded(&r)), (StatusCode::OK, old));
    // Put back, the newer one opens again.
    write_envelope(&gw.db, ("acct-1", "key-0", 2), &v2).await;
    let r = gw.get("acct-1", "key-0", None).await;
    assert_eq!((r.status, decoded(&r)), (StatusCode::OK, new));
}

async fn backend_column_changed_to_a_weaker_backend_is_an_integrity_failure(kind: StoreKind) {
    let Some(gw) = Gw::start(kind, |_| {}).await else {
        return;
    };
    gw.account("acct-inst", "institutional").await;
    gw.account("acct-ret", "retail").await;
    let inst = secret(40, 20);
    let ret = secret(40, 21);
    gw.put("acct-inst", "s", &inst).await;
    gw.put("acct-ret", "s", &ret).await;
    let at = ("acct-inst", "s", 1);
    let original = read_envelope(&gw.db, at).await;
    assert_eq!(original.backend, "vault");
    let local_before = gw.integrity_failures("local").await;
    let unconfigured_before = gw.integrity_failures("unconfigured").await;

    // Moved to the weaker backend: `local` does not hold the vault's key reference, the
    // vault does; the row was rewritten, so it is an integrity failure, not key_unusable.
    write_envelope(
        &gw.db,
        at,
        &Envelope {
            backend: "local".into(),
            ..original.clone()
        },
    )
    .await;
    let r = gw.get("acct-inst", "s", None).await;
    assert_refused(
        &r,
        StatusCode::INTERNAL_SERVER_ERROR,
        "integrity_failure",
        &inst,
        "backend -> local",
    );
    let r = gw
        .json(
            "POST",
            "/v1/shards:batchGet",
            gw.admin(),
            json!({"items":[{"account":"acct-inst","shard":"s"}]}),
        )
        .await;
    assert_eq!(r.json["results"][0]["error"]["code"], "integrity_failure");
    assert_eq!(gw.integrity_failures("local").await - local_before, 2.0);

    // Moved to a backend this gateway does not have: the same verdict, counted under a
    // bounded label (the column is attacker-written text).
    for name in ["kms-cheap", "vault ", "VAULT", "local-evil-\u{1F600}"] {
        write_envelope(
            &gw.db,
            at,
            &Envelope {
                backend: name.into(),
                ..original.clone()
            },
        )
        .await;
        let r = gw.get("acct-inst", "s", None).await;
        assert_refused(
            &r,
            StatusCode::INTERNAL_SERVER_ERROR,
            "integrity_failure",
            &inst,
            name,
        );
    }
    assert_eq!(
        gw.integrity_failures("unconfigured").await - unconfigured_before,
        4.0
    );
    let metrics = gw
        .call("GET", "/metrics", Some(gw.admin()), &[], None)
        .await
        .text;
    assert!(!metrics.contains("kms-cheap") && !metrics.contains("acct-inst"));

    // And the other way round (a retail row claimed by the vault).
    let ret_at = ("acct-ret", "s", 1);
    let ret_original = read_envelope(&gw.db, ret_at).await;
    write_envelope(
        &gw.db,
        ret_at,
        &Envelope {
            backend: "vault".into(),
            ..ret_original.clone()
        },
    )
    .await;
    let r = gw.get("acct-ret", "s", None).await;
    assert_refused(
        &r,
        StatusCode::INTERNAL_SERVER_ERROR,
        "integrity_failure",
        &ret,
        "backend -> vault",
    );

    // Audited: the row's account and shard, the refusal's code.
    assert_eq!(
        gw.audited("shard.get", "acct-inst", "s", "integrity_failure")
            .await,
        5
    );
    assert_eq!(
        gw.audited("shard.batch_get", "acct-inst", "s", "integrity_failure")
            .await,
        1
    );
    assert_eq!(
        gw.audited("shard.get", "acct-ret", "s", "integrity_failure")
            .await,
        1
    );

    // The contrast: a key reference NO configured backend holds (a keyring missing from a
    // restore) is an operator problem, not proof of tampering: 502 key_unusable.
    write_envelope(
        &gw.db,
        at,
        &Envelope {
            key_ref: "0123456789abcdef0123456789abcdef".into(),
            ..original.clone()
        },
    )
    .await;
    let r = gw.get("acct-inst", "s", None).await;
    assert_refused(
        &r,
        StatusCode::BAD_GATEWAY,
        "key_unusable",
        &inst,
        "foreign key_ref",
    );

    // Restored, both rows open again: nothing was changed by the refusals.
    write_envelope(&gw.db, at, &original).await;
    write_envelope(&gw.db, ret_at, &ret_original).await;
    let r = gw.get("acct-inst", "s", None).await;
    assert_eq!(
        (r.status, decoded(&r), r.json["backend"].as_str()),
        (StatusCode::OK, inst, Some("vault"))
    );
    let r = gw.get("acct-ret", "s", None).await;
    assert_eq!((r.status, decoded(&r)), (StatusCode::OK, ret));
}

async fn a_bit_flipped_anywhere_in_a_stored_envelope_never_answers_200(kind: StoreKind) {
    let Some(gw) = Gw::start(kind, |_| {}).await else {
        return;
    };
    gw.account("acct-1", "institutional").await;
    let plain = secret(24, 30);
    gw.put("acct-1", "s", &plain).await;
    let at = ("acct-1", "s", 1);
    let original = read_envelope(&gw.db, at).await;
    assert_eq!(original.nonce.len(), 12);
    assert_eq!(original.ciphertext.len(), plain.len() + 16);

    // Every byte position of every field, a different bit each time.
    let mut cases: Vec<(String, Envelope, &[&str])> = Vec::new();
    const INTEGRITY: &[&str] = &["integrity_failure"];
    // A flipped key reference or key version names a KEK nobody holds: indistinguishable
    // from a keyring that misses a version (docs/backup.md).
    const KEY_FIELDS: &[&str] = &["integrity_failure", "key_unusable"];
    for i in 0..original.nonce.len() {
        let mut e = original.clone();
        e.nonce[i] ^= 1 << (i % 8);
        cases.push((format!("nonce[{i}]"), e, INTEGRITY));
    }
    for i in 0..original.ciphertext.len() {
        let mut e = original.clone();
        e.ciphertext[i] ^= 1 << (i % 8);
        let part = if i < plain.len() { "ciphertext" } else { "tag" };
        cases.push((format!("{part} (ciphertext[{i}])"), e, INTEGRITY));
    }
    for i in 0..original.wrapped_dek.len() {
        let mut e = original.clone();
        e.wrapped_dek[i] ^= 1 << (i % 8);
        cases.push((format!("wrapped_dek[{i}]"), e, INTEGRITY));
    }
    for i in 0..original.key_ref.len() {
        let mut bytes = original.key_ref.clone().into_bytes();
        bytes[i] ^= 1; // stays ASCII (the column is text)
        let e = Envelope {
            key_ref: String::from_utf8(bytes).unwrap(),
            ..original.clone()
        };
        cases.push((format!("key_ref[{i}]"), e, KEY_FIELDS));
    }
    for i in 0..original.backend.len() {
        let mut bytes = original.backend.clone().into_bytes();
        bytes[i] ^= 1;
        let e = Envelope {
            backend: String::from_utf8(bytes).unwrap(),
            ..original.clone()
        };
        cases.push((format!("backend[{i}]"), e, INTEGRITY));
    }
    for byte in 0..8 {
        for bit in [0, 7] {
            let e = Envelope {
                key_version: original.key_version ^ (1i64 << (byte * 8 + bit)),
                ..original.clone()
            };
            cases.push((format!("key_version byte {byte} bit {bit}"), e, KEY_FIELDS));
        }
    }
    for byte in 0..2 {
        for bit in 0..8 {
            let e = Envelope {
                format_version: original.format_version ^ (1i16 << (byte * 8 + bit)),
                ..original.clone()
            };
            cases.push((
                format!("format_version byte {byte} bit {bit}"),
                e,
                INTEGRITY,
            ));
        }
    }
    // Wrong lengths: truncated, lengthened, emptied.
    let mut nonce13 = original.nonce.clone();
    nonce13.push(0);
    let resized: [(&str, Envelope); 7] = [
        (
            "empty nonce",
            Envelope {
                nonce: vec![],
                ..original.clone()
            },
        ),
        (
            "13-byte nonce",
            Envelope {
                nonce: nonce13,
                ..original.clone()
            },
        ),
        (
            "11-byte nonce",
            Envelope {
                nonce: original.nonce[..11].to_vec(),
                ..original.clone()
            },
        ),
        (
            "empty ciphertext",
            Envelope {
                ciphertext: vec![],
                ..original.clone()
            },
        ),
        (
            "ciphertext without its tag",
            Envelope {
                ciphertext: original.ciphertext[..plain.len()].to_vec(),
                ..original.clone()
            },
        ),
        (
            "empty wrapped_dek",
            Envelope {
                wrapped_dek: vec![],
                ..original.clone()
            },
        ),
        (
            "wrapped_dek plus a byte",
            Envelope {
                wrapped_dek: [original.wrapped_dek.clone(), vec![0]].concat(),
                ..original.clone()
            },
        ),
    ];
    for (what, e) in resized {
        cases.push((what.to_string(), e, INTEGRITY));
    }

    let mut refusals = 0;
    for (what, tampered, codes) in &cases {
        write_envelope(&gw.db, at, tampered).await;
        let r = gw.get("acct-1", "s", None).await;
        assert_ne!(r.status, StatusCode::OK, "{what} opened");
        assert!(codes.contains(&r.code()), "{what}: {} {}", r.status, r.text);
        assert_eq!(
            r.status,
            axum::http::StatusCode::from_u16(if r.code() == "key_unusable" { 502 } else { 500 })
                .unwrap()
        );
        assert!(
            !r.text.contains(&B64.encode(&plain)),
            "{what}: plaintext leaked"
        );
        refusals += 1;
    }
    assert!(refusals > 150, "only {refusals} cases");
    // Every refusal was audited with its code.
    let audited = gw
        .db
        .count("SELECT COUNT(*) FROM audit_events WHERE action='shard.get' AND outcome <> 'ok'")
        .await;
    assert_eq!(audited, refusals);
    // The gateway kept serving, and the restored row still opens to its bytes.
    write_envelope(&gw.db, at, &original).await;
    let r = gw.get("acct-1", "s", None).await;
    assert_eq!((r.status, decoded(&r)), (StatusCode::OK, plain));
    let r = gw.call("GET", "/healthz", None, &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
}

// ------------------------------------------------------------------------------------------
// Who the caller is, and what it can reach
// ------------------------------------------------------------------------------------------

/// Headers a proxy, a client or an attacker might use to claim an identity or an account.
const IDENTITY_HEADERS: &[(&str, &str)] = &[
    ("x-account-id", "acct-B1"),
    ("x-shardgate-account", "acct-B1"),
    ("x-forwarded-for", "127.0.0.1"),
    ("x-real-ip", "127.0.0.1"),
    ("forwarded", "for=127.0.0.1;by=127.0.0.1;host=gateway"),
    ("x-identity", "admin"),
    ("x-shardgate-identity", "admin"),
    ("x-forwarded-user", "admin"),
    ("x-remote-user", "admin"),
    ("x-auth-request-user", "admin"),
    ("remote-user", "admin"),
    ("x-token-name", "admin"),
    ("x-scopes", "*"),
    ("x-ssl-client-s-dn", "CN=admin"),
    ("x-client-cert", "CN=admin"),
    ("x-original-url", "/v1/accounts/acct-B1/shards/s"),
    ("x-rewrite-url", "/v1/accounts/acct-B1/shards/s"),
    ("x-http-method-override", "DELETE"),
];

async fn identity_comes_only_from_the_verified_token(kind: StoreKind) {
    let Some(gw) = Gw::start(kind, |_| {}).await else {
        return;
    };
    let (a1, b1) = (secret(32, 40), secret(32, 41));
    gw.account("acct-A1", "retail").await;
    gw.account("acct-B1", "retail").await;
    gw.put("acct-A1", "s", &a1).await;
    gw.put("acct-B1", "s", &b1).await;
    let prefixed = gw.tokens.prefixed.clone();
    let reader = gw.tokens.reader.clone();
    let rows_before = gw.db.count("SELECT COUNT(*) FROM shard_versions").await;

    // The acct-A-prefix token, with every claim at once and one at a time.
    let mut sets: Vec<Vec<(&str, &str)>> = vec![IDENTITY_HEADERS.to_vec()];
    sets.extend(IDENTITY_HEADERS.iter().map(|h| vec![*h]));
    for headers in &sets {
        let what = format!("{headers:?}");
        let r = gw
            .call(
                "GET",
                "/v1/accounts/acct-B1/shards/s",
                Some(&prefixed),
                headers,
                None,
            )
            .await;
        assert_refused(&r, StatusCode::FORBIDDEN, "forbidden", &b1, &what);
        let r = gw
            .call(
                "PUT",
                "/v1/accounts/acct-B1/shards/s",
                Some(&prefixed),
                headers,
                Some(json!({"shard":"aGk="}).to_string().into_bytes()),
            )
            .await;
        assert_refused(&r, StatusCode::FORBIDDEN, "forbidden", &b1, &what);
        let r = gw
            .call(
                "DELETE",
                "/v1/accounts/acct-B1",
                Some(&prefixed),
                headers,
                None,
            )
            .await;
        assert_refused(&r, StatusCode::FORBIDDEN, "forbidden", &b1, &what);
        // Its own account answers its own bytes: no header rewrote the path or the method.
        let r = gw
            .call(
                "GET",
                "/v1/accounts/acct-A1/shards/s",
                Some(&prefixed),
                headers,
                None,
            )
            .await;
        assert_eq!(
            (r.status, decoded(&r)),
            (StatusCode::OK, a1.clone()),
            "{what}"
        );
        // A read-only token gains no scope.
        let r = gw
            .call(
                "PUT",
                "/v1/accounts/acct-A1/shards/s",
                Some(&reader),
                headers,
                Some(json!({"shard":"aGk="}).to_string().into_bytes()),
            )
            .await;
        assert_refused(&r, StatusCode::FORBIDDEN, "forbidden", &a1, &what);
        // And without a token, no header is an identity.
        let r = gw
            .call("GET", "/v1/accounts/acct-A1/shards/s", None, headers, None)
            .await;
        assert_refused(&r, StatusCode::UNAUTHORIZED, "unauthenticated", &a1, &what);
    }

    // Two credentials are ambiguous: neither is used, whichever comes first.
    for (first, second) in [
        (prefixed.as_str(), gw.admin()),
        (gw.admin(), prefixed.as_str()),
    ] {
        let req = Request::builder()
            .method("GET")
            .uri("/v1/accounts/acct-B1/shards/s")
            .header(header::AUTHORIZATION, format!("Bearer {first}"))
            .header(header::AUTHORIZATION, format!("Bearer {second}"))
            .body(Body::empty())
            .unwrap();
        let r = gw.send(req).await;
        assert_refused(
            &r,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            &b1,
            "two Authorization headers",
        );
    }

    // Nothing was written or deleted; every refusal names the real caller in the audit log.
    assert_eq!(
        gw.db.count("SELECT COUNT(*) FROM shard_versions").await,
        rows_before
    );
    assert_eq!(gw.db.count("SELECT COUNT(*) FROM accounts").await, 2);
    assert_eq!(
        gw.db.count("SELECT COUNT(*) FROM audit_events WHERE account='acct-B1' AND outcome='ok' AND actor <> 'admin'").await,
        0
    );
    // Scope refusals are recorded without waiting for the audit writer: poll.
    let refusals = "SELECT COUNT(*) FROM audit_events WHERE account='acct-B1' AND outcome='forbidden' AND actor='prefixed'";
    eventually("every scope refusal audited", || async {
        gw.db.count(refusals).await >= 3 * sets.len() as i64
    })
    .await;
    assert_eq!(gw.db.count(refusals).await, 3 * sets.len() as i64);
    let r = gw.get("acct-B1", "s", None).await;
    assert_eq!((r.status, decoded(&r)), (StatusCode::OK, b1));
}

async fn ids_are_exact_bytes_and_never_reach_another_accounts_rows(kind: StoreKind) {
    let Some(gw) = Gw::start(kind, |_| {}).await else {
        return;
    };
    let accounts = ["acct-A1", "acct-a1", "acct-B1"];
    let secrets: Vec<Vec<u8>> = (0..3).map(|i| secret(32, 50 + i)).collect();
    for (a, s) in accounts.iter().zip(&secrets) {
        gw.account(a, "retail").await;
        gw.put(a, "s", s).await;
    }
    let others = &secrets[1..]; // what the acct-A-prefix token must never see
    let prefixed = gw.tokens.prefixed.clone();
    let rows_before = gw.db.count("SELECT COUNT(*) FROM shard_versions").await;

    // Case is significant, for ids and for prefixes.
    let r = gw.get("acct-a1", "s", None).await;
    assert_eq!(decoded(&r), secrets[1]);
    let r = gw.get("ACCT-A1", "s", None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "account_not_found")
    );

    let long_in_prefix = format!("acct-A{}", "1".repeat(123)); // 129 bytes
    assert_eq!(long_in_prefix.len(), 129);
    // (path, expected status, expected code)
    let attempts: Vec<(String, StatusCode, &str)> = vec![
        (
            "/v1/accounts/acct-a1/shards/s".into(),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "/v1/accounts/ACCT-A1/shards/s".into(),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "/v1/accounts/acct-B1/shards/s".into(),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "/v1/accounts/acct-%61%31/shards/s".into(),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        // Traversal, raw and percent-encoded.
        (
            "/v1/accounts/acct-A1/../acct-B1/shards/s".into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "/v1/accounts/acct-A1%2F..%2Facct-B1/shards/s".into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "/v1/accounts/acct-A1%2f%2e%2e%2facct-B1/shards/s".into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "/v1/accounts/acct-A1/shards/..%2F..%2Facct-B1%2Fshards%2Fs".into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "/v1/accounts/acct-A1/shards/%2e%2e".into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "/v1/accounts/acct-A1/shards/.".into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "/v1/accounts/%2e%2e/shards/s".into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "/v1/accounts/../shards/s".into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "/v1/accounts/acct-A1%5C..%5Cacct-B1/shards/s".into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        // Overlong, even inside the prefix.
        (
            format!("/v1/accounts/{long_in_prefix}/shards/s"),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        // Non-ASCII, invalid UTF-8, NUL, whitespace, look-alikes.
        (
            "/v1/accounts/acct-A%C3%A91/shards/s".into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "/v1/accounts/acct-A%FF/shards/s".into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "/v1/accounts/acct-A1%00/shards/s".into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "/v1/accounts/acct-A1%20/shards/s".into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "/v1/accounts/acct-A1%09/shards/s".into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "/v1/accounts/acct-%EF%BC%A11/shards/s".into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "/v1/accounts/acct-A1/shards/s%C2%A0".into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        // The listing's cursor is an id too.
        (
            "/v1/accounts/acct-A1/shards?after=..%2Facct-B1".into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
    ];
    for (path, status, code) in &attempts {
        for method in ["GET", "PUT", "DELETE"] {
            if path.contains("?after=") && method != "GET" {
                continue;
            }
            let body = (method == "PUT").then(|| json!({"shard":"aGk="}).to_string().into_bytes());
            let r = gw.call(method, path, Some(&prefixed), &[], body).await;
            let what = format!("{method} {path}");
            assert_eq!((r.status, r.code()), (*status, *code), "{what}: {}", r.text);
            assert!(r.json.get("shard").is_none(), "{what}");
            for s in others {
                assert!(
                    !r.text.contains(&B64.encode(s)),
                    "{what}: another account's shard"
                );
            }
        }
    }
    // The percent-decoded form IS the id: `acct-%41%31` is `acct-A1`, inside the prefix.
    let r = gw
        .call(
            "GET",
            "/v1/accounts/acct-%41%31/shards/s",
            Some(&prefixed),
            &[],
            None,
        )
        .await;
    assert_eq!(
        (r.status, decoded(&r)),
        (StatusCode::OK, secrets[0].clone())
    );

    // The same ids in a batch body: per-item refusals, never another account's shard.
    let items: Vec<Value> = [
        "acct-a1",
        "ACCT-A1",
        "acct-B1",
        "acct-A1/../acct-B1",
        "..",
        ".",
        "",
        long_in_prefix.as_str(),
        "acct-A\u{e9}1",
        "acct-A1\u{0}",
    ]
    .iter()
    .map(|a| json!({"account": a, "shard": "s"}))
    .collect();
    let r = gw
        .json(
            "POST",
            "/v1/shards:batchGet",
            &prefixed,
            json!({ "items": items }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let codes: Vec<&str> = r.json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["error"]["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "forbidden",
            "forbidden",
            "forbidden",
            "invalid_id",
            "invalid_id",
            "invalid_id",
            "invalid_id",
            "invalid_id",
            "invalid_id",
            "invalid_id"
        ]
    );
    for s in others {
        assert!(!r.text.contains(&B64.encode(s)));
    }

    // Nothing was written, deleted or created anywhere.
    assert_eq!(
        gw.db.count("SELECT COUNT(*) FROM shard_versions").await,
        rows_before
    );
    assert_eq!(gw.db.count("SELECT COUNT(*) FROM accounts").await, 3);
    for (a, s) in accounts.iter().zip(&secrets) {
        let r = gw.get(a, "s", None).await;
        assert_eq!(&decoded(&r), s, "{a}");
    }
}

// ------------------------------------------------------------------------------------------
// Request bodies
// ------------------------------------------------------------------------------------------

async fn duplicate_json_keys_are_rejected(kind: StoreKind) {
    let Some(gw) = Gw::start(kind, |_| {}).await else {
        return;
    };
    gw.account("acct-A1", "retail").await;
    gw.account("acct-B1", "institutional").await;
    let b1 = secret(32, 60);
    gw.put("acct-B1", "s", &b1).await;
    let prefixed = gw.tokens.prefixed.clone();
    let (x, y) = (B64.encode(b"first-value"), B64.encode(b"second-value"));
    // Raw bodies: serde_json::json! could not even express a duplicate key.
    let cases: Vec<(&str, &str, String, &str)> = vec![
        ("PUT", "/v1/accounts/acct-A1/shards/s", format!(r#"{{"shard":"{x}","shard":"{y}"}}"#), "shard twice"),
        ("PUT", "/v1/accounts/acct-A1/shards/s", format!(r#"{{"shard":"{x}","expected_version":0,"expected_version":5}}"#), "expected_version twice"),
        ("PUT", "/v1/accounts/acct-A1", r#"{"tier":"retail","tier":"institutional"}"#.into(), "tier twice"),
        ("PUT", "/v1/accounts/acct-A2", r#"{"tier":"institutional","tier":"retail"}"#.into(), "tier twice on a new account"),
        ("POST", "/v1/shards:batchGet", r#"{"items":[{"account":"acct-A1","account":"acct-B1","shard":"s"}]}"#.into(), "item account twice"),
        ("POST", "/v1/shards:batchGet", r#"{"items":[{"account":"acct-A1","shard":"s"}],"items":[{"account":"acct-B1","shard":"s"}]}"#.into(), "items twice"),
        ("POST", "/v1/admin/migrations", r#"{"account":"acct-A1","account":"acct-B1"}"#.into(), "migration account twice"),
    ];
    for (method, path, body, what) in &cases {
        let token = if path.starts_with("/v1/admin") {
            gw.admin().to_string()
        } else {
            prefixed.clone()
        };
        let r = gw
            .call(
                method,
                path,
                Some(&token),
                &[],
                Some(body.clone().into_bytes()),
            )
            .await;
        assert_refused(&r, StatusCode::BAD_REQUEST, "invalid_request", &b1, what);
        // The message says where, never what: no value of the body is echoed.
        assert!(
            !r.text.contains(&x) && !r.text.contains(&y),
            "{what}: {}",
            r.text
        );
    }
    // Nothing was stored, created, changed or started.
    assert_eq!(gw.db.count("SELECT COUNT(*) FROM shard_versions").await, 1);
    assert_eq!(gw.db.count("SELECT COUNT(*) FROM accounts").await, 2);
    assert_eq!(
        gw.db
            .count("SELECT COUNT(*) FROM accounts WHERE account='acct-A1' AND tier='retail'")
            .await,
        1
    );
    assert_eq!(gw.db.count("SELECT COUNT(*) FROM migration_jobs").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_refused_and_the_gateway_keeps_serving() {
    let Some(gw) = Gw::start(StoreKind::Postgres, |_| {}).await else {
        return;
    };
    gw.account("acct-1", "retail").await;
    let depth = 200_000;
    let open_arrays = "[".repeat(depth);
    let open_objects = r#"{"a":"#.repeat(depth);
    let bodies = [
        format!(r#"{{"shard":{open_arrays}"#),
        format!(r#"{{"shard":{open_objects}"#),
        format!(r#"{{"items":{open_arrays}"#),
        format!("{open_arrays}{}", "]".repeat(depth)),
    ];
    for (i, body) in bodies.iter().enumerate() {
        for (method, path) in [
            ("PUT", "/v1/accounts/acct-1/shards/s"),
            ("POST", "/v1/shards:batchGet"),
            ("PUT", "/v1/accounts/acct-2"),
        ] {
            // Refused, not parsed to the bottom (that would overflow the stack and abort the
            // test process); how fast is the bench's business.
            let r = gw
                .call(
                    method,
                    path,
                    Some(gw.admin()),
                    &[],
                    Some(body.clone().into_bytes()),
                )
                .await;
            assert_eq!(
                (r.status, r.code()),
                (StatusCode::BAD_REQUEST, "invalid_request"),
                "body {i} {method} {path}"
            );
        }
    }
    assert_eq!(gw.db.count("SELECT COUNT(*) FROM shard_versions").await, 0);
    assert_eq!(gw.db.count("SELECT COUNT(*) FROM accounts").await, 1);
    gw.put("acct-1", "s", b"still serving").await;
}

// ------------------------------------------------------------------------------------------
// The real server: raw TCP
// ------------------------------------------------------------------------------------------

struct Server {
    addr: std::net::SocketAddr,
    gw: Gw,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(tweak: impl FnOnce(&mut Config)) -> Option<Server> {
    let gw = Gw::start(StoreKind::Postgres, |cfg| {
        cfg.timeouts.header_read_ms = 500;
        cfg.timeouts.body_read_ms = 500;
        cfg.timeouts.request_ms = 2000;
        tweak(cfg);
    })
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (app, timeouts) = (gw.app.clone(), gw.cfg.timeouts.clone());
    tokio::spawn(async move {
        shardgate::http::server::serve(listener, app, &timeouts, async {
            let _ = rx.await;
        })
        .await;
    });
    Some(Server {
        addr,
        gw,
        _stop: tx,
    })
}

/// Read until EOF, an error or `limit`; what arrived and whether the connection ended.
async fn read_until_closed(s: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> (String, bool) {
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut chunk)).await
        {
            Err(_) => return (String::from_utf8_lossy(&buf).into(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&buf).into(), true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_before_they_end() {
    let Some(srv) = serve(|_| {}).await else {
        return;
    };
    srv.gw.account("acct-1", "retail").await;
    let limit = srv.gw.cfg.limits.max_body_bytes;
    let head = |framing: &str| {
        format!(
            "PUT /v1/accounts/acct-1/shards/s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n{framing}\r\n",
            srv.gw.admin()
        )
    };

    // A declared length over the limit: refused from the head alone, no body sent at all.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(head(&format!("Content-Length: {}\r\n", 64 * limit)).as_bytes())
        .await
        .unwrap();
    let (resp, _) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp:?}");
    assert!(resp.contains("payload_too_large"));

    // Chunked, no length, and it never ends: the answer comes once the limit is passed,
    // while the client is still sending.
    let s = TcpStream::connect(srv.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(head("Transfer-Encoding: chunked\r\n").as_bytes())
        .await
        .unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let chunk = vec![b' '; 64 * 1024];
            wr.write_all(b"1\r\n{\r\n").await.ok();
            // Bounded: at most 64 times the limit.
            while sent.load(std::sync::atomic::Ordering::Relaxed) < 64 * limit {
                let framed =
                    [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                if wr.write_all(&framed).await.is_err() {
                    break;
                }
                sent.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let (resp, _) = read_until_closed(&mut rd, Duration::from_secs(10)).await;
    let sent_when_answered = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp:?}");
    assert!(resp.contains("payload_too_large"));
    assert!(
        sent_when_answered < 16 * limit,
        "answered only after {sent_when_answered} bytes"
    );
    writer.abort();
    assert_eq!(
        srv.gw.db.count("SELECT COUNT(*) FROM shard_versions").await,
        0
    );
    // The server is fine.
    let r = reqwest::get(format!("http://{}/healthz", srv.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A chunked body that never ends (no last chunk) and keeps coming, a chunk every 150 ms
/// (no idle timer could end it), is answered 400 `invalid_request` while it still trickles:
/// the body-read timer ended it (the whole-request deadline would answer 504).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_chunked_body_is_cut_off_by_the_body_read_timeout() {
    let Some(srv) = serve(|_| {}).await else {
        return;
    };
    let s = TcpStream::connect(srv.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = format!(
        "PUT /v1/accounts/acct-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"tie\r\n",
        srv.gw.admin()
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..1000 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            if wr.write_all(b"1\r\n \r\n").await.is_err() {
                return;
            }
        }
        panic!("the whole trickle was sent without an answer");
    });
    let (resp, _) = read_until_closed(&mut rd, Duration::from_secs(30)).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp:?}");
    assert!(resp.contains("invalid_request"));
    trickle.abort();
    assert_eq!(srv.gw.db.count("SELECT COUNT(*) FROM accounts").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_slowloris_connections_do_not_starve_real_requests() {
    // A header-read timeout long enough that the slow heads are surely still open while the
    // real requests are served (checked below, instead of timing the real requests).
    let Some(srv) = serve(|c| c.timeouts.header_read_ms = 3000).await else {
        return;
    };
    // 64 connections, each with half a request head, then nothing.
    let mut lorises = Vec::new();
    for _ in 0..64 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /v1/accounts/acct-1 HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        lorises.push(s);
    }
    // Real requests are served meanwhile...
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let r = client
            .put(format!("http://{}/v1/accounts/acct-1", srv.addr))
            .bearer_auth(srv.gw.admin())
            .json(&json!({"tier":"retail"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    // ...while every slow head is still held open (nothing to read, not closed): they were
    // served beside the lorises, not after them.
    let mut buf = [0u8; 64];
    for s in &lorises {
        let e = s
            .try_read(&mut buf)
            .expect_err("a slow head answered or closed early");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    }
    // And every slow head is then cut off by the header-read timeout.
    for mut s in lorises {
        let (resp, closed) = read_until_closed(&mut s, Duration::from_secs(30)).await;
        assert!(closed, "a slow head was kept open");
        assert!(!resp.contains("acct-1\""), "{resp:?}");
    }
}

// ------------------------------------------------------------------------------------------
// Floods
// ------------------------------------------------------------------------------------------

/// One identity floods (as fast as the test can send, whatever headers claim about its
/// address) until 20 of its requests were refused 429 `rate_limited` with `Retry-After`:
/// its full bucket answered at least `burst`, and no more than the bucket holds plus what it
/// refilled while the flood ran; another identity at its own pace is never limited; a
/// limited write stores nothing; past `Retry-After` the identity is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_identity_is_rate_limited_and_others_are_not() {
    // One request a second: any flood the test sends is faster than that.
    let (rate, burst) = (1u32, 5u32);
    let Some(gw) = Gw::start(StoreKind::Postgres, |cfg| {
        cfg.limits.rate_per_identity_per_sec = rate;
        cfg.limits.rate_per_identity_burst = burst;
    })
    .await
    else {
        return;
    };
    // Set-up uses the admin's bucket, not the two below.
    gw.account("acct-A1", "retail").await;
    let a1 = secret(32, 70);
    gw.put("acct-A1", "s", &a1).await;
    let prefixed = gw.tokens.prefixed.clone();
    let reader = gw.tokens.reader.clone();

    // The prefixed identity floods, from "different clients" as far as headers go, until it
    // has been limited 20 times (a wait that must end: 30 s).
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    let (mut ok, mut limited, mut i) = (0usize, 0usize, 0usize);
    while limited < 20 {
        assert!(
            Instant::now() < deadline,
            "{ok} answered, only {limited} limited"
        );
        let xff = format!("10.0.0.{i}");
        let headers = [
            ("x-forwarded-for", xff.as_str()),
            ("forwarded", "for=192.0.2.1"),
        ];
        let r = gw
            .call(
                "GET",
                "/v1/accounts/acct-A1/shards/s",
                Some(&prefixed),
                &headers,
                None,
            )
            .await;
        match r.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                assert_eq!(r.code(), "rate_limited");
                let retry: u64 = r.headers[header::RETRY_AFTER]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&retry));
                assert!(r.json.get("shard").is_none() && !r.text.contains(&B64.encode(&a1)));
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
        // Meanwhile another identity, at a normal pace, is never limited.
        if i % 10 == 0 {
            let r = gw
                .call(
                    "GET",
                    "/v1/accounts/acct-A1/shards/s",
                    Some(&reader),
                    &[],
                    None,
                )
                .await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "the reader was limited by the flood"
            );
        }
        i += 1;
    }
    // The limiter's contract, whatever the pace: the full bucket, plus what it refilled at
    // `rate` while the flood ran (measured around the whole flood, so a slow run only
    // allows more, never fails).
    let flood_secs = started.elapsed().as_secs_f64();
    let allowed = f64::from(burst) + f64::from(rate) * flood_secs + 1.0;
    assert!(
        ok >= burst as usize && (ok as f64) <= allowed,
        "{ok} answered in {flood_secs:.2} s"
    );
    assert_eq!(ok + limited, i);
    // Writes are limited the same way, and a limited write stores nothing.
    let before = gw.db.count("SELECT COUNT(*) FROM shard_versions").await;
    let r = gw
        .call(
            "PUT",
            "/v1/accounts/acct-A1/shards/s",
            Some(&prefixed),
            &[],
            Some(json!({"shard":"aGk="}).to_string().into_bytes()),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert_eq!(
        gw.db.count("SELECT COUNT(*) FROM shard_versions").await,
        before
    );
    // Past Retry-After, the identity is served again (waiting what the answer asks for is
    // the behaviour under test, not a guess at how long something takes).
    let retry_after: u64 = r.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let r = gw
        .call(
            "GET",
            "/v1/accounts/acct-A1/shards/s",
            Some(&prefixed),
            &[],
            None,
        )
        .await;
    assert_eq!((r.status, decoded(&r)), (StatusCode::OK, a1));
    // Unauthenticated requests are refused by authentication, not counted against anyone.
    let r = gw
        .call(
            "GET",
            "/v1/accounts/acct-A1/shards/s",
            Some("sgt_wrong"),
            &[("x-identity", "prefixed")],
            None,
        )
        .await;
    assert_eq!(r.code(), "unauthenticated");
}

// ------------------------------------------------------------------------------------------
// Unauthenticated floods (issue 25): a child gateway, its real log
// ------------------------------------------------------------------------------------------

/// `shardgate serve --config FILE` as a child process, logging as in production (no
/// `RUST_LOG`: the default `info`, text) to `gateway.stderr.log` in `logs`; killed on drop.
struct ChildGateway {
    child: std::process::Child,
    base: String,
    log: std::path::PathBuf,
}

impl Drop for ChildGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_gateway(config: &std::path::Path, logs: &std::path::Path) -> ChildGateway {
    use std::io::{BufRead, BufReader, Write};
    let mut cmd = std::process::Command::new(common::shardgate_bin());
    cmd.args(["serve", "--config", config.to_str().unwrap()]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SHARDGATE_") {
            cmd.env_remove(k);
        }
    }
    let log = logs.join("gateway.stderr.log");
    let mut child = cmd
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let out_log = logs.join("gateway.stdout.log");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut f = std::fs::File::create(out_log).unwrap();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(f, "{line}");
            if let Some(addr) = line.strip_prefix("shardgate listening on ") {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the gateway did not start");
    ChildGateway { child, base, log }
}

/// Poll `cond` until it holds or a generous deadline passes.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request target of exactly `len` bytes on a shard route.
fn target_of(len: usize) -> String {
    let p = "/v1/accounts/acct-1/shards/";
    format!("{p}{}", "x".repeat(len - p.len()))
}

async fn an_unauthenticated_flood_costs_bounded_audit_rows_and_log_bytes(kind: StoreKind) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = common::store_url(kind, dir.path()).await else {
        return;
    };
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    let (budget, window) = (5u64, 5u64);
    cfg.limits.refusals_per_peer = budget as u32;
    cfg.limits.refusal_window_secs = window;
    // What this test counts is rows and bytes; holding answers back is the next test's.
    cfg.limits.refusal_delay_ms = 0;
    cfg.breaker.probe_interval_ms = 0;
    let config = dir.path().join("shardgate.toml");
    common::write_config(&cfg, &config);
    let gw = spawn_gateway(&config, &common::log_dir(&format!("flood_{kind:?}")));
    let client = reqwest::Client::new();
    let admin = tokens.admin.clone();
    let r = client
        .put(format!("{}/v1/accounts/acct-1", gw.base))
        .bearer_auth(&admin)
        .json(&json!({"tier": "retail"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let shard = B64.encode(secret(32, 41));
    common::plant(&shard);
    let r = client
        .put(format!("{}/v1/accounts/acct-1/shards/s", gw.base))
        .bearer_auth(&admin)
        .json(&json!({"shard": shard}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let db = Db::connect(&url).await;
    let auth_rows = "SELECT COUNT(*) FROM audit_events WHERE action = 'auth'";
    let rows_before = db.count(auth_rows).await;
    let log_before = std::fs::metadata(&gw.log).unwrap().len();

    // Over-long targets: 414 before authentication, audit or logging. Up to 65534 bytes the
    // gateway's JSON answer; past it hyper's own bare 414.
    let max = cfg.limits.max_uri_bytes;
    for len in [max + 1, 60 * 1024] {
        let r = client
            .get(format!("{}{}", gw.base, target_of(len)))
            .bearer_auth("sgt_wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 414, "{len} bytes");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "uri_too_long");
    }
    // (No HTTP client builds a URI this long: raw TCP.)
    let addr = gw.base.trim_start_matches("http://").to_string();
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    let head = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", target_of(70_000));
    raw.write_all(head.as_bytes()).await.unwrap();
    let (resp, _) = read_until_closed(&mut raw, Duration::from_secs(30)).await;
    assert!(
        resp.starts_with("HTTP/1.1 414"),
        "{:?}",
        &resp[..resp.len().min(200)]
    );
    assert_eq!(db.count(auth_rows).await, rows_before);

    // The flood: bad tokens on targets of exactly the cap, 16 at a time; every 25th request
    // of each worker is a valid token's read from the same address.
    let long = format!("{}{}", gw.base, target_of(max));
    let read = format!("{}/v1/accounts/acct-1/shards/s", gw.base);
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..16 {
        let (client, long, read, admin) =
            (client.clone(), long.clone(), read.clone(), admin.clone());
        workers.push(tokio::spawn(async move {
            let (mut refused, mut limited, mut served) = (0u64, 0u64, 0u64);
            for i in 0..125 {
                if i % 25 == 24 {
                    let r = client.get(&read).bearer_auth(&admin).send().await.unwrap();
                    assert_eq!(r.status(), 200, "a valid token was not served in the flood");
                    served += 1;
                    continue;
                }
                let r = client
                    .get(&long)
                    .bearer_auth(format!("sgt_wrong_{w}_{i}"))
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    401 => refused += 1,
                    429 => {
                        let retry: u64 = r.headers()["retry-after"]
                            .to_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        assert!((1..=window).contains(&retry), "Retry-After {retry}");
                        let body: Value = r.json().await.unwrap();
                        assert_eq!(body["error"]["code"], "rate_limited");
                        limited += 1;
                    }
                    other => panic!("unexpected {other}"),
                }
            }
            (refused, limited, served)
        }));
    }
    let (mut refused, mut limited, mut served) = (0, 0, 0);
    for w in workers {
        let (a, b, c) = w.await.unwrap();
        refused += a;
        limited += b;
        served += c;
    }
    // Windows the flood touched (its duration only widens the bound; nothing is timed).
    let windows = started.elapsed().as_secs() / window + 2;
    assert_eq!(refused + limited + served, 2000);
    assert!(limited > 0, "the refusal budget never ran out");
    assert!(
        refused <= budget * windows,
        "{refused} refusals audited one by one"
    );

    // One aggregated event per address and window that went past its budget.
    eventually("the aggregated refusal event", || async {
        db.count(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'auth' AND outcome = 'rate_limited'",
        )
        .await
            > 0
    })
    .await;
    let aggregated = db
        .count("SELECT COUNT(*) FROM audit_events WHERE action = 'auth' AND outcome = 'rate_limited' AND detail LIKE '% refusals from 127.0.0.1 in 5 s%'")
        .await;
    assert!(aggregated >= 1 && aggregated as u64 <= windows);
    let rows = (db.count(auth_rows).await - rows_before) as u64;
    assert!(
        rows <= (budget + 1) * windows,
        "{rows} audit rows for a flood of {} refused requests",
        refused + limited
    );
    // Each detail is bounded, however long the path.
    let longest = db
        .count("SELECT CAST(COALESCE(MAX(LENGTH(detail)), 0) AS BIGINT) FROM audit_events")
        .await;
    assert!(longest <= 1024, "an audit detail of {longest} bytes");

    // The log: a bounded line per audited refusal and per valid read, one per window past
    // the budget; no line anywhere near the path's size.
    let log = std::fs::read_to_string(&gw.log).unwrap();
    let grown = log.len() as u64 - log_before;
    let lines_allowed = rows + served + 2 * windows + 20;
    assert!(
        grown <= lines_allowed * 2048,
        "the log grew {grown} bytes during the flood ({lines_allowed} lines allowed)"
    );
    let widest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(widest <= 2048, "a log line of {widest} bytes");
    assert!(
        !log.contains(&"x".repeat(300)),
        "a long path reached the log"
    );
}

/// The value of one unlabelled series in a /metrics text (0 when absent).
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// An answer past the address's refusal budget is held back (`refusal_delay_ms`, here far
/// longer than the test), at most `max_delayed_refusals` at once: with the one slot taken, the
/// next one (an over-long target's 414, which charges the same budget) is sent at once and
/// closes its connection, while a valid token from the same address is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_past_the_refusal_budget_are_held_back_and_close_when_no_slot_is_free() {
    let Some(srv) = serve(|cfg| {
        cfg.timeouts.request_ms = 120_000;
        cfg.limits.refusals_per_peer = 1;
        cfg.limits.refusal_window_secs = 600;
        cfg.limits.refusal_delay_ms = 60_000;
        cfg.limits.max_delayed_refusals = 1;
    })
    .await
    else {
        return;
    };
    let admin = srv.gw.tokens.admin.clone();
    let base = format!("http://{}", srv.addr);
    let client = reqwest::Client::new();
    let bad = |path: &str| {
        client
            .get(format!("{base}{path}"))
            .bearer_auth("sgt_wrong")
            .send()
    };
    // Within the budget: a 401 at once.
    assert_eq!(
        bad("/v1/accounts/acct-1/shards/s").await.unwrap().status(),
        401
    );
    // Past it: the 429 is held (nothing arrives while the slot is taken).
    let mut held = TcpStream::connect(srv.addr).await.unwrap();
    let head = "GET /v1/accounts/acct-1/shards/s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sgt_wrong\r\n\r\n";
    held.write_all(head.as_bytes()).await.unwrap();
    eventually("the answer past the budget to be held", || async {
        series(
            &common::scrape(&srv.gw.app, &admin).await,
            "shardgate_refusals_held",
        ) == 1.0
    })
    .await;
    // The slot is taken: an over-long target past the budget is answered at once, closing.
    let mut other = TcpStream::connect(srv.addr).await.unwrap();
    let long = target_of(srv.gw.cfg.limits.max_uri_bytes + 1);
    let head2 = format!("GET {long} HTTP/1.1\r\nHost: x\r\n\r\n");
    other.write_all(head2.as_bytes()).await.unwrap();
    let (resp, closed) = read_until_closed(&mut other, Duration::from_secs(30)).await;
    assert!(
        resp.starts_with("HTTP/1.1 414"),
        "{:?}",
        &resp[..resp.len().min(200)]
    );
    assert!(
        resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
    assert!(closed, "the connection stayed open");
    // A valid token from the same address is served while the refusal is held.
    let r = client
        .get(format!("{base}/v1/accounts/acct-1/shards/nope"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 429);
    assert_ne!(r.status(), 401);
    // ...and the held answer still has not been sent (a real read: nothing has arrived).
    let mut held = held.into_std().unwrap();
    let mut buf = [0u8; 64];
    match std::io::Read::read(&mut held, &mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the held answer arrived early: {other:?}"),
    }
    let text = common::scrape(&srv.gw.app, &admin).await;
    assert_eq!(
        series(&text, "shardgate_refusals_closed_total"),
        1.0,
        "{text}"
    );
    assert_eq!(series(&text, "shardgate_refusals_held"), 1.0);
}

/// Refusals are detached audit events on a queue of their own: a flood of them (in-process,
/// so without an address and without a refusal budget) never takes a read's place in the
/// audit queue. With the reads' queue this small, sharing it answered reads 503.
async fn refusals_never_crowd_reads_out_of_the_audit_queue(kind: StoreKind) {
    let Some(gw) = Gw::start(kind, |cfg| cfg.audit.queue_capacity = 8).await else {
        return;
    };
    gw.account("acct-1", "retail").await;
    let a1 = secret(32, 43);
    gw.put("acct-1", "s", &a1).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut flooders = Vec::new();
    for _ in 0..4 {
        let (app, stop, sent) = (gw.app.clone(), stop.clone(), sent.clone());
        flooders.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = Request::get("/v1/accounts/acct-1/shards/s")
                    .header(header::AUTHORIZATION, "Bearer sgt_wrong")
                    .body(Body::empty())
                    .unwrap();
                let resp = app.clone().oneshot(req).await.unwrap();
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // A refusal never waits for anything: let the other tasks run.
                tokio::task::yield_now().await;
            }
        }));
    }
    eventually("the flood to start", || async {
        sent.load(std::sync::atomic::Ordering::Relaxed) >= 500
    })
    .await;
    let reads_start = sent.load(std::sync::atomic::Ordering::Relaxed);
    let mut readers = Vec::new();
    for _ in 0..4 {
        let app = gw.app.clone();
        let token = gw.admin().to_string();
        readers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..50 {
                let req = Request::get("/v1/accounts/acct-1/shards/s")
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(Body::empty())
                    .unwrap();
                statuses.push(app.clone().oneshot(req).await.unwrap().status());
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for r in readers {
        statuses.extend(r.await.unwrap());
    }
    let during = sent.load(std::sync::atomic::Ordering::Relaxed) - reads_start;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        f.await.unwrap();
    }
    assert!(during > 0, "no refusal ran alongside the reads");
    let failed: Vec<_> = statuses.iter().filter(|s| **s != StatusCode::OK).collect();
    assert!(
        failed.is_empty(),
        "reads refused during the flood: {failed:?}"
    );
    // The reads' events are all there.
    assert_eq!(gw.audited("shard.get", "acct-1", "s", "ok").await, 200);
}

/// Two tokens with the same (default) name are two callers: each has its own rate-limit
/// bucket and its own `Idempotency-Key` space.
async fn tokens_sharing_a_name_share_neither_bucket_nor_idempotency_keys(kind: StoreKind) {
    let (t1, t2) = (
        secrecy::ExposeSecret::expose_secret(&shardgate::domain::auth::generate_token())
            .to_string(),
        secrecy::ExposeSecret::expose_secret(&shardgate::domain::auth::generate_token())
            .to_string(),
    );
    common::plant(&t1);
    common::plant(&t2);
    let Some(gw) = Gw::start(kind, |cfg| {
        cfg.limits.rate_per_identity_per_sec = 1;
        cfg.limits.rate_per_identity_burst = 4;
        for t in [&t1, &t2] {
            cfg.tokens.push(shardgate::app::config::TokenConfig {
                name: "token".into(),
                sha256: shardgate::domain::auth::hash_token(t),
                scopes: vec!["*".into()],
                account_prefix: None,
                expires_at: None,
            });
        }
    })
    .await
    else {
        return;
    };
    gw.account("acct-1", "retail").await;
    let body = json!({"shard": B64.encode(secret(16, 44))}).to_string();
    async fn put(gw: &Gw, token: &str, body: &str) -> Resp {
        gw.call(
            "PUT",
            "/v1/accounts/acct-1/shards/s",
            Some(token),
            &[("idempotency-key", "same-key-1")],
            Some(body.as_bytes().to_vec()),
        )
        .await
    }
    let first = put(&gw, &t1, &body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    // The other token's request with the same key is its own write, not t1's answer.
    let other = put(&gw, &t2, &body).await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.text);
    assert_eq!(
        (
            first.json["version"].as_i64(),
            other.json["version"].as_i64()
        ),
        (Some(1), Some(2))
    );
    // t1 floods; t2, between its requests, is served.
    let (mut limited, mut t2_served) = (0, 0);
    for i in 0..60 {
        let r = gw
            .call("GET", "/v1/accounts/acct-1/shards/s", Some(&t1), &[], None)
            .await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        }
        if i % 20 == 19 {
            let r = gw
                .call("GET", "/v1/accounts/acct-1/shards/s", Some(&t2), &[], None)
                .await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "t2 limited by t1's flood: {}",
                r.text
            );
            t2_served += 1;
        }
    }
    assert!(limited > 0, "t1 was never limited");
    assert_eq!(t2_served, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_wait_until_one_closes() {
    let Some(gw) = Gw::start(StoreKind::Sqlite, |_| {}).await else {
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (app, timeouts) = (gw.app.clone(), gw.cfg.timeouts.clone());
    tokio::spawn(async move {
        shardgate::http::server::serve_with_tls(listener, app, &timeouts, 2, None, async {
            let _ = rx.await;
        })
        .await;
    });
    let get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    // Reads a response head (or whatever arrived by `limit`).
    async fn head(s: &mut TcpStream, limit: Duration) -> String {
        let start = Instant::now();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&buf).contains("\r\n\r\n") {
            match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut chunk))
                .await
            {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
    // Two keep-alive connections fill the cap; both are served.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(get).await.unwrap();
        assert!(head(&mut s, Duration::from_secs(30))
            .await
            .starts_with("HTTP/1.1 200"));
        open.push(s);
    }
    // A third connects (the kernel's backlog) but is not served while both stay open...
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(get).await.unwrap();
    assert_eq!(head(&mut third, Duration::from_secs(1)).await, "");
    // ...and is served once one of them closes.
    drop(open.remove(0));
    assert!(head(&mut third, Duration::from_secs(30))
        .await
        .starts_with("HTTP/1.1 200"));
    // The one still open is served as before.
    open[0].write_all(get).await.unwrap();
    assert!(head(&mut open[0], Duration::from_secs(30))
        .await
        .starts_with("HTTP/1.1 200"));
    drop(tx);
}

// ------------------------------------------------------------------------------------------
// Regressions found by the fuzzers (fuzz/)
// ------------------------------------------------------------------------------------------

/// Found by `fuzz/open_row` (its input is kept in `fuzz/seeds/open_row/`): `open_with`
/// panicked in `Nonce::from_slice` on a stored nonce that is not 12 bytes. The routes check
/// the length first (`wrapped_of`); `open_with` no longer relies on it.
#[test]
fn open_with_refuses_a_nonce_of_the_wrong_length_without_panicking() {
    let key = shardgate_backends::DataKey::from_slice(&[7u8; 32]).unwrap();
    for len in [0, 1, 11, 13, 64] {
        let row = shardgate_store::ShardVersionRow {
            account: "acct-1".into(),
            shard: "s".into(),
            version: shardgate_store::Version::FIRST,
            format_version: 1,
            backend: "local".into(),
            key_ref: "k".into(),
            key_version: 1,
            wrapped_dek: vec![0; 60],
            nonce: vec![0; len],
            ciphertext: vec![0; 32],
            created_at: 0,
            created_by: "t".into(),
            key_commitment: None,
        };
        assert_eq!(
            shardgate::domain::envelope::open_with(&key, &row).unwrap_err(),
            shardgate_backends::BackendError::Integrity,
            "nonce of {len} bytes"
        );
    }
}

//! Token lifecycle on both stores: tokens kept in the database and revocations take effect
//! on every replica without a restart (reload on an interval, at once on SIGHUP); expired
//! and revoked tokens answer 401 and are audited under their credential id, an HMAC of the
//! token id that the audit log records instead of the id itself. Ids are checked against
//! fixed vectors computed outside shardgate (`common::vectors`), under the vectors' audit key.
//! A reload that fails (the real binary, on SIGHUP) keeps the previous snapshot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;

use axum::body::Body;
use axum::http::{header, Request};
use common::db::Db;
use common::vectors as v;
use common::{StoreKind, Tokens};
use secrecy::ExposeSecret;
use serde_json::Value;
use shardgate::cli::token_admin;
use shardgate::domain::auth::{credential_id, generate_token, hash_token, token_id};
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// Two replicas of one deployment: two gateway states on the same database.
struct Deployment {
    a: shardgate::AppState,
    b: shardgate::AppState,
    cfg: shardgate::app::config::Config,
    tokens: Tokens,
    db: Db,
    _dir: tempfile::TempDir,
}

impl Deployment {
    async fn new(
        kind: StoreKind,
        edit: impl Fn(&mut shardgate::app::config::Config),
    ) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let url = common::store_url(kind, dir.path()).await?;
        let tokens = Tokens::new();
        let mut cfg = common::config(dir.path(), &url, &tokens);
        edit(&mut cfg);
        // The vectors' audit key, so that recorded credential ids can be compared with them.
        let key_file = cfg.audit_key_file();
        std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
        shardgate::domain::files::write_private(
            &key_file,
            format!("{}\n", v::AUDIT_KEY_B64).as_bytes(),
        )
        .unwrap();
        let (a, _) = shardgate::AppState::build(&cfg).await.unwrap();
        let (b, _) = shardgate::AppState::build(&cfg).await.unwrap();
        Some(Self {
            a,
            b,
            cfg,
            tokens,
            db: Db::connect(&url).await,
            _dir: dir,
        })
    }

    fn key(&self) -> shardgate::domain::audit::AuditKey {
        shardgate::app::state::audit_key(&self.cfg).unwrap()
    }

    async fn status(state: &shardgate::AppState, token: &str) -> (u16, Value) {
        let req = Request::builder()
            .uri("/v1/accounts/acct-A1")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let resp = shardgate::router(state.clone()).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Audit events with this actor and action, as (outcome, credential, detail), waiting
    /// for the asynchronous ones.
    async fn audited(&self, actor: &str, action: &str, at_least: usize) -> Vec<[String; 3]> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let rows = self
                .db
                .all_bytes(&format!(
                    "SELECT outcome, COALESCE(credential, '-'), detail FROM audit_events \
                     WHERE actor = '{actor}' AND action = '{action}' ORDER BY ts_ms, seq"
                ))
                .await;
            let events: Vec<[String; 3]> = rows
                .chunks(3)
                .map(|c| {
                    let s = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                    [s(&c[0]), s(&c[1]), s(&c[2])]
                })
                .collect();
            if events.len() >= at_least || Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

both_stores!(
    saved_token_is_accepted_by_every_replica_after_a_reload,
    revoked_config_token_is_refused_everywhere_and_audited,
    expired_tokens_are_refused_and_audited,
    audit_records_the_credential_id_never_the_token_id,
    token_list_shows_state_and_never_a_hash,
);

async fn saved_token_is_accepted_by_every_replica_after_a_reload(kind: StoreKind) {
    let Some(d) = Deployment::new(kind, |c| c.auth.refresh_ms = 100).await else {
        return;
    };
    let t = v::TOKEN;
    let id = token_admin::save(
        d.a.store.as_ref(),
        "signer-7",
        v::TOKEN_SHA256,
        &["accounts:read".to_string()],
        None,
        None,
        shardgate::now_ms(),
    )
    .await
    .unwrap();
    assert_eq!(id, v::TOKEN_ID);
    // Not before a reload: replicas hold a snapshot.
    assert_eq!(Deployment::status(&d.a, t).await.0, 401);
    // Replica A reloads on demand, replica B on its interval: neither restarts.
    d.a.auth.refresh().await.unwrap();
    assert_eq!(Deployment::status(&d.a, t).await.0, 404);
    d.b.start_token_refresh(d.cfg.auth.refresh_every());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Deployment::status(&d.b, t).await.0 == 401 {
        assert!(
            Instant::now() < deadline,
            "replica b never picked up the token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(Deployment::status(&d.b, t).await.0, 404);
    // Its scopes apply: accounts:read only.
    let req = Request::builder()
        .method("PUT")
        .uri("/v1/accounts/acct-A1")
        .header(header::AUTHORIZATION, format!("Bearer {t}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"tier":"retail"}"#))
        .unwrap();
    let resp = shardgate::router(d.b.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    // The same hash cannot be stored twice.
    assert!(token_admin::save(
        d.a.store.as_ref(),
        "again",
        v::TOKEN_SHA256,
        &["*".to_string()],
        None,
        None,
        0
    )
    .await
    .is_err());
}

async fn revoked_config_token_is_refused_everywhere_and_audited(kind: StoreKind) {
    // A reader whose token is the vectors' fixed one.
    let Some(d) = Deployment::new(kind, |c| {
        c.auth.refresh_ms = 100;
        c.tokens.push(shardgate::app::config::TokenConfig {
            name: "vector-reader".into(),
            sha256: v::TOKEN_SHA256.into(),
            scopes: vec!["shards:read".into()],
            account_prefix: None,
            expires_at: None,
        });
    })
    .await
    else {
        return;
    };
    d.b.start_token_refresh(d.cfg.auth.refresh_every());
    let reader = v::TOKEN;
    let id = v::TOKEN_ID;
    assert_eq!(Deployment::status(&d.a, reader).await.0, 403);
    assert!(matches!(
        token_admin::revoke(&d.cfg, d.a.store.as_ref(), "ffffffffffffffff", "x", 1).await,
        Err(token_admin::TokenAdminError::UnknownId(_))
    ));
    assert!(
        token_admin::revoke(&d.cfg, d.a.store.as_ref(), id, "left the team", 1)
            .await
            .unwrap()
    );
    // Idempotent: a second revocation changes nothing.
    assert!(
        !token_admin::revoke(&d.cfg, d.a.store.as_ref(), id, "again", 2)
            .await
            .unwrap()
    );
    d.a.auth.refresh().await.unwrap();
    let (status, body) = Deployment::status(&d.a, reader).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert_eq!(message(&body), "bearer token revoked");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Deployment::status(&d.b, reader).await.0 != 401 {
        assert!(
            Instant::now() < deadline,
            "replica b still accepts a revoked token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Other identities are unaffected.
    assert_eq!(Deployment::status(&d.a, &d.tokens.admin).await.0, 404);
    let events = d.audited("vector-reader", "auth", 2).await;
    assert!(events.len() >= 2, "{events:?}");
    for [outcome, credential, detail] in &events {
        assert_eq!(outcome, "unauthenticated");
        assert_eq!(credential, v::CREDENTIAL_ID);
        assert!(detail.contains("revoked"), "{detail}");
    }
}

async fn expired_tokens_are_refused_and_audited(kind: StoreKind) {
    let current = generate_token();
    let (e, c) = (v::TOKEN.to_string(), current.expose_secret().to_string());
    let Some(d) = Deployment::new(kind, |cfg| {
        for (name, token, at) in [
            ("old-signer", &e, "2020-01-01T00:00:00Z"),
            ("new-signer", &c, "2999-01-01T00:00:00Z"),
        ] {
            cfg.tokens.push(shardgate::app::config::TokenConfig {
                name: name.into(),
                sha256: hash_token(token),
                scopes: vec!["*".into()],
                account_prefix: None,
                expires_at: Some(at.into()),
            });
        }
    })
    .await
    else {
        return;
    };
    let (status, body) = Deployment::status(&d.a, &e).await;
    assert_eq!(status, 401);
    assert_eq!(message(&body), "bearer token expired");
    assert_eq!(Deployment::status(&d.a, &c).await.0, 404);
    // A database token past its expiry, too.
    let stored = generate_token();
    let s = stored.expose_secret();
    token_admin::save(
        d.a.store.as_ref(),
        "short-lived",
        &hash_token(s),
        &["*".to_string()],
        None,
        Some(shardgate::now_ms() - 1),
        shardgate::now_ms() - 10,
    )
    .await
    .unwrap();
    d.a.auth.refresh().await.unwrap();
    assert_eq!(Deployment::status(&d.a, s).await.0, 401);
    let events = d.audited("old-signer", "auth", 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0][0], "unauthenticated");
    assert_eq!(events[0][1], v::CREDENTIAL_ID);
    assert!(events[0][2].contains("expired"));
    assert_eq!(d.audited("short-lived", "auth", 1).await.len(), 1);
}

async fn audit_records_the_credential_id_never_the_token_id(kind: StoreKind) {
    let Some(d) = Deployment::new(kind, |_| {}).await else {
        return;
    };
    let admin = d.tokens.admin.clone();
    let id = token_id(&hash_token(&admin));
    let req = Request::builder()
        .method("PUT")
        .uri("/v1/accounts/acct-A1")
        .header(header::AUTHORIZATION, format!("Bearer {admin}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"tier":"retail"}"#))
        .unwrap();
    let resp = shardgate::router(d.a.clone()).oneshot(req).await.unwrap();
    assert!(resp.status().is_success());
    let events = d.audited("admin", "account.put", 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0][1], credential_id(&d.key(), &id));
    // A guessed token is audited under its own credential id, as `anonymous`.
    let (status, _) = Deployment::status(&d.a, v::GUESSED_TOKEN).await;
    assert_eq!(status, 401);
    let anon = d.audited("anonymous", "auth", 1).await;
    assert!(
        anon.iter().any(|e| e[1] == v::GUESSED_CREDENTIAL_ID),
        "{anon:?}"
    );
    // No column of the audit table holds a token id or a token hash.
    let all = d.db.all_bytes("SELECT * FROM audit_events").await;
    let hash = hash_token(&admin);
    for cell in &all {
        assert!(!common::db::contains(cell, id.as_bytes()));
        assert!(!common::db::contains(cell, hash.as_bytes()));
        assert!(!common::db::contains(cell, admin.as_bytes()));
    }
    // Events with and without a credential verify in one chain.
    let report = shardgate::domain::audit::verify(d.a.store.as_ref(), &d.key())
        .await
        .unwrap();
    assert!(report.events >= 2);
    // Tampering with a credential breaks the chain.
    d.db.exec("UPDATE audit_events SET credential = 'deadbeef' WHERE action = 'account.put'")
        .await;
    assert!(
        shardgate::domain::audit::verify(d.a.store.as_ref(), &d.key())
            .await
            .is_err()
    );
}

async fn token_list_shows_state_and_never_a_hash(kind: StoreKind) {
    let Some(d) = Deployment::new(kind, |_| {}).await else {
        return;
    };
    let stored = generate_token();
    let sha = hash_token(stored.expose_secret());
    let id = token_admin::save(
        d.a.store.as_ref(),
        "ci",
        &sha,
        &["shards:read".to_string()],
        Some("acct-".into()),
        Some(4_102_444_800_000),
        shardgate::now_ms(),
    )
    .await
    .unwrap();
    let reader_id = token_id(&hash_token(&d.tokens.reader));
    token_admin::revoke(&d.cfg, d.a.store.as_ref(), &reader_id, "x", 5)
        .await
        .unwrap();
    let listed = token_admin::list(&d.cfg, d.a.store.as_ref()).await.unwrap();
    let ci = listed.iter().find(|l| l.id == id).unwrap();
    assert_eq!(ci.source, token_admin::Source::Database);
    assert_eq!(ci.account_prefix.as_deref(), Some("acct-"));
    assert_eq!(ci.expires_ms, Some(4_102_444_800_000));
    assert_eq!(ci.revoked_ms, None);
    let reader = listed.iter().find(|l| l.id == reader_id).unwrap();
    assert_eq!(reader.source, token_admin::Source::Config);
    assert_eq!(reader.revoked_ms, Some(5));
    assert!(!format!("{listed:?}").contains(&sha));
}

/// The real binary: `token create --save`, `token revoke` and `audit credential-id` against
/// a running gateway that reloads only on SIGHUP (`refresh_ms = 0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tokens_take_effect_on_sighup_without_a_restart() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = common::store_url(StoreKind::Sqlite, dir.path()).await else {
        return;
    };
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    cfg.auth.refresh_ms = 0;
    let config = dir.path().join("shardgate.toml");
    common::write_config(&cfg, &config);
    let cfg_arg = config.to_str().unwrap();
    let logs = common::log_dir("token_lifecycle");
    let mut child = Command::new(common::shardgate_bin())
        .args(["serve", "--config", cfg_arg])
        .stdout(Stdio::piped())
        .stderr(common::child_log(&logs, "serve.stderr.log"))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("shardgate listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let base = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(common::shardgate_bin())
            .args(args)
            .args(["--config", cfg_arg])
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let created = cli(&[
        "token", "create", "--save", "--name", "ops", "--scopes", "*",
    ]);
    let token = created
        .lines()
        .find(|l| l.starts_with(shardgate::domain::auth::TOKEN_PREFIX))
        .unwrap()
        .to_string();
    let id = token_id(&hash_token(&token));
    assert!(created.contains(&id));
    let client = reqwest::Client::new();
    let get = |t: String| {
        let client = client.clone();
        let base = base.clone();
        async move {
            client
                .get(format!("{base}/v1/accounts/acct-x"))
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let until = |want: u16, t: String| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = get(t.clone()).await;
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "still {got}, want {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // refresh_ms = 0: nothing changes until SIGHUP.
    assert_eq!(get(token.clone()).await, 401);
    hup();
    until(404, token.clone()).await;
    let listed = cli(&["token", "list"]);
    assert!(listed
        .lines()
        .any(|l| l.starts_with(&id) && l.contains("active")));
    assert!(!listed.contains(&hash_token(&token)));
    cli(&["token", "revoke", &id, "--reason", "test"]);
    assert_eq!(get(token.clone()).await, 404);
    hup();
    until(401, token.clone()).await;
    assert!(cli(&["token", "list"])
        .lines()
        .any(|l| l.starts_with(&id) && l.contains("revoked")));
    // The investigator's value matches what the audit log recorded, from the id or the token.
    let from_id = cli(&["audit", "credential-id", "--token-id", &id]);
    let mut piped = Command::new(common::shardgate_bin())
        .args(["audit", "credential-id", "--config", cfg_arg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        writeln!(piped.stdin.take().unwrap(), "{token}").unwrap();
    }
    let from_token = String::from_utf8(piped.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(from_id.trim(), from_token.trim());
    let db = Db::connect(&url).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while db
        .count(&format!(
            "SELECT COUNT(*) FROM audit_events WHERE actor = 'ops' AND credential = '{}' \
             AND detail LIKE '%revoked%'",
            from_id.trim()
        ))
        .await
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the revoked attempt was not audited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A reload that fails keeps the previous snapshot (docs/operations.md, "Token lifecycle"): on the real binary
/// (SQLite, `refresh_ms = 0`), a token saved and another revoked while the revocations cannot
/// be read change nothing on SIGHUP: the revoked token still authenticates, the new one does
/// not, and the failure is logged as a warning. Once the table is readable again, the next
/// SIGHUP applies both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_token_reload_keeps_the_previous_snapshot_and_logs_a_warning() {
    use common::served::Served;
    use std::process::Command;
    const RELOADED: &str = "tokens reloaded on SIGHUP";
    const FAILED: &str = "token reload failed; the previous tokens and revocations stay in force";
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(StoreKind::Sqlite, dir.path())
        .await
        .unwrap();
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    cfg.auth.refresh_ms = 0;
    cfg.log.format = shardgate::app::config::LogFormat::Json;
    let config = dir.path().join("shardgate.toml");
    common::write_config(&cfg, &config);
    let cfg_arg = config.to_str().unwrap();
    let gw = Served::start(&config, "token_lifecycle", "failed-reload");
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(common::shardgate_bin());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SHARDGATE_") {
                cmd.env_remove(k);
            }
        }
        let out = cmd.args(args).args(["--config", cfg_arg]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let create = |name: &str| {
        let token = cli(&["token", "create", "--save", "--name", name, "--scopes", "*"])
            .lines()
            .find(|l| l.starts_with(shardgate::domain::auth::TOKEN_PREFIX))
            .unwrap()
            .to_string();
        common::plant(&token);
        token
    };
    let client = reqwest::Client::new();
    // 404: authenticated (the account does not exist); 401: not.
    let status = |t: &str| {
        let r = client
            .get(format!("{}/v1/accounts/acct-x", gw.base))
            .bearer_auth(t)
            .send();
        async move { r.await.unwrap().status().as_u16() }
    };

    let old = create("old");
    gw.signal("-HUP");
    gw.wait_logged(RELOADED, 1).await;
    assert_eq!(status(&old).await, 404);

    let new = create("new");
    cli(&[
        "token",
        "revoke",
        &token_id(&hash_token(&old)),
        "--reason",
        "test",
    ]);
    let db = Db::connect(&url).await;
    db.exec("ALTER TABLE token_revocations RENAME TO token_revocations_away")
        .await;
    gw.signal("-HUP");
    let failed = gw.wait_logged(FAILED, 1).await;
    assert_eq!(failed[0]["level"], "WARN", "{}", failed[0]);
    assert_eq!(
        gw.logged(RELOADED).len(),
        1,
        "the failed reload swapped nothing in"
    );
    assert_eq!(
        status(&old).await,
        404,
        "the previous snapshot still accepts it"
    );
    assert_eq!(status(&new).await, 401, "the failed reload added nothing");

    db.exec("ALTER TABLE token_revocations_away RENAME TO token_revocations")
        .await;
    gw.signal("-HUP");
    gw.wait_logged(RELOADED, 2).await;
    assert_eq!(status(&old).await, 401);
    assert_eq!(status(&new).await, 404);
}

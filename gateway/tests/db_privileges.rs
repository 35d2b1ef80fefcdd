//! Database least privilege (docs/security.md, "Database least privilege"), on a private PostgreSQL
//! cluster of each test's own that accepts only TLS connections with SCRAM passwords:
//!
//! - the role layout of scripts/sql/roles.sql and scripts/sql/grants.sql: migrations run by
//!   `shardgate db migrate` as the owner role; a gateway connected as the runtime role
//!   (`[store] migrate = false`) serves every kind of write, while that role's UPDATE, DELETE
//!   and TRUNCATE of audit rows, and any DDL, are refused;
//! - `sslmode=verify-full`: the right CA and host name connect; another CA, another host
//!   name, or no TLS at all are refused;
//! - `[store] password_file`: a private file; a wrong password is refused with an error that
//!   carries no password.
//! - `[store] migrate = false` on the test server's PostgreSQL (no private cluster): the real
//!   binary refuses an unmigrated database and one whose applied migration was edited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::{header, Request, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::cluster::Cluster;
use common::Tokens;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Value};
use shardgate::app::config::Config;
use sqlx::Connection;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

const DB: &str = "shardgate";
const OWNER: &str = "shardgate_owner";
const APP: &str = "shardgate_app";

/// Only TLS, only SCRAM over TCP; the superuser (no password) only over the Unix socket.
const HBA: &str = "\
local     all all              trust
hostnossl all all all          reject
hostssl   all all 127.0.0.1/32 scram-sha-256
hostssl   all all ::1/128      scram-sha-256
";

struct Pg {
    cluster: Cluster,
    dir: tempfile::TempDir,
    /// The CA that signed the server's certificate (for "localhost" only).
    ca: PathBuf,
    /// An unrelated CA.
    other_ca: PathBuf,
    owner_password_file: PathBuf,
    app_password_file: PathBuf,
    app_password: String,
}

fn repo_file(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn secret() -> String {
    let s = format!("pw-{}", uuid::Uuid::new_v4().simple());
    common::plant(&s);
    s
}

impl Pg {
    /// The cluster with TLS on (a server certificate for `localhost` from a CA of this
    /// test), database `shardgate`, the roles of roles.sql with passwords, migrated by
    /// `shardgate db migrate` as the owner role, and (when `grants`) grants.sql applied.
    async fn setup(grants: bool) -> Option<Pg> {
        let mut cluster = Cluster::init()?;
        let dir = tempfile::tempdir().unwrap();

        let ca = new_ca("shardgate test CA");
        let server_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_cert = params.signed_by(&server_key, &ca).unwrap();
        cluster.write("server.crt", server_cert.pem().as_bytes());
        cluster.write("server.key", server_key.serialize_pem().as_bytes());
        cluster.write("pg_hba.conf", HBA.as_bytes());
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let other_ca = dir.path().join("other-ca.pem");
        std::fs::write(&other_ca, new_ca("another CA").pem()).unwrap();
        for s in [
            "ssl=on",
            "ssl_cert_file=server.crt",
            "ssl_key_file=server.key",
            "password_encryption=scram-sha-256",
        ] {
            cluster.set(s);
        }
        cluster.up();

        cluster.psql("postgres", &[], &format!("CREATE DATABASE {DB};"));
        // The operator's script, as docs/security.md runs it (its defaults are OWNER and APP).
        cluster.psql(DB, &[], &repo_file("scripts/sql/roles.sql"));
        let owner_password = secret();
        let app_password = secret();
        cluster.psql(
            DB,
            &[],
            &format!(
                "ALTER ROLE {OWNER} PASSWORD '{owner_password}';\n\
                 ALTER ROLE {APP} PASSWORD '{app_password}';\n"
            ),
        );
        let owner_password_file = dir.path().join("owner.password");
        shardgate::domain::files::write_private(&owner_password_file, owner_password.as_bytes())
            .unwrap();
        // With the trailing newline an editor leaves.
        let app_password_file = dir.path().join("app.password");
        shardgate::domain::files::write_private(
            &app_password_file,
            format!("{app_password}\n").as_bytes(),
        )
        .unwrap();

        let pg = Pg {
            cluster,
            dir,
            ca: ca_file,
            other_ca,
            owner_password_file,
            app_password_file,
            app_password,
        };
        pg.migrate_as_owner();
        if grants {
            pg.apply_grants();
        }
        Some(pg)
    }

    /// `postgres://USER@HOST:PORT/shardgate?sslmode=MODE&sslrootcert=CA`.
    fn url(&self, user: &str, host: &str, mode: &str, ca: &Path) -> String {
        format!(
            "postgres://{user}@{host}:{}/{DB}?sslmode={mode}&sslrootcert={}",
            self.cluster.port,
            ca.display()
        )
    }

    fn app_url(&self) -> String {
        self.url(APP, "localhost", "verify-full", &self.ca)
    }

    /// A gateway configuration connected as the runtime role, without migrations; backends
    /// `local` (tiers retail, institutional) and `vault` (tier gold).
    fn app_config(&self, dir: &Path, tokens: &Tokens) -> Config {
        let mut cfg = common::config(dir, &self.app_url(), tokens);
        cfg.store.password_file = Some(self.app_password_file.clone());
        cfg.store.migrate = false;
        cfg.backends
            .insert("vault".into(), common::local_backend(dir, "vault"));
        cfg.tiers.insert("gold".into(), "vault".into());
        cfg.migration.poll_interval_ms = 100;
        cfg
    }

    /// `shardgate db migrate` (the CLI) as the owner role, password from a file, over
    /// verify-full TLS.
    fn migrate_as_owner(&self) {
        let tokens = Tokens::new();
        let mut cfg = common::config(
            self.dir.path(),
            &self.url(OWNER, "localhost", "verify-full", &self.ca),
            &tokens,
        );
        cfg.store.password_file = Some(self.owner_password_file.clone());
        let path = self.dir.path().join("migrate.toml");
        common::write_config(&cfg, &path);
        let out = std::process::Command::new(common::shardgate_bin())
            .args(["db", "migrate", "--config"])
            .arg(&path)
            .env("SHARDGATE_LOG__FORMAT", "json")
            .output()
            .unwrap();
        common::keep_output(&common::log_dir("db_privileges"), "db-migrate", &out);
        assert!(
            out.status.success(),
            "db migrate as {OWNER}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn apply_grants(&self) {
        self.cluster
            .psql(DB, &[], &repo_file("scripts/sql/grants.sql"));
    }

    /// Superuser over the Unix socket.
    async fn admin(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.cluster.socket_url(DB))
            .await
            .unwrap()
    }

    /// A plain connection as the runtime role (TLS, password).
    async fn app_conn(&self) -> sqlx::PgConnection {
        let opts = sqlx::postgres::PgConnectOptions::from_str(&self.app_url())
            .unwrap()
            .password(&self.app_password);
        sqlx::PgConnection::connect_with(&opts).await.unwrap()
    }
}

/// The SQLSTATE of a failed statement (panics when it succeeded).
async fn sqlstate(conn: &mut sqlx::PgConnection, sql: &str) -> String {
    match sqlx::raw_sql(sql).execute(&mut *conn).await {
        Ok(r) => panic!("{sql:?} succeeded ({} rows)", r.rows_affected()),
        Err(e) => e
            .as_database_error()
            .and_then(|d| d.code().map(|c| c.into_owned()))
            .unwrap_or_else(|| panic!("{sql:?}: not a database error: {e}")),
    }
}

async fn send(
    app: &axum::Router,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    idem: Option<&str>,
) -> (StatusCode, Value) {
    use tower::ServiceExt;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(k) = idem {
        req = req.header("idempotency-key", k);
    }
    let req = req
        .body(axum::body::Body::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        ))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn shard_body(data: &str) -> Option<Value> {
    Some(json!({ "shard": B64.encode(data) }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_role_serves_every_write_but_cannot_rewrite_the_audit_log() {
    let Some(pg) = Pg::setup(true).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let cfg = pg.app_config(dir.path(), &tokens);
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    state.start_migration_workers();
    let app = shardgate::router(state.clone());
    let t = tokens.admin.as_str();

    // Accounts (insert, update), shards (insert, retention pruning, idempotency records,
    // version and shard deletes), a tier change whose migration job re-wraps the versions
    // (job and item updates, shard_versions updates), an account delete.
    let (s, v) = send(
        &app,
        t,
        "PUT",
        "/v1/accounts/acct-p",
        Some(json!({"tier": "retail", "keep_versions": 2})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for n in 1..=3 {
        let (s, v) = send(
            &app,
            t,
            "PUT",
            "/v1/accounts/acct-p/shards/s1",
            shard_body(&format!("s1 v{n}")),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    for _ in 0..2 {
        let (s, v) = send(
            &app,
            t,
            "PUT",
            "/v1/accounts/acct-p/shards/s2",
            shard_body("s2 v1"),
            Some("idem-s2"),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["version"], 1, "{v}");
    }
    let (s, v) = send(
        &app,
        t,
        "PUT",
        "/v1/accounts/acct-p/shards/s3",
        shard_body("s3 v1"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = send(
        &app,
        t,
        "DELETE",
        "/v1/accounts/acct-p/shards/s1/versions/2",
        None,
        None,
    )
    .await;
    assert!(s.is_success(), "{s}: {v}");
    let (s, v) = send(
        &app,
        t,
        "DELETE",
        "/v1/accounts/acct-p/shards/s3",
        None,
        Some("idem-del-s3"),
    )
    .await;
    assert!(s.is_success(), "{s}: {v}");

    let (s, v) = send(
        &app,
        t,
        "PUT",
        "/v1/accounts/acct-p",
        Some(json!({"tier": "gold"})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let job = v["migration_job"]
        .as_str()
        .expect("a tier change starts a migration job")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let (s, v) = send(
            &app,
            t,
            "GET",
            &format!("/v1/admin/migrations/{job}"),
            None,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if v["state"] != "running" {
            break v;
        }
        assert!(Instant::now() < deadline, "job never settled: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["state"], "completed", "{done}");
    assert!(done["done"].as_i64().unwrap() >= 2, "{done}");
    for (shard, data) in [("s1", "s1 v3"), ("s2", "s2 v1")] {
        let (s, v) = send(
            &app,
            t,
            "GET",
            &format!("/v1/accounts/acct-p/shards/{shard}"),
            None,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            B64.decode(v["shard"].as_str().unwrap()).unwrap(),
            data.as_bytes()
        );
        assert_eq!(v["backend"], "vault", "{v}");
    }
    let (s, v) = send(
        &app,
        t,
        "PUT",
        "/v1/accounts/acct-gone",
        Some(json!({"tier": "retail"})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = send(&app, t, "DELETE", "/v1/accounts/acct-gone", None, None).await;
    assert!(s.is_success(), "{s}: {v}");
    // The idempotency purge.
    state
        .store
        .purge_idempotency(shardgate::now_ms() + 1)
        .await
        .unwrap();
    state.stop_migration_workers();
    state.audit.checkpoint().await;

    // The runtime role reads the audit log back (audit verify) ...
    let key = shardgate::app::state::audit_key(&cfg).unwrap();
    let report = shardgate::domain::audit::verify(state.store.as_ref(), &key)
        .await
        .unwrap();
    assert!(report.events > 10, "{} events", report.events);
    // ... and holds no privilege a runtime role should not.
    let check = state.store.check_schema().await.unwrap();
    assert!(check.audit_writable.is_empty(), "{check:?}");

    // As that role, changing or removing audit rows, or any DDL, is refused (42501,
    // insufficient_privilege) and changes nothing.
    let mut admin = pg.admin().await;
    let count = |table: &'static str| format!("SELECT COUNT(*) FROM {table}");
    let events: i64 = sqlx::query_scalar(&count("audit_events"))
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let chains: i64 = sqlx::query_scalar(&count("audit_chains"))
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(events > 10 && chains >= 1);
    let mut conn = pg.app_conn().await;
    for sql in [
        "UPDATE audit_events SET detail = 'rewritten'",
        "UPDATE audit_events SET outcome = 'ok' WHERE seq = 1",
        "DELETE FROM audit_events",
        "DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)",
        "TRUNCATE audit_events",
        "UPDATE audit_chains SET host = 'elsewhere'",
        "DELETE FROM audit_chains",
        "TRUNCATE audit_chains",
        "ALTER TABLE audit_events DISABLE TRIGGER ALL",
        "DROP TABLE audit_events",
        "CREATE TABLE shadow_audit (x INT)",
        "DELETE FROM _sqlx_migrations",
        "TRUNCATE shard_versions",
        // Minting a token or undoing a revocation takes the owner role.
        "INSERT INTO api_tokens (token_id, name, sha256, scopes, created_ms) \
         VALUES ('0123456789abcdef', 'x', 'y', '*', 0)",
        "DELETE FROM token_revocations",
        "UPDATE api_tokens SET scopes = '*'",
        // Only the SECURITY DEFINER function records a segment: a forged row would claim
        // coverage of rows it never archived.
        "INSERT INTO audit_segments SELECT * FROM audit_segments LIMIT 1",
        "UPDATE audit_segments SET last_seq = last_seq + 1",
        "INSERT INTO audit_archive_checks VALUES ('c', 1, 1, 3, 0, 0, '', '', '')",
        "SELECT count(*) FROM audit_archive_checks",
        "DELETE FROM audit_segments",
        "CREATE OR REPLACE FUNCTION audit_archive_prune() RETURNS BIGINT LANGUAGE sql AS 'SELECT 0::bigint'",
        "CREATE OR REPLACE FUNCTION audit_archive_delete(TEXT, BIGINT) RETURNS BIGINT LANGUAGE sql AS 'SELECT 0::bigint'",
    ] {
        assert_eq!(sqlstate(&mut conn, sql).await, "42501", "{sql}");
    }
    // What it may do on the audit tables: read and append.
    let mine: i64 = sqlx::query_scalar(&count("audit_events"))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mine, events);
    let after: (i64, i64) = (
        sqlx::query_scalar(&count("audit_events"))
            .fetch_one(&mut admin)
            .await
            .unwrap(),
        sqlx::query_scalar(&count("audit_chains"))
            .fetch_one(&mut admin)
            .await
            .unwrap(),
    );
    assert_eq!(after, (events, chains));
    let report = shardgate::domain::audit::verify(state.store.as_ref(), &key)
        .await
        .unwrap();
    assert_eq!(report.events, u64::try_from(events).unwrap());
    // The runtime role archives the audit log through the SECURITY DEFINER function (the only way audit
    // rows leave the table), and the chain still verifies across both tiers.
    // The delete function takes only rows a recorded segment covers: none yet.
    let deleted: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(audit_archive_delete(chain_id, 1000000)), 0)::BIGINT \
         FROM (SELECT DISTINCT chain_id FROM audit_events) c",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(deleted, 0);
    // Nor does a segment whose digest is not its rows' get recorded.
    let forged = sqlstate(
        &mut conn,
        "SELECT audit_archive_record(chain_id, 1, 3, 0, 0, prev_tag, tag, sha256(tag), 'k', tag, 1, \
         'm', tag, prev_tag, 0) FROM audit_events WHERE seq = 1 LIMIT 1",
    )
    .await;
    assert_eq!(forged, "SG001");
    // The earlier release's one-call function makes the same checks (it records, then deletes).
    let forged = sqlstate(
        &mut conn,
        "SELECT audit_archive_prune(chain_id, 1, 3, 0, 0, prev_tag, tag, sha256(tag), 'k', tag, 1, \
         'm', tag, prev_tag, 0) FROM audit_events WHERE seq = 1 LIMIT 1",
    )
    .await;
    assert_eq!(forged, "SG001");
    // A step of a segment's check over rows that are not all there is refused too.
    let gap = sqlstate(
        &mut conn,
        "SELECT audit_archive_check(chain_id, 1, 1, max(seq) + 1) FROM audit_events \
         GROUP BY chain_id LIMIT 1",
    )
    .await;
    assert_eq!(gap, "SG001");
    let still: i64 = sqlx::query_scalar(&count("audit_events"))
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(still, events);
    let sink = shardgate::domain::audit::archive::DirSink::new(cfg.archive_dir());
    let archive = shardgate::domain::audit::archive::Archive {
        sink: &sink,
        prefix: "",
    };
    let pass = shardgate::service::audit_archive::ArchivePass {
        cutoff_ms: shardgate::now_ms() + 1,
        max_events: 7,
        max_bytes: 1 << 20,
        holder: "db-privileges-test".into(),
        lease_ms: 10_000,
        retention_ms: 86_400_000,
        // Paced: rows read a page and deleted a chunk at a time, as in production.
        rate_per_sec: 1_000_000,
    };
    let archived = shardgate::service::audit_archive::run_pass(
        state.store.as_ref(),
        archive,
        &key,
        &pass,
        None,
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(archived.events, report.events, "{archived:?}");
    let tiers = shardgate::domain::audit::verify_tiers(
        state.store.as_ref(),
        Some(archive),
        &key,
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        (tiers.events, tiers.archived_events),
        (report.events, report.events)
    );

    // grants.sql grants exactly RUNTIME_PRIVILEGES, and that covers every table of the
    // schema (a migration that adds a table fails here until both name it).
    let granted: BTreeSet<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, privilege_type::text FROM information_schema.role_table_grants \
         WHERE grantee = $1 AND table_schema = 'public'",
    )
    .bind(APP)
    .fetch_all(&mut admin)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let declared: BTreeSet<(String, String)> = shardgate_store::RUNTIME_PRIVILEGES
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(|p| (t.to_string(), p.to_string())))
        .collect();
    assert_eq!(granted, declared);
    let tables: BTreeSet<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
            .fetch_all(&mut admin)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let named: BTreeSet<String> = shardgate_store::RUNTIME_PRIVILEGES
        .iter()
        .map(|(t, _)| t.to_string())
        .collect();
    assert_eq!(tables, named);
    for t in shardgate_store::APPEND_ONLY_TABLES {
        for p in ["UPDATE", "DELETE", "TRUNCATE"] {
            assert!(!declared.contains(&(t.to_string(), p.to_string())));
        }
    }
    // Every table belongs to the owner role; the runtime role owns nothing.
    let owners: BTreeSet<String> = sqlx::query_scalar(
        "SELECT DISTINCT tableowner::text FROM pg_tables WHERE schemaname = 'public'",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(owners, BTreeSet::from([OWNER.to_string()]));

    // The owner role could rewrite the audit log: a gateway run as it with `migrate = false`
    // is told so (a warning at start-up).
    let owner = shardgate_store::connect_with_password(
        &pg.url(OWNER, "localhost", "verify-full", &pg.ca),
        Some(
            std::fs::read_to_string(&pg.owner_password_file)
                .unwrap()
                .trim(),
        ),
        1,
    )
    .await
    .unwrap();
    let check = owner.check_schema().await.unwrap();
    assert_eq!(
        check.audit_writable,
        [
            "UPDATE on audit_events",
            "DELETE on audit_events",
            "TRUNCATE on audit_events",
            "UPDATE on audit_chains",
            "DELETE on audit_chains",
            "TRUNCATE on audit_chains",
            "UPDATE on audit_segments",
            "DELETE on audit_segments",
            "TRUNCATE on audit_segments",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_role_without_its_grants_is_refused_at_start_up_with_the_fix() {
    let Some(pg) = Pg::setup(false).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let cfg = pg.app_config(dir.path(), &tokens);
    let err = shardgate::AppState::build(&cfg).await.err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("scripts/sql/grants.sql"), "{msg}");

    pg.apply_grants();
    let mut admin = pg.admin().await;
    sqlx::raw_sql(&format!(
        "REVOKE UPDATE ON migration_items FROM {APP}; REVOKE INSERT ON audit_events FROM {APP};"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let msg = shardgate::AppState::build(&cfg)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains(&format!(
            "database role {APP} lacks INSERT on audit_events, UPDATE on migration_items"
        )) && msg.contains("grants.sql"),
        "{msg}"
    );

    // Re-applying the script restores the complete set.
    pg.apply_grants();
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    state.store.ping().await.unwrap();

    // A database the owner never migrated: the runtime role runs no DDL and says what to do.
    sqlx::raw_sql("CREATE DATABASE empty")
        .execute(&mut admin)
        .await
        .unwrap();
    let mut cfg = cfg.clone();
    cfg.store.url = Some(pg.app_url().replace("/shardgate?", "/empty?"));
    let msg = shardgate::AppState::build(&cfg)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("shardgate db migrate"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_ca_and_the_host_name_and_plain_text_is_refused() {
    let Some(pg) = Pg::setup(true).await else {
        return;
    };
    let password = Some(pg.app_password.as_str());
    let connect = |url: String| async move {
        shardgate_store::postgres::PgStore::connect_with_password(&url, password, 1).await
    };

    // The right CA and host name: a TLS session.
    let store = connect(pg.app_url()).await.unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(ssl);
    assert!(!format!("{store:?}").contains(&pg.app_password));

    // Another CA: the chain does not verify.
    let err = connect(pg.url(APP, "localhost", "verify-full", &pg.other_ca))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("certificate"), "{err}");
    println!("wrong CA: {err}");

    // Another host name (the certificate names localhost, not 127.0.0.1): the chain is
    // right, the name is not.
    let err = connect(pg.url(APP, "127.0.0.1", "verify-full", &pg.ca))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("certificate not valid for name"), "{err}");
    println!("wrong host name: {err}");

    // The server takes no plain-text connection.
    let err = connect(pg.url(APP, "localhost", "disable", &pg.ca))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("no encryption") || err.contains("28000"),
        "{err}"
    );

    // The same through the gateway's configuration: start-up fails, naming the certificate.
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let mut cfg = pg.app_config(dir.path(), &tokens);
    cfg.store.url = Some(pg.url(APP, "localhost", "verify-full", &pg.other_ca));
    let msg = shardgate::AppState::build(&cfg)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("certificate"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_must_be_private_and_a_wrong_password_is_not_echoed() {
    let Some(pg) = Pg::setup(true).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let mut cfg = pg.app_config(dir.path(), &tokens);
    // The right file (with its trailing newline) connects.
    shardgate::app::state::open_store(&cfg, 1)
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();

    // A wrong password: refused by the server, and the error names neither password.
    let wrong = secret();
    let wrong_file = dir.path().join("wrong.password");
    shardgate::domain::files::write_private(&wrong_file, wrong.as_bytes()).unwrap();
    cfg.store.password_file = Some(wrong_file.clone());
    let msg = shardgate::app::state::open_store(&cfg, 1)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("password authentication failed"), "{msg}");
    assert!(
        !msg.contains(&wrong) && !msg.contains(&pg.app_password),
        "{msg}"
    );
    println!("wrong password: {msg}");

    // A file others may read is refused before any connection is made.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrong_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let msg = shardgate::app::state::open_store(&cfg, 1)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("store password file") && msg.contains("others may read it"),
        "{msg}"
    );
    assert!(!msg.contains(&wrong), "{msg}");

    // An empty file, a missing file.
    let empty = dir.path().join("empty.password");
    shardgate::domain::files::write_private(&empty, b"\n").unwrap();
    cfg.store.password_file = Some(empty);
    let msg = shardgate::app::state::open_store(&cfg, 1)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("is empty"), "{msg}");
    cfg.store.password_file = Some(dir.path().join("missing.password"));
    assert!(shardgate::app::state::open_store(&cfg, 1).await.is_err());

    // A password in the URL as well as in a file: refused, without echoing either.
    cfg.store.password_file = Some(pg.app_password_file.clone());
    let url = pg
        .app_url()
        .replace(&format!("{APP}@"), &format!("{APP}:{wrong}@"));
    cfg.store.url = Some(url);
    let msg = shardgate::app::state::open_store(&cfg, 1)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("keep it in one place"), "{msg}");
    assert!(
        !msg.contains(&wrong) && !msg.contains(&pg.app_password),
        "{msg}"
    );
}

/// `[store] migrate = false` on a database never migrated (SQLite: no roles, the same check
/// of the schema): start-up refuses and says what to run; after `db migrate` it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_false_refuses_an_unmigrated_database_and_runs_no_ddl() {
    let dir = tempfile::tempdir().unwrap();
    let url = shardgate::app::config::sqlite_url(&dir.path().join("test.db"));
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    cfg.store.migrate = false;
    let msg = shardgate::AppState::build(&cfg)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("shardgate db migrate"), "{msg}");
    let store = shardgate_store::connect(&url, 1).await.unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'")
        .fetch_one(&sqlx::SqlitePool::connect(&url).await.unwrap())
        .await
        .unwrap();
    assert_eq!(tables, 0, "migrate = false created tables");
    store.migrate().await.unwrap();
    let (state, _) = shardgate::AppState::build(&cfg).await.unwrap();
    let check = state.store.check_schema().await.unwrap();
    assert_eq!(check, shardgate_store::SchemaCheck::default());
}

/// `[store] migrate = false` on PostgreSQL (a throw-away database of the test server), on the
/// real binary: `serve` refuses a database never migrated, naming what to run and creating no
/// table; after `shardgate db migrate` it serves; and it refuses again, naming the migration,
/// once an applied migration no longer matches this build's file (its recorded checksum
/// edited, as an edited migration file would leave it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_false_on_postgres_refuses_an_unmigrated_or_edited_migration_database() {
    use common::served::{Served, DEADLINE};
    let Some(url) = common::fresh_pg_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let mut cfg = common::config(dir.path(), &url, &tokens);
    cfg.store.migrate = false;
    cfg.log.format = shardgate::app::config::LogFormat::Json;
    let config = dir.path().join("shardgate.toml");
    common::write_config(&cfg, &config);
    let logs = common::log_dir("db_privileges");
    let command = |args: &[&str]| {
        let mut cmd = std::process::Command::new(common::shardgate_bin());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SHARDGATE_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(args).args(["--config", config.to_str().unwrap()]);
        cmd
    };
    // `serve` must end by itself (refused); its stderr.
    let refused = |name: &str| {
        let err = logs.join(format!("{name}.stderr.log"));
        let mut child = command(&["serve"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("serve started instead of refusing: {}", err.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "{status:?}");
        std::fs::read_to_string(&err).unwrap()
    };
    let db = common::db::Db::connect(&url).await;

    let msg = refused("unmigrated");
    assert!(msg.contains("run `shardgate db migrate`"), "{msg}");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'")
            .await,
        0,
        "migrate = false created tables"
    );

    let out = command(&["db", "migrate"]).output().unwrap();
    common::keep_output(&logs, "db-migrate", &out);
    assert!(out.status.success(), "{out:?}");
    drop(Served::start(&config, "db_privileges", "migrated"));

    let edited = db
        .exec(
            "UPDATE _sqlx_migrations SET checksum = sha384(checksum) \
             WHERE version = (SELECT MIN(version) FROM _sqlx_migrations)",
        )
        .await;
    assert_eq!(edited, 1);
    let msg = refused("edited");
    assert!(
        msg.contains("migration 0001 (init) was applied from a different file than this build's"),
        "{msg}"
    );
}

//! Unit tests of the config file (`config.rs`): sections, defaults, refusals and their messages.
#![allow(clippy::unwrap_used, clippy::panic)]

use super::*;

#[test]
fn embedded_default_needs_no_file() {
    let cfg = Config::load_with_env(
        &Sources {
            data_dir: Some("/tmp/x".into()),
            ..Sources::default()
        },
        Env::prefixed("SHARDGATE_UNUSED_PREFIX_"),
    )
    .unwrap();
    assert_eq!(cfg.listen.to_string(), DEFAULT_LISTEN);
    assert!(cfg.store_url().starts_with("sqlite:///tmp/x/"));
    assert!(cfg.tiers.contains_key("retail") && cfg.tiers.contains_key("institutional"));
}

#[test]
fn log_format_defaults_to_auto_and_takes_an_env_override() {
    let sources = Sources {
        data_dir: Some("/tmp/x".into()),
        ..Sources::default()
    };
    let cfg = Config::load_with_env(&sources, Env::prefixed("SHARDGATE_UNUSED_PREFIX_")).unwrap();
    assert_eq!(cfg.log.format, LogFormat::Auto);
    std::env::set_var("SGLOGTEST_LOG__FORMAT", "json");
    let cfg = Config::load_with_env(&sources, Env::prefixed("SGLOGTEST_")).unwrap();
    assert_eq!(cfg.log.format, LogFormat::Json);
    assert!(cfg.log.format.is_json());
    std::env::set_var("SGLOGTEST_LOG__FORMAT", "text");
    let cfg = Config::load_with_env(&sources, Env::prefixed("SGLOGTEST_")).unwrap();
    assert!(!cfg.log.format.is_json());
    std::env::set_var("SGLOGTEST_LOG__FORMAT", "xml");
    assert!(Config::load_with_env(&sources, Env::prefixed("SGLOGTEST_")).is_err());
    std::env::remove_var("SGLOGTEST_LOG__FORMAT");
}

#[test]
fn idempotency_window_defaults_and_reaches_the_limits() {
    let cfg = Config::load_with_env(
        &Sources {
            data_dir: Some("/tmp/x".into()),
            ..Sources::default()
        },
        Env::prefixed("SHARDGATE_UNUSED_PREFIX_"),
    )
    .unwrap();
    assert_eq!(cfg.idempotency.window_secs, 86_400);
    assert_eq!(cfg.idempotency.window_secs, 86_400);
    std::env::set_var("SGIDEMTEST_IDEMPOTENCY__WINDOW_SECS", "60");
    let cfg = Config::load_with_env(
        &Sources {
            data_dir: Some("/tmp/x".into()),
            ..Sources::default()
        },
        Env::prefixed("SGIDEMTEST_"),
    )
    .unwrap();
    assert_eq!(cfg.idempotency.window_secs, 60);
}

#[test]
fn env_variables_that_are_not_configuration_keys_are_ignored() {
    // What Kubernetes injects for a Service named `shardgate` (service links).
    std::env::set_var("SGCFGK8S_PORT", "tcp://10.96.0.12:8080");
    std::env::set_var("SGCFGK8S_PORT_8080_TCP_ADDR", "10.96.0.12");
    std::env::set_var("SGCFGK8S_SERVICE_HOST", "10.96.0.12");
    std::env::set_var("SGCFGK8S_LISTEN", "127.0.0.1:9998");
    let cfg = Config::load_with_env(
        &Sources {
            data_dir: Some("/tmp/x".into()),
            ..Sources::default()
        },
        Env::prefixed("SGCFGK8S_"),
    )
    .unwrap();
    assert_eq!(cfg.listen.port(), 9998, "real keys still apply");
    // A misspelt key inside a real section stays an error.
    std::env::set_var("SGCFGK8S_LIMITS__MAX_BODYBYTES", "1");
    let err = Config::load_with_env(
        &Sources {
            data_dir: Some("/tmp/x".into()),
            ..Sources::default()
        },
        Env::prefixed("SGCFGK8S_"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("max_bodybytes"), "{err}");
    assert!(top_level_keys().contains(&"limits") && top_level_keys().contains(&"tls"));
}

#[test]
fn env_overrides_nested_keys_and_ignores_test_variables() {
    std::env::set_var("SGCFGTEST_LISTEN", "127.0.0.1:9999");
    std::env::set_var("SGCFGTEST_LIMITS__MAX_SHARD_BYTES", "1234");
    std::env::set_var("SGCFGTEST_TEST_DATABASE_URL", "postgres://ignored");
    let cfg = Config::load_with_env(
        &Sources {
            data_dir: Some("/tmp/x".into()),
            ..Sources::default()
        },
        Env::prefixed("SGCFGTEST_"),
    )
    .unwrap();
    assert_eq!(cfg.listen.port(), 9999);
    assert_eq!(cfg.limits.max_shard_bytes, 1234);
    // Flags win over the environment.
    let cfg = Config::load_with_env(
        &Sources {
            listen: Some("127.0.0.1:7777".parse().unwrap()),
            ..Sources::default()
        },
        Env::prefixed("SGCFGTEST_"),
    )
    .unwrap();
    assert_eq!(cfg.listen.port(), 7777);
}

#[test]
fn hsm_and_kms_backends_parse_from_toml() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        r#"
[backends.hsm]
kind = "pkcs11"
token_label = "shardgate"
pin_env = "HSM_PIN"
kek_label = "kek"
pool_size = 8
iv = "hsm"
cloudhsm = { cluster_id = "cluster-abc", region = "us-east-1", min_active_hsms = 2 }
[backends.kms]
kind = "aws-kms"
key_id = "alias/shards"
region = "eu-west-1"
[tiers]
retail = "kms"
institutional = "hsm"
[[tokens]]
name = "a"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
scopes = ["*"]
"#,
    )
    .unwrap();
    let sources = Sources {
        file: Some(f.clone()),
        ..Sources::default()
    };
    let cfg = Config::load_with_env(&sources, Env::prefixed("SHARDGATE_UNUSED_PREFIX_")).unwrap();
    match &cfg.backends["hsm"] {
        BackendConfig::Pkcs11(e) => {
            assert_eq!(e.hsm.pool_size, 8);
            assert_eq!(e.cloudhsm.as_ref().unwrap().min_active_hsms, 2);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&cfg.backends["kms"], BackendConfig::AwsKms(k) if k.key_id == "alias/shards"));
    // A typo inside a backend is an error, not a silently ignored key.
    let text = std::fs::read_to_string(&f)
        .unwrap()
        .replace("pool_size", "pool_sise");
    std::fs::write(&f, text).unwrap();
    assert!(Config::load_with_env(&sources, Env::prefixed("SHARDGATE_UNUSED_PREFIX_")).is_err());
    // The PIN never sits in the file: there is no field for it.
    let text = std::fs::read_to_string(&f)
        .unwrap()
        .replace("pool_sise = 8", "pin = \"1234\"");
    std::fs::write(&f, text).unwrap();
    assert!(Config::load_with_env(&sources, Env::prefixed("SHARDGATE_UNUSED_PREFIX_")).is_err());
}

#[test]
fn file_with_unknown_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "listne = \"127.0.0.1:1\"\n").unwrap();
    let err = Config::load_with_env(
        &Sources {
            file: Some(f),
            ..Sources::default()
        },
        Env::prefixed("SHARDGATE_UNUSED_PREFIX_"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("listne"), "{err}");
}

#[test]
fn token_entries_pair_no_admin_with_a_prefix_and_no_empty_prefix() {
    let base =
        "[backends.local]\nkind = \"local\"\nkey_file = \"k\"\n[tiers]\nretail = \"local\"\n\
                [[tokens]]\nname = \"t\"\nsha256 = \"{h}\"\n";
    let h = "ab".repeat(32);
    let load = |extra: &str| {
        load_file(
            &format!("{}{extra}", base.replace("{h}", &h)),
            Env::prefixed("SHARDGATE_UNUSED_PREFIX_"),
        )
    };
    assert!(load("scopes = [\"*\"]\n").is_ok());
    assert!(load("scopes = [\"shards:read\"]\naccount_prefix = \"acct-\"\n").is_ok());
    for (extra, expect) in [
        (
            "scopes = [\"*\"]\naccount_prefix = \"acct-\"\n",
            "'*' includes admin",
        ),
        (
            "scopes = [\"shards:read\", \"admin\"]\naccount_prefix = \"acct-\"\n",
            "admin scope cannot go with an account prefix",
        ),
        (
            "scopes = [\"shards:read\"]\naccount_prefix = \"\"\n",
            "account_prefix must be non-empty",
        ),
    ] {
        let err = load(extra).unwrap_err().to_string();
        assert!(err.contains(expect), "{extra}: {err}");
    }
}

#[test]
fn config_without_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        "[backends.local]\nkind = \"local\"\nkey_file = \"k\"\n[tiers]\nretail = \"local\"\n",
    )
    .unwrap();
    let err = Config::load_with_env(
        &Sources {
            file: Some(f),
            ..Sources::default()
        },
        Env::prefixed("SHARDGATE_UNUSED_PREFIX_"),
    )
    .unwrap_err();
    assert!(err
        .to_string()
        .contains("never starts without authentication"));
}

const POLICY_FILE: &str = r#"
[backends.local]
kind = "local"
key_file = "k"
[backends.kms-new]
kind = "aws-kms"
key_id = "alias/new"
region = "eu-west-1"
[tiers]
retail = "local"
institutional = "local"
[[policy.pins]]
account = "acct-9"
backend = "kms-new"
[[policy.rollouts]]
name = "kms-pilot"
tier = "retail"
backend = "kms-new"
percent = 5
[[tokens]]
name = "a"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
scopes = ["*"]
"#;

fn load_file(text: &str, env: Env) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, text).unwrap();
    Config::load_with_env(
        &Sources {
            file: Some(f),
            ..Sources::default()
        },
        env,
    )
}

#[test]
fn pins_and_rollouts_parse_and_build_a_policy() {
    let cfg = load_file(POLICY_FILE, Env::prefixed("SHARDGATE_UNUSED_PREFIX_")).unwrap();
    assert_eq!(cfg.policy.pins.len(), 1);
    // An integer percent is accepted as well as `5.0`.
    assert_eq!(cfg.policy.rollouts[0].percent, 5.0);
    let policy = cfg.policy().unwrap();
    let pinned = policy.place("acct-9", "institutional").unwrap();
    assert_eq!(pinned.backend, "kms-new");
    assert_eq!(pinned.rule, "pin acct-9 -> kms-new");
    assert_eq!(policy.rollout_count(), 1);
    // What the tests write with `toml::to_string` reads back the same.
    let again: Config = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(again.policy.rollouts, cfg.policy.rollouts);
    assert_eq!(again.policy.pins, cfg.policy.pins);
}

#[test]
fn policy_rules_come_from_the_environment_too() {
    std::env::set_var(
        "SGPOLTEST_POLICY__ROLLOUTS",
        r#"[{name="env-pilot", tier="retail", backend="kms-new", percent=12.5}]"#,
    );
    std::env::set_var(
        "SGPOLTEST_POLICY__PINS",
        r#"[{account="acct-Env", backend="kms-new"}]"#,
    );
    let cfg = load_file(POLICY_FILE, Env::prefixed("SGPOLTEST_")).unwrap();
    assert_eq!(cfg.policy.rollouts.len(), 1);
    assert_eq!(cfg.policy.rollouts[0].name, "env-pilot");
    assert_eq!(cfg.policy.rollouts[0].percent, 12.5);
    // Account ids keep their case (figment lowercases keys, not values).
    assert_eq!(cfg.policy.pins[0].account, "acct-Env");
    assert!(cfg.policy().is_ok());
    // Over the embedded default as well.
    let cfg = Config::load_with_env(
        &Sources {
            data_dir: Some("/tmp/x".into()),
            ..Sources::default()
        },
        Env::prefixed("SGPOLTEST_"),
    )
    .unwrap();
    assert_eq!(cfg.policy.pins[0].account, "acct-Env");
    // ... where kms-new is not configured, which the policy refuses.
    assert!(matches!(
        cfg.policy(),
        Err(PolicyError::PinUnknownBackend { .. })
    ));
}

#[test]
fn policy_section_typos_are_rejected() {
    let text = POLICY_FILE.replace("percent = 5", "precent = 5");
    let err = load_file(&text, Env::prefixed("SHARDGATE_UNUSED_PREFIX_")).unwrap_err();
    assert!(err.to_string().contains("precent"), "{err}");
    let text = POLICY_FILE.replace("[[policy.pins]]", "[[policy.pin]]");
    assert!(load_file(&text, Env::prefixed("SHARDGATE_UNUSED_PREFIX_")).is_err());
}

const TLS_FILE: &str = r#"
[backends.local]
kind = "local"
key_file = "k"
[tiers]
retail = "local"
[tls]
cert_file = "/etc/shardgate/server.pem"
key_file = "/etc/shardgate/server.key"
client_ca_file = "/etc/shardgate/clients-ca.pem"
client_auth = "optional"
[[tls.clients]]
name = "signer"
subject_cn = "signer.internal"
scopes = ["shards:read", "shards:write"]
account_prefix = "acct-eu-"
[[tls.clients]]
name = "ops"
uri = "spiffe://prod/ops"
scopes = ["*"]
"#;

#[test]
fn tls_section_parses_and_client_entries_alone_are_authentication() {
    // No [[tokens]]: certificate identities are authentication enough.
    let cfg = load_file(TLS_FILE, Env::prefixed("SHARDGATE_UNUSED_PREFIX_")).unwrap();
    let tls = cfg.tls.as_ref().unwrap();
    assert_eq!(tls.client_auth, Some(ClientAuth::Optional));
    assert!(!tls.requires_client_cert());
    assert_eq!(tls.clients.len(), 2);
    assert_eq!(tls.clients[1].uri.as_deref(), Some("spiffe://prod/ops"));
    // What the tests write with `toml::to_string` reads back the same.
    let again: Config = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(again.tls, cfg.tls);
    // client_auth defaults to required once a client CA is set.
    let text = TLS_FILE.replace("client_auth = \"optional\"\n", "");
    let cfg = load_file(&text, Env::prefixed("SHARDGATE_UNUSED_PREFIX_")).unwrap();
    assert!(cfg.tls.unwrap().requires_client_cert());
}

#[test]
fn tls_client_entries_are_validated() {
    let bad = |from: &str, to: &str, expect: &str| {
        let text = TLS_FILE.replacen(from, to, 1);
        assert_ne!(text, TLS_FILE, "{from}");
        let err = load_file(&text, Env::prefixed("SHARDGATE_UNUSED_PREFIX_"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "{from} -> {to}: {err}");
    };
    bad(
        "client_ca_file = \"/etc/shardgate/clients-ca.pem\"\n",
        "",
        "needs client_ca_file",
    );
    bad(
        "subject_cn = \"signer.internal\"",
        "subject_cn = \"signer.internal\"\ndns = \"signer.svc\"",
        "exactly one of",
    );
    bad("subject_cn = \"signer.internal\"\n", "", "exactly one of");
    bad("\"shards:write\"", "\"shards:wirte\"", "unknown scope");
    bad("\"acct-eu-\"", "\"acct/eu\"", "account_prefix");
    bad(
        "uri = \"spiffe://prod/ops\"",
        "subject_cn = \"signer.internal\"",
        "already maps",
    );
    bad("name = \"ops\"", "name = \"\"", "client name");
    bad(
        "client_auth = \"optional\"",
        "client_auth = \"sometimes\"",
        "sometimes",
    );
    bad("cert_file", "cert_flie", "cert_flie");
    bad(
        "\"shards:write\"",
        "\"admin\"",
        "admin scope cannot go with an account prefix",
    );
    // DNS names collide ignoring case.
    let text = TLS_FILE
        .replace("subject_cn = \"signer.internal\"", "dns = \"Signer.Svc\"")
        .replace("uri = \"spiffe://prod/ops\"", "dns = \"signer.svc\"");
    assert!(load_file(&text, Env::prefixed("SHARDGATE_UNUSED_PREFIX_")).is_err());
}

#[test]
fn config_without_policy_section_serializes_without_one() {
    let cfg = Config::embedded(Path::new("/tmp/x"));
    assert!(cfg.policy.is_empty());
    assert!(!toml::to_string(&cfg).unwrap().contains("policy"));
    assert!(cfg.policy().is_ok());
}

#[test]
fn store_password_file_and_migrate_parse_and_default() {
    let base = "[backends.local]\nkind = \"local\"\nkey_file = \"k\"\n\
                [[tokens]]\nname = \"a\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nscopes = [\"*\"]\n";
    let cfg = load_file(base, Env::prefixed("SHARDGATE_UNUSED_PREFIX_")).unwrap();
    assert!(cfg.store.migrate);
    assert!(cfg.store.password_file.is_none());
    let text = format!(
        "{base}[store]\nurl = \"postgres://shardgate_app@db:5432/shardgate?sslmode=verify-full&sslrootcert=/ca.pem\"\n\
         password_file = \"/run/secrets/pg\"\nmigrate = false\n"
    );
    let cfg = load_file(&text, Env::prefixed("SHARDGATE_UNUSED_PREFIX_")).unwrap();
    assert!(!cfg.store.migrate);
    assert_eq!(
        cfg.store.password_file.as_deref(),
        Some(Path::new("/run/secrets/pg"))
    );
    // A password file for SQLite (which takes none) is a mistake.
    let text = format!("{base}[store]\npassword_file = \"/run/secrets/pg\"\n");
    let err = load_file(&text, Env::prefixed("SHARDGATE_UNUSED_PREFIX_")).unwrap_err();
    assert!(err.to_string().contains("password_file"), "{err}");
}

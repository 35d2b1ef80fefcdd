//! The configuration: a TOML file through `Config::load` (parse, unknown-key refusal,
//! validation), then everything start-up derives from it without I/O: the policy (tiers,
//! pins, rollouts: `check` lists every problem, `build` and placement), the tokens, the
//! rate limiter, the store URL. Any input may be refused; none may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::app::config::{Config, Sources};
use std::sync::OnceLock;

/// One file, rewritten for every input (a fuzzer process runs one input at a time).
fn config_path() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
            .path()
            .join("shardgate.toml")
    })
}

fuzz_target!(|data: &[u8]| {
    // No SHARDGATE_* override may leak in from the environment that runs the fuzzer.
    static CLEAN_ENV: OnceLock<()> = OnceLock::new();
    CLEAN_ENV.get_or_init(|| {
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SHARDGATE_") {
                std::env::remove_var(k);
            }
        }
    });
    let path = config_path();
    std::fs::write(path, data).expect("write the config file");
    let sources = Sources {
        file: Some(path.to_path_buf()),
        ..Sources::default()
    };
    let Ok(cfg) = Config::load(&sources) else {
        return;
    };
    // What start-up derives from a loaded config, without opening anything.
    let _ = cfg.store_url();
    let _ = cfg.audit_key_file();
    let names = cfg.backend_names();
    let problems = cfg.policy_builder().check(&names);
    match cfg.policy() {
        Ok(policy) => {
            assert!(
                problems.is_empty(),
                "built a policy with problems: {problems:?}"
            );
            for tier in cfg.tiers.keys() {
                for account in ["acct-1", "acct-A", "a", &"z".repeat(128)] {
                    let _ = policy.place(account, tier);
                    let _ = policy.explain(account, tier);
                }
                for pin in &cfg.policy.pins {
                    if let Ok(p) = policy.place(&pin.account, tier) {
                        assert!(names.contains(&p.backend), "placed on an unknown backend");
                    }
                }
            }
        }
        Err(_) => assert!(
            !problems.is_empty(),
            "policy refused but check found nothing"
        ),
    }
    for t in &cfg.tokens {
        // Validation accepted it, so the token entry builds.
        assert!(
            shardgate::domain::auth::TokenEntry::new(
                &t.name,
                &t.sha256,
                &t.scopes,
                t.account_prefix.clone()
            )
            .is_some(),
            "a validated token does not build"
        );
    }
    let _ = shardgate::http::ratelimit::IdentityLimiter::from_limits(&cfg.limits);
    // What the tests write with `toml::to_string` must not panic either.
    let _ = toml::to_string(&cfg);
});

//! The Rust rule ([`shardgate_testkit::strict_from`]) and the test script's rule
//! (`sg_is_strict` in `scripts/lib/common.sh`) must not drift apart: both are evaluated on the
//! same table of `CI` / `SHARDGATE_TEST_STRICT` values and must agree on every row.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn rust_and_bash_agree_on_every_row() {
    let common = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/lib/common.sh");
    let values = [
        None,
        Some(""),
        Some("true"),
        Some("TRUE"),
        Some("True"),
        Some("1"),
        Some("yes"),
        Some("YES"),
        Some("false"),
        Some("0"),
        Some("no"),
    ];
    for ci in values {
        for st in values {
            let mut cmd = Command::new("bash");
            cmd.arg("-c")
                .arg(format!("source '{common}' && sg_is_strict"))
                .env_remove("CI")
                .env_remove("SHARDGATE_TEST_STRICT");
            if let Some(v) = ci {
                cmd.env("CI", v);
            }
            if let Some(v) = st {
                cmd.env("SHARDGATE_TEST_STRICT", v);
            }
            let bash = cmd.status().expect("bash runs").success();
            assert_eq!(
                bash,
                shardgate_testkit::strict_from(ci, st),
                "CI={ci:?} SHARDGATE_TEST_STRICT={st:?}: bash says {bash}"
            );
        }
    }
}

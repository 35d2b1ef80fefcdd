//! Start-up of several processes on one SoftHSM2 file token at once (issue 30: replicas
//! restarting beside each other). Measured before the start-up retry: three processes
//! opening the backend at the same moment failed to find the token in 3 of 10 rounds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_backends::pkcs11::init_key;
use shardgate_softhsm_tests::{module, TestToken};
use std::process::Command;

const OPEN: &str = env!("CARGO_BIN_EXE_sg-softhsm-open");

#[test]
fn three_processes_opening_one_token_at_once_all_start() {
    let Some(module) = module("three_processes_opening_one_token_at_once_all_start") else {
        return;
    };
    let tok = TestToken::new(&module, "sg-startup");
    let cfg = tok.config("kek");
    assert_eq!(init_key(&cfg).unwrap(), 1);
    let pin_file = cfg.pin_file.clone().unwrap();
    for round in 0..10 {
        // All three spawned before any is waited for; SOFTHSM2_CONF (set by TestToken for
        // this process) is inherited.
        let started: Vec<_> = (0..3)
            .map(|_| {
                Command::new(OPEN)
                    .args([
                        module.to_str().unwrap(),
                        tok.label.as_str(),
                        pin_file.to_str().unwrap(),
                        "kek",
                    ])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (i, child) in started.into_iter().enumerate() {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}, process {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

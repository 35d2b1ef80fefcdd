//! Unit tests of the tier policy (`lib.rs`), in their own file so the rules read without them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn backends() -> BTreeSet<String> {
    ["local", "kms", "kms-new", "hsm"]
        .into_iter()
        .map(String::from)
        .collect()
}

fn tiers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn rollout(name: &str, tier: &str, backend: &str, percent: f64) -> Rollout {
    Rollout {
        name: name.into(),
        tier: tier.into(),
        backend: backend.into(),
        percent,
    }
}

fn retail() -> PolicyBuilder {
    Policy::builder(tiers(&[("retail", "local"), ("institutional", "hsm")]))
}

/// An account id whose bucket for `rollout` satisfies `pred` (searched, so the tests
/// do not hard-code hash outputs except in `bucket_is_the_documented_sha256`).
fn account_where(rollout: &str, pred: impl Fn(u32) -> bool) -> String {
    (0..100_000)
        .map(|i| format!("acct-{i}"))
        .find(|a| pred(rollout_bucket(rollout, a)))
        .unwrap()
}

#[test]
fn tier_picks_its_backend() {
    let p = Policy::new(tiers(&[("retail", "kms"), ("dev", "local")]), &backends()).unwrap();
    assert_eq!(p.place("a", "retail").unwrap().backend, "kms");
    assert_eq!(p.place("a", "dev").unwrap().backend, "local");
    assert_eq!(p.place("a", "dev").unwrap().rule, "tier dev -> local");
    assert!(p.has_tier("dev") && !p.has_tier("Dev"));
    assert_eq!(p.tiers().collect::<Vec<_>>(), ["dev", "retail"]);
}

#[test]
fn unknown_tier_is_an_error_not_a_fallback() {
    let p = Policy::new(tiers(&[("retail", "kms")]), &backends()).unwrap();
    assert_eq!(
        p.place("a", "Retail"),
        Err(PolicyError::UnknownTier("Retail".into()))
    );
}

#[test]
fn unknown_tier_is_an_error_even_for_a_pinned_account() {
    let p = retail().pin("acct-9", "hsm").build(&backends()).unwrap();
    assert_eq!(
        p.place("acct-9", "retial"),
        Err(PolicyError::UnknownTier("retial".into()))
    );
    assert!(p.explain("acct-9", "retial").is_err());
}

#[test]
fn tier_naming_missing_backend_is_rejected() {
    let err = Policy::new(tiers(&[("retail", "hsm2")]), &backends()).unwrap_err();
    assert_eq!(
        err,
        PolicyError::UnknownBackend {
            tier: "retail".into(),
            backend: "hsm2".into()
        }
    );
}

#[test]
fn empty_policy_is_rejected() {
    assert_eq!(
        Policy::new(BTreeMap::new(), &backends()),
        Err(PolicyError::NoTiers)
    );
}

#[test]
fn bucket_is_the_documented_sha256() {
    // SHA-256("kms-pilot\0acct-1"), first 8 bytes big-endian, mod 10_000, computed here
    // the long way so a change of the scheme cannot pass unnoticed.
    let digest = Sha256::digest(b"kms-pilot\x00acct-1");
    let n = u64::from_be_bytes(digest[..8].try_into().unwrap());
    assert_eq!(rollout_bucket("kms-pilot", "acct-1"), (n % 10_000) as u32);
    // And a pinned value (computed independently): every replica and release must agree
    // on it forever.
    assert_eq!(rollout_bucket("kms-pilot", "acct-1"), KNOWN_BUCKET);
    // The salt matters: another rollout name draws another set.
    let differ = (0..200)
        .filter(|i| {
            let a = format!("a{i}");
            rollout_bucket("x", &a) != rollout_bucket("y", &a)
        })
        .count();
    assert!(differ > 190, "{differ}");
}

/// `rollout_bucket("kms-pilot", "acct-1")`, pinned (see the test above).
const KNOWN_BUCKET: u32 = 4_424;

#[test]
fn pin_beats_rollout_and_tier() {
    let acct = account_where("pilot", |b| b < 5_000);
    let p = retail()
        .pin(acct.clone(), "hsm")
        .rollout(rollout("pilot", "retail", "kms-new", 50.0))
        .build(&backends())
        .unwrap();
    let pl = p.place(&acct, "retail").unwrap();
    assert_eq!(pl.backend, "hsm");
    assert_eq!(pl.rule, format!("pin {acct} -> hsm"));
    // A pin holds whatever the tier.
    assert_eq!(p.place(&acct, "institutional").unwrap().backend, "hsm");
    // Other accounts are untouched by the pin.
    assert_ne!(
        p.place("someone-else", "institutional").unwrap().backend,
        "kms-new"
    );
}

#[test]
fn pin_onto_the_backend_the_account_gets_anyway_is_allowed() {
    let p = retail().pin("acct-9", "local").build(&backends()).unwrap();
    assert!(p.warnings().is_empty());
    assert_eq!(
        p.place("acct-9", "retail").unwrap().rule,
        "pin acct-9 -> local"
    );
}

#[test]
fn rollout_takes_accounts_below_its_bucket_threshold() {
    let p = retail()
        .rollout(rollout("kms-pilot", "retail", "kms-new", 5.0))
        .build(&backends())
        .unwrap();
    let inside = account_where("kms-pilot", |b| b < 500);
    let outside = account_where("kms-pilot", |b| b >= 500);
    let pl = p.place(&inside, "retail").unwrap();
    let b = rollout_bucket("kms-pilot", &inside);
    assert_eq!(pl.backend, "kms-new");
    assert_eq!(
        pl.rule,
        format!("rollout retail:kms-pilot 5.00% (bucket {b}) -> kms-new")
    );
    assert_eq!(
        p.place(&outside, "retail").unwrap(),
        Placement {
            backend: "local".into(),
            rule: "tier retail -> local".into()
        }
    );
    // The rollout is only for its tier.
    assert_eq!(p.place(&inside, "institutional").unwrap().backend, "hsm");
}

#[test]
fn rollout_bucket_edges_are_exact() {
    let acct = account_where("edge", |b| b > 0 && b < 9_999);
    let b = rollout_bucket("edge", &acct);
    let at = |bp: u32| {
        retail()
            .rollout(rollout("edge", "retail", "kms", f64::from(bp) / 100.0))
            .build(&backends())
            .unwrap()
            .place(&acct, "retail")
            .unwrap()
            .backend
    };
    assert_eq!(at(b), "local", "bucket == threshold is outside");
    assert_eq!(at(b + 1), "kms", "bucket < threshold is inside");
}

#[test]
fn two_decimal_percentages_are_honoured() {
    let p = retail()
        .rollout(rollout("fine", "retail", "kms", 0.07))
        .build(&backends())
        .unwrap();
    let a = account_where("fine", |b| b < 7);
    let pl = p.place(&a, "retail").unwrap();
    assert!(pl.rule.contains("0.07%"), "{}", pl.rule);
    assert_eq!(pl.backend, "kms");
}

#[test]
fn earlier_rollout_wins_an_overlap() {
    let a = (0..100_000)
        .map(|i| format!("acct-{i}"))
        .find(|a| rollout_bucket("first", a) < 3_000 && rollout_bucket("second", a) < 3_000)
        .unwrap();
    let p = retail()
        .rollout(rollout("first", "retail", "kms", 30.0))
        .rollout(rollout("second", "retail", "kms-new", 30.0))
        .build(&backends())
        .unwrap();
    assert_eq!(p.place(&a, "retail").unwrap().backend, "kms");
    let e = p.explain(&a, "retail").unwrap();
    assert_eq!(e.steps[1].verdict, Verdict::Chosen);
    assert!(matches!(e.steps[2].verdict, Verdict::Overridden { .. }));
    // Swap the order: the other one wins.
    let p = retail()
        .rollout(rollout("second", "retail", "kms-new", 30.0))
        .rollout(rollout("first", "retail", "kms", 30.0))
        .build(&backends())
        .unwrap();
    assert_eq!(p.place(&a, "retail").unwrap().backend, "kms-new");
}

#[test]
fn explain_lists_every_rule_and_the_winner() {
    let a = account_where("pilot", |b| b < 2_000);
    let p = retail()
        .pin(a.clone(), "hsm")
        .rollout(rollout("pilot", "retail", "kms-new", 20.0))
        .rollout(rollout("other-tier", "institutional", "kms", 50.0))
        .build(&backends())
        .unwrap();
    let e = p.explain(&a, "retail").unwrap();
    assert_eq!(e.placement, p.place(&a, "retail").unwrap());
    let rules: Vec<&str> = e.steps.iter().map(|s| s.rule.as_str()).collect();
    let b = rollout_bucket("pilot", &a);
    assert_eq!(
        rules,
        [
            format!("pin {a} -> hsm"),
            format!("rollout retail:pilot 20.00% (bucket {b}) -> kms-new"),
            "tier retail -> local".to_string(),
        ]
    );
    assert_eq!(e.steps[0].verdict, Verdict::Chosen);
    let by = format!("pin {a} -> hsm");
    assert_eq!(e.steps[1].verdict, Verdict::Overridden { by: by.clone() });
    assert_eq!(e.steps[2].verdict, Verdict::Overridden { by });
    let text = e.to_string();
    assert!(
        text.contains("CHOSEN") && text.contains("backend: hsm"),
        "{text}"
    );

    // No pin, outside the rollout: the tier default wins and the rest say why not.
    let out = account_where("pilot", |b| b >= 2_000);
    let e = p.explain(&out, "retail").unwrap();
    assert!(matches!(&e.steps[0].verdict, Verdict::NotMatched { why } if why.contains(&out)));
    assert!(
        matches!(&e.steps[1].verdict, Verdict::NotMatched { why } if why.contains("not below 2000"))
    );
    assert_eq!(e.steps[2].verdict, Verdict::Chosen);
    assert_eq!(e.placement.backend, "local");
}

// ----- validation: one test per error -----

fn only_error(b: PolicyBuilder) -> PolicyError {
    let errors = b.check(&backends());
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = b.build(&backends()).unwrap_err();
    assert_eq!(e, errors[0]);
    e
}

#[test]
fn pin_onto_unknown_backend() {
    assert_eq!(
        only_error(retail().pin("acct-1", "hsm9")),
        PolicyError::PinUnknownBackend {
            account: "acct-1".into(),
            backend: "hsm9".into()
        }
    );
}

#[test]
fn pin_of_an_impossible_account_id() {
    for bad in ["", "..", "a b", "é", &"a".repeat(129)] {
        assert_eq!(
            only_error(retail().pin(bad, "hsm")),
            PolicyError::InvalidPinAccount {
                account: bad.into()
            }
        );
    }
}

#[test]
fn two_pins_for_one_account() {
    assert_eq!(
        only_error(retail().pin("acct-1", "hsm").pin("acct-1", "kms")),
        PolicyError::DuplicatePin {
            account: "acct-1".into(),
            first: "hsm".into(),
            second: "kms".into()
        }
    );
    // Even identical ones.
    assert!(matches!(
        only_error(retail().pin("acct-1", "hsm").pin("acct-1", "hsm")),
        PolicyError::DuplicatePin { .. }
    ));
    // Ids are exact bytes: these are two accounts.
    assert!(retail()
        .pin("acct-a", "hsm")
        .pin("acct-A", "kms")
        .build(&backends())
        .is_ok());
}

#[test]
fn rollout_onto_unknown_backend() {
    assert_eq!(
        only_error(retail().rollout(rollout("p", "retail", "nope", 5.0))),
        PolicyError::RolloutUnknownBackend {
            rollout: "p".into(),
            backend: "nope".into()
        }
    );
}

#[test]
fn rollout_on_undeclared_tier() {
    assert_eq!(
        only_error(retail().rollout(rollout("p", "Retail", "kms", 5.0))),
        PolicyError::RolloutUnknownTier {
            rollout: "p".into(),
            tier: "Retail".into()
        }
    );
}

#[test]
fn rollout_with_bad_name() {
    for bad in ["", ".", "a/b", "with space"] {
        assert_eq!(
            only_error(retail().rollout(rollout(bad, "retail", "kms", 5.0))),
            PolicyError::InvalidRolloutName {
                rollout: bad.into()
            }
        );
    }
}

#[test]
fn two_rollouts_of_one_name() {
    assert_eq!(
        only_error(
            retail()
                .rollout(rollout("p", "retail", "kms", 5.0))
                .rollout(rollout("p", "institutional", "kms", 5.0))
        ),
        PolicyError::DuplicateRollout {
            rollout: "p".into()
        }
    );
}

#[test]
fn rollout_of_zero_percent() {
    for zero in [0.0, -0.0] {
        assert_eq!(
            only_error(retail().rollout(rollout("p", "retail", "kms", zero))),
            PolicyError::ZeroRollout {
                rollout: "p".into()
            }
        );
    }
}

#[test]
fn rollout_percent_out_of_range_or_too_precise() {
    for (bad, why) in [
        (f64::NAN, "not a number"),
        (f64::INFINITY, "not a number"),
        (-1.0, "between 0 and 100"),
        (100.01, "between 0 and 100"),
        (5.005, "two decimals"),
        (0.001, "two decimals"),
    ] {
        let e = only_error(retail().rollout(rollout("p", "retail", "kms", bad)));
        assert!(
            matches!(&e, PolicyError::InvalidPercent { reason, .. } if reason.contains(why)),
            "{bad}: {e:?}"
        );
    }
    // Binary floating point noise is not a third decimal.
    for ok in [5.07, 0.01, 33.33, 99.99, 100.0] {
        assert!(
            retail()
                .rollout(rollout("p", "retail", "kms", ok))
                .build(&backends())
                .is_ok(),
            "{ok}"
        );
    }
}

#[test]
fn rollout_onto_the_tiers_own_backend() {
    assert_eq!(
        only_error(retail().rollout(rollout("p", "retail", "local", 5.0))),
        PolicyError::RolloutOntoTierDefault {
            rollout: "p".into(),
            tier: "retail".into(),
            backend: "local".into()
        }
    );
}

#[test]
fn two_rollouts_of_one_tier_onto_one_backend() {
    assert_eq!(
        only_error(
            retail()
                .rollout(rollout("a", "retail", "kms", 5.0))
                .rollout(rollout("b", "retail", "kms", 5.0))
        ),
        PolicyError::OverlappingRollouts {
            tier: "retail".into(),
            backend: "kms".into(),
            first: "a".into(),
            second: "b".into()
        }
    );
    // The same backend on two different tiers is fine.
    assert!(retail()
        .rollout(rollout("a", "retail", "kms", 5.0))
        .rollout(rollout("b", "institutional", "kms", 5.0))
        .build(&backends())
        .is_ok());
}

#[test]
fn rollouts_of_one_tier_over_100_percent() {
    assert_eq!(
        only_error(
            retail()
                .rollout(rollout("a", "retail", "kms", 60.0))
                .rollout(rollout("b", "retail", "kms-new", 40.01))
        ),
        PolicyError::RolloutsOverfull {
            tier: "retail".into(),
            total: "100.01".into()
        }
    );
    // Exactly 100% in total is allowed (no warning: no single rollout is full).
    let p = retail()
        .rollout(rollout("a", "retail", "kms", 60.0))
        .rollout(rollout("b", "retail", "kms-new", 40.0))
        .build(&backends())
        .unwrap();
    assert!(p.warnings().is_empty());
    // Sums are per tier.
    assert!(retail()
        .rollout(rollout("a", "retail", "kms", 60.0))
        .rollout(rollout("b", "institutional", "kms-new", 60.0))
        .build(&backends())
        .is_ok());
}

#[test]
fn full_rollout_is_a_warning_not_an_error() {
    let p = retail()
        .rollout(rollout("all", "retail", "kms", 100.0))
        .build(&backends())
        .unwrap();
    assert_eq!(
        p.warnings(),
        [PolicyWarning::FullRollout {
            rollout: "all".into(),
            tier: "retail".into(),
            backend: "kms".into()
        }]
    );
    assert!(p.warnings()[0].to_string().contains("retail = \"kms\""));
    for i in 0..500 {
        assert_eq!(p.place(&format!("a{i}"), "retail").unwrap().backend, "kms");
    }
}

#[test]
fn check_lists_every_problem_in_order() {
    let b = Policy::builder(tiers(&[("retail", "gone")]))
        .pin("acct-1", "nope")
        .pin("acct-1", "hsm")
        .rollout(rollout("p", "ghost", "kms", 0.0));
    let errors = b.check(&backends());
    assert_eq!(errors.len(), 5, "{errors:?}");
    assert!(matches!(errors[0], PolicyError::UnknownBackend { .. }));
    assert!(matches!(errors[1], PolicyError::PinUnknownBackend { .. }));
    assert!(matches!(errors[2], PolicyError::DuplicatePin { .. }));
    assert!(matches!(errors[3], PolicyError::RolloutUnknownTier { .. }));
    assert!(matches!(errors[4], PolicyError::ZeroRollout { .. }));
    assert_eq!(b.build(&backends()).unwrap_err(), errors[0]);
    assert!(retail().check(&backends()).is_empty());
}

#[test]
fn error_messages_name_the_rule() {
    let e = only_error(retail().rollout(rollout("p", "retail", "local", 5.0)));
    assert_eq!(
        e.to_string(),
        "rollout \"p\" moves tier \"retail\" onto \"local\", which is already that tier's backend"
    );
}

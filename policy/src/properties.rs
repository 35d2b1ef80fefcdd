//! Property tests of the tier policy (proptest): a rollout's set is stable and widens
//! monotonically, its share is close to its percentage, and buckets spread uniformly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use proptest::prelude::*;

fn policy(name: &str, basis_points: u32) -> Policy {
    let tiers = [("retail", "local")]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let backends = ["local", "kms-new"].into_iter().map(String::from).collect();
    Policy::builder(tiers)
        .rollout(Rollout {
            name: name.into(),
            tier: "retail".into(),
            backend: "kms-new".into(),
            percent: f64::from(basis_points) / 100.0,
        })
        .build(&backends)
        .unwrap()
}

fn on_rollout(p: &Policy, account: &str) -> bool {
    p.place(account, "retail").unwrap().backend == "kms-new"
}

/// Deterministic pseudo-random ids from a seed (splitmix64), so that one proptest case
/// can draw 20,000 ids without 20,000 shrinkable values.
fn ids(seed: u64, n: usize) -> Vec<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-";
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    (0..n)
        .map(|_| {
            let len = 4 + (next() % 40) as usize;
            (0..len)
                .map(|_| char::from(ALPHABET[(next() % ALPHABET.len() as u64) as usize]))
                .collect()
        })
        .collect()
}

proptest! {
    #[test]
    fn rollout_is_stable_and_widening_is_monotone(
        account in "[A-Za-z0-9._:-]{1,128}",
        name in "[a-z0-9-]{1,20}",
        p in 1u32..=10_000,
        q in 1u32..=10_000,
    ) {
        let (p, q) = (p.min(q), p.max(q));
        let small = policy(&name, p);
        // Same answer twice, including from an independently built policy.
        let first = small.place(&account, "retail").unwrap();
        prop_assert_eq!(&first, &small.place(&account, "retail").unwrap());
        prop_assert_eq!(&first, &policy(&name, p).place(&account, "retail").unwrap());
        // In at p% => in at any q >= p.
        if on_rollout(&small, &account) {
            prop_assert!(on_rollout(&policy(&name, q), &account));
        }
        // And explain always agrees with place.
        prop_assert_eq!(small.explain(&account, "retail").unwrap().placement, first);
    }

}

proptest! {
    // 20,000 hashes per case: fewer cases keep the debug-build run short.
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn rollout_is_roughly_proportional(seed in any::<u64>(), p in 1u32..=10_000) {
        let ids = ids(seed, 20_000);
        let pol = policy("pilot", p);
        let inside = ids.iter().filter(|a| on_rollout(&pol, a)).count();
        let share = inside as f64 / ids.len() as f64 * 100.0;
        let want = f64::from(p) / 100.0;
        prop_assert!((share - want).abs() <= 1.5, "asked {want}%, got {share}%");
    }

    #[test]
    fn bucket_spread_is_uniform_enough(seed in any::<u64>()) {
        // Every tenth of the bucket range gets its share of 20,000 ids (10% ± 1.5%):
        // a biased hash would pass a single-threshold test at some p and fail here.
        let mut deciles = [0u32; 10];
        for a in ids(seed, 20_000) {
            deciles[(rollout_bucket("spread", &a) / 1_000) as usize] += 1;
        }
        for (i, n) in deciles.iter().enumerate() {
            let share = f64::from(*n) / 200.0;
            prop_assert!((share - 10.0).abs() <= 1.5, "decile {i}: {share}%");
        }
    }
}

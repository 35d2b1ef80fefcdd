//! Unit tests of authentication (`auth.rs`): tokens, scopes, prefixes, client certificates.
#![allow(clippy::unwrap_used)]

use super::*;

fn auth_with(token: &str, scopes: &[&str], prefix: Option<&str>) -> Authenticator {
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    Authenticator::new(vec![TokenEntry::new(
        "t",
        &hash_token(token),
        &scopes,
        prefix.map(String::from),
    )
    .unwrap()])
}

#[test]
fn right_token_authenticates_and_scopes_apply() {
    let a = auth_with("sgt_abc", &["shards:read"], None);
    let c = a.authenticate(Some("Bearer sgt_abc"), 0).unwrap();
    assert!(c.require(Scope::ShardsRead, Some("x")).is_ok());
    assert_eq!(
        c.require(Scope::ShardsWrite, None).unwrap_err().outcome(),
        "forbidden"
    );
}

#[test]
fn wrong_or_missing_token_is_unauthenticated() {
    let a = auth_with("sgt_abc", &["*"], None);
    for h in [
        None,
        Some("Bearer sgt_abd"),
        Some("Basic x"),
        Some("Bearer "),
    ] {
        assert_eq!(
            a.authenticate(h, 0).unwrap_err().error.outcome(),
            "unauthenticated"
        );
    }
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let a = auth_with("sgt_abc", &["shards:read"], None);
    for h in [
        "Bearer sgt_abc",
        "bearer sgt_abc",
        "BEARER sgt_abc",
        "bEaReR sgt_abc",
    ] {
        assert!(a.authenticate(Some(h), 0).is_ok(), "{h}");
    }
    for h in ["Bearersgt_abc", "Basic sgt_abc", "Bearer: sgt_abc"] {
        assert!(a.authenticate(Some(h), 0).is_err(), "{h}");
    }
}

#[test]
fn admin_never_goes_with_an_account_prefix() {
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(check_admin_prefix_rule(&s(&["*"]), None).is_ok());
    assert!(check_admin_prefix_rule(&s(&["admin"]), None).is_ok());
    assert!(check_admin_prefix_rule(&s(&["shards:read", "accounts:write"]), Some("acct-")).is_ok());
    let star = check_admin_prefix_rule(&s(&["*"]), Some("acct-")).unwrap_err();
    assert!(star.contains("'*' includes admin"), "{star}");
    let admin = check_admin_prefix_rule(&s(&["shards:read", "admin"]), Some("acct-")).unwrap_err();
    assert!(
        admin.contains("admin scope cannot go with an account prefix"),
        "{admin}"
    );
}

#[test]
fn a_prefixed_caller_is_refused_global_operations() {
    let a = auth_with("sgt_abc", &["admin"], Some("acct-A"));
    let c = a.authenticate(Some("Bearer sgt_abc"), 0).unwrap();
    assert_eq!(
        c.require_unprefixed(Scope::Admin).unwrap_err().outcome(),
        "forbidden"
    );
    assert!(c.require(Scope::Admin, Some("acct-A1")).is_ok());
    assert!(c.require(Scope::Admin, Some("other")).is_err());
    let b = auth_with("sgt_abc", &["admin"], None);
    let c = b.authenticate(Some("Bearer sgt_abc"), 0).unwrap();
    assert!(c.require_unprefixed(Scope::Admin).is_ok());
}

#[test]
fn prefix_is_exact_bytes() {
    let a = auth_with("sgt_abc", &["*"], Some("acct-A"));
    let c = a.authenticate(Some("Bearer sgt_abc"), 0).unwrap();
    assert!(c.reaches("acct-A1"));
    assert!(!c.reaches("acct-a1"));
    assert!(!c.reaches("acct-"));
}

fn entry(token: &str, expires_ms: Option<i64>) -> TokenEntry {
    TokenEntry::new("signer", &hash_token(token), &["*".to_string()], None)
        .unwrap()
        .expiring(expires_ms)
}

#[test]
fn expired_token_is_refused_from_its_expiry_on() {
    let a = Authenticator::new(vec![entry("sgt_x", Some(1_000))]);
    assert!(a.authenticate(Some("Bearer sgt_x"), 999).is_ok());
    let r = a.authenticate(Some("Bearer sgt_x"), 1_000).unwrap_err();
    assert_eq!(r.error.outcome(), "unauthenticated");
    assert_eq!(r.error.to_string(), "bearer token expired");
    assert_eq!(r.actor, "signer");
}

#[test]
fn revoked_token_is_refused_and_others_are_not() {
    let (a, b) = (entry("sgt_a", None), entry("sgt_b", None));
    let revoked = HashSet::from([a.id()]);
    let key = std::sync::Arc::new(AuditKey::from_bytes([3; 32]));
    let auth = Authenticator::with_revocations(vec![a.clone(), b], &revoked, Some(key.clone()));
    let r = auth.authenticate(Some("Bearer sgt_a"), 0).unwrap_err();
    assert_eq!(r.error.to_string(), "bearer token revoked");
    assert_eq!(r.credential, Some(credential_id(&key, &a.id())));
    let c = auth.authenticate(Some("Bearer sgt_b"), 0).unwrap();
    assert_eq!(c.credential.as_deref().map(str::len), Some(32));
    assert_ne!(c.credential, r.credential);
}

#[test]
fn unknown_token_is_named_by_its_credential_id_only() {
    let key = std::sync::Arc::new(AuditKey::from_bytes([3; 32]));
    let auth = Authenticator::with_revocations(vec![], &HashSet::new(), Some(key.clone()));
    let r = auth.authenticate(Some("Bearer sgt_guess"), 0).unwrap_err();
    assert_eq!(r.actor, "anonymous");
    let id = token_id(&hash_token("sgt_guess"));
    assert_eq!(r.credential, Some(credential_id(&key, &id)));
    // The credential id is keyed: another deployment's key gives another value.
    let other = AuditKey::from_bytes([4; 32]);
    assert_ne!(credential_id(&other, &id), credential_id(&key, &id));
    assert!(!r.credential.unwrap_or_default().contains(&id));
}

#[test]
fn tokens_sharing_a_name_are_distinct_callers() {
    let key = std::sync::Arc::new(AuditKey::from_bytes([3; 32]));
    let (a, b) = (entry("sgt_a", None), entry("sgt_b", None));
    assert_eq!(a.name, b.name);
    let auth = Authenticator::with_revocations(vec![a, b], &HashSet::new(), Some(key));
    let ca = auth.authenticate(Some("Bearer sgt_a"), 0).unwrap();
    let cb = auth.authenticate(Some("Bearer sgt_b"), 0).unwrap();
    assert_eq!(ca.name, cb.name);
    assert_ne!(ca.key(), cb.key());
    // Without an audit key the token ids tell them apart.
    let auth = Authenticator::new(vec![entry("sgt_a", None), entry("sgt_b", None)]);
    let ca = auth.authenticate(Some("Bearer sgt_a"), 0).unwrap();
    let cb = auth.authenticate(Some("Bearer sgt_b"), 0).unwrap();
    assert_ne!(ca.key(), cb.key());
}

#[test]
fn token_id_is_the_hash_prefix() {
    let h = hash_token("sgt_abc");
    assert_eq!(token_id(&h), h[..16]);
    assert_eq!(entry("sgt_abc", None).id(), h[..16]);
}

#[test]
fn generated_tokens_are_distinct_and_prefixed() {
    let a = generate_token();
    let b = generate_token();
    assert!(a.expose_secret().starts_with(TOKEN_PREFIX));
    assert_ne!(a.expose_secret(), b.expose_secret());
    assert!(!format!("{a:?}").contains(a.expose_secret()));
}

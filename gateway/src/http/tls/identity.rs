//! Client certificate -> identity: the names a verified client certificate carries (subject
//! CN, DNS / URI / email SANs), and the `[[tls.clients]]` entries that turn one of them into a
//! [`Caller`] with the same scopes and account reach a token would carry.
//!
//! Matching is exact: a CN or a URI or an email address byte for byte, a DNS name ignoring
//! ASCII case. Wildcards in a certificate are not expanded (an entry `dns = "*.svc"` matches
//! only a certificate carrying that very string). A certificate that matches two entries
//! maps to neither: which identity it is would depend on the order of the file.

use super::config::TlsClientConfig;
use crate::domain::auth::{Caller, Scope};
use x509_parser::extensions::GeneralName;

/// The names of a client certificate that `[[tls.clients]]` entries match on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    /// Common names in the subject (an entry matches only a subject with exactly one).
    pub common_names: Vec<String>,
    /// DNS names among the subject alternative names.
    pub dns: Vec<String>,
    /// URIs among the subject alternative names.
    pub uris: Vec<String>,
    /// Email addresses (rfc822Name) among the subject alternative names.
    pub emails: Vec<String>,
    /// The subject for audit details and logs: printable ASCII, at most 256 characters.
    pub subject: String,
}

impl CertNames {
    /// The names in a DER certificate. A certificate that does not parse has none (and so
    /// maps to no identity).
    pub fn parse(der: &[u8]) -> Self {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return Self {
                subject: "(unparseable certificate)".into(),
                ..Self::default()
            };
        };
        let mut names = Self {
            subject: printable(&cert.subject().to_string()),
            ..Self::default()
        };
        for cn in cert.subject().iter_common_name() {
            match cn.as_str() {
                Ok(s) => names.common_names.push(s.to_string()),
                // A CN that is not a string still counts, so "exactly one CN" stays true
                // to the certificate.
                Err(_) => names.common_names.push(String::new()),
            }
        }
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(s) => names.dns.push((*s).to_string()),
                    GeneralName::URI(s) => names.uris.push((*s).to_string()),
                    GeneralName::RFC822Name(s) => names.emails.push((*s).to_string()),
                    _ => {}
                }
            }
        }
        names
    }
}

/// `s` with everything but printable ASCII replaced by `?`, cut at 256 characters: a subject
/// lands in log lines and audit details, where it must not forge structure.
fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(256)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if s.chars().count() > 256 {
        out.push_str("...");
    }
    out
}

/// What one entry matches on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    Cn(String),
    /// Lower-cased.
    Dns(String),
    Uri(String),
    Email(String),
}

impl Matcher {
    fn matches(&self, names: &CertNames) -> bool {
        match self {
            // A subject with two CNs is not any one of them.
            Matcher::Cn(cn) => names.common_names.len() == 1 && names.common_names[0] == *cn,
            Matcher::Dns(d) => names.dns.iter().any(|n| n.eq_ignore_ascii_case(d)),
            Matcher::Uri(u) => names.uris.iter().any(|n| n == u),
            Matcher::Email(e) => names.emails.iter().any(|n| n == e),
        }
    }
}

/// Who a verified client certificate is.
#[derive(Debug, Clone)]
pub enum CertIdentity {
    /// Exactly one entry maps it.
    Mapped(Caller),
    /// No entry (or more than one) maps it; why, for the 401 and the audit event.
    Unmapped(String),
}

/// The `[[tls.clients]]` entries in force.
#[derive(Debug, Clone, Default)]
pub struct ClientMap {
    entries: Vec<(Matcher, Caller)>,
}

impl ClientMap {
    /// From validated entries (`TlsConfig::validate`): an entry without a matcher or with
    /// an unknown scope is skipped rather than widened.
    pub fn new(clients: &[TlsClientConfig]) -> Self {
        let mut entries = Vec::new();
        for c in clients {
            let matcher = match (&c.subject_cn, &c.dns, &c.uri, &c.email) {
                (Some(cn), None, None, None) => Matcher::Cn(cn.clone()),
                (None, Some(d), None, None) => Matcher::Dns(d.to_ascii_lowercase()),
                (None, None, Some(u), None) => Matcher::Uri(u.clone()),
                (None, None, None, Some(e)) => Matcher::Email(e.clone()),
                _ => continue,
            };
            let mut scopes = Vec::new();
            let mut known = true;
            for s in &c.scopes {
                if s == "*" {
                    scopes.extend(Scope::ALL);
                } else if let Some(sc) = Scope::parse(s) {
                    scopes.push(sc);
                } else {
                    known = false;
                }
            }
            if !known {
                continue;
            }
            // Keyed on the matcher: an identity no other entry can map (two entries
            // that match one certificate map neither), whatever the names say.
            let key = format!("cert:{matcher:?}");
            entries.push((
                matcher,
                Caller::new(&c.name, &scopes, c.account_prefix.clone()).keyed(key),
            ));
        }
        Self { entries }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The identity of a verified certificate with these names.
    pub fn identify(&self, names: &CertNames) -> CertIdentity {
        let mut found = self.entries.iter().filter(|(m, _)| m.matches(names));
        match (found.next(), found.next()) {
            (Some((_, caller)), None) => CertIdentity::Mapped(caller.clone()),
            (None, _) => CertIdentity::Unmapped(format!(
                "client certificate {} maps to no [[tls.clients]] entry",
                names.subject
            )),
            (Some((_, a)), Some((_, b))) => CertIdentity::Unmapped(format!(
                "client certificate {} matches more than one [[tls.clients]] entry ({:?}, {:?})",
                names.subject, a.name, b.name
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn entry(name: &str, kind: &str, value: &str, scopes: &[&str]) -> TlsClientConfig {
        let v = Some(value.to_string());
        TlsClientConfig {
            name: name.into(),
            subject_cn: (kind == "cn").then(|| v.clone()).flatten(),
            dns: (kind == "dns").then(|| v.clone()).flatten(),
            uri: (kind == "uri").then(|| v.clone()).flatten(),
            email: (kind == "email").then(|| v.clone()).flatten(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            account_prefix: None,
        }
    }

    fn names(cns: &[&str], dns: &[&str], uris: &[&str], emails: &[&str]) -> CertNames {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        CertNames {
            common_names: v(cns),
            dns: v(dns),
            uris: v(uris),
            emails: v(emails),
            subject: "CN=test".into(),
        }
    }

    fn mapped(map: &ClientMap, n: &CertNames) -> Option<Caller> {
        match map.identify(n) {
            CertIdentity::Mapped(c) => Some(c),
            CertIdentity::Unmapped(_) => None,
        }
    }

    #[test]
    fn each_kind_of_name_maps_exactly() {
        let map = ClientMap::new(&[
            entry("by-cn", "cn", "signer", &["shards:read"]),
            entry("by-dns", "dns", "Reader.Svc", &["shards:read"]),
            entry("by-uri", "uri", "spiffe://prod/ns/signer", &["*"]),
            entry("by-email", "email", "ops@example.com", &["metrics"]),
        ]);
        let c = mapped(&map, &names(&["signer"], &[], &[], &[])).unwrap();
        assert_eq!(c.name, "by-cn");
        assert!(c.has(Scope::ShardsRead) && !c.has(Scope::ShardsWrite));
        // DNS ignores ASCII case; CN, URI and email do not.
        let c = mapped(&map, &names(&[], &["reader.svc"], &[], &[])).unwrap();
        assert_eq!(c.name, "by-dns");
        assert!(mapped(&map, &names(&["Signer"], &[], &[], &[])).is_none());
        assert!(mapped(&map, &names(&[], &[], &["spiffe://prod/ns/Signer"], &[])).is_none());
        let c = mapped(&map, &names(&[], &[], &["spiffe://prod/ns/signer"], &[])).unwrap();
        assert!(c.has(Scope::Admin));
        let c = mapped(&map, &names(&[], &[], &[], &["ops@example.com"])).unwrap();
        assert!(c.has(Scope::Metrics) && !c.has(Scope::Admin));
        // A name in the wrong place is not that name: a CN is not a DNS SAN.
        assert!(mapped(&map, &names(&["reader.svc"], &[], &[], &[])).is_none());
        assert!(mapped(&map, &names(&[], &["signer"], &[], &[])).is_none());
    }

    #[test]
    fn two_common_names_or_two_entries_map_to_nothing() {
        let map = ClientMap::new(&[
            entry("a", "cn", "signer", &["*"]),
            entry("b", "dns", "signer.svc", &["shards:read"]),
        ]);
        assert!(mapped(&map, &names(&["signer", "other"], &[], &[], &[])).is_none());
        match map.identify(&names(&["signer"], &["signer.svc"], &[], &[])) {
            CertIdentity::Unmapped(why) => assert!(why.contains("more than one"), "{why}"),
            CertIdentity::Mapped(c) => panic!("mapped to {}", c.name),
        }
    }

    #[test]
    fn subjects_are_made_printable_and_short() {
        assert_eq!(printable("CN=a\nb\u{1b}[31m"), "CN=a?b?[31m");
        let long = "x".repeat(300);
        assert_eq!(printable(&long).len(), 259);
    }

    #[test]
    fn names_are_read_from_a_real_certificate() {
        let mut p = rcgen::CertificateParams::new(vec!["Signer.svc".to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "signer\nforged");
        p.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://prod/signer".try_into().unwrap(),
        ));
        p.subject_alt_names.push(rcgen::SanType::Rfc822Name(
            "ops@example.com".try_into().unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let n = CertNames::parse(cert.der());
        assert_eq!(n.common_names, ["signer\nforged"]);
        assert_eq!(n.dns, ["Signer.svc"]);
        assert_eq!(n.uris, ["spiffe://prod/signer"]);
        assert_eq!(n.emails, ["ops@example.com"]);
        assert!(!n.subject.contains('\n'), "{}", n.subject);
        assert!(n.subject.contains("signer"), "{}", n.subject);
    }

    #[test]
    fn garbage_is_a_certificate_without_names() {
        let n = CertNames::parse(b"not a certificate");
        assert!(n.common_names.is_empty() && n.dns.is_empty());
        let map = ClientMap::new(&[entry("a", "cn", "", &["*"])]);
        assert!(mapped(&map, &n).is_none());
    }
}

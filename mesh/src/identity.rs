//! SPIFFE identities as Istio issues them: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! The parser is strict on purpose: the identity decides who may call whom, so anything that is not
//! exactly the form Istio issues is rejected rather than guessed at.

use std::fmt;

/// Longest identity accepted (SPIFFE caps an ID at 2048 bytes).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Why a string is not a workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("identity is empty")]
    Empty,
    #[error("identity is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    #[error("identity is not valid UTF-8")]
    NotUtf8,
    #[error("identity must start with `spiffe://`")]
    Scheme,
    #[error(
        "trust domain `{0}` is not a valid trust domain (lowercase letters, digits, `.`, `-`, `_`)"
    )]
    TrustDomain(String),
    #[error("path must be `/ns/<namespace>/sa/<service-account>`, got `{0}`")]
    Path(String),
    #[error("`{0}` is not a valid Kubernetes name (RFC 1123 label, at most 63 characters)")]
    Name(String),
}

/// A workload identity in the Istio SPIFFE form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an identity from its parts, validating each.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        validate_trust_domain(trust_domain)?;
        validate_dns_label(namespace)?;
        validate_dns_label(service_account)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// Parses raw bytes as Envoy hands them over (`connection.uri_san_peer_certificate`).
    pub fn parse_bytes(raw: &[u8]) -> Result<Self, IdentityError> {
        if raw.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdentityError::TooLong);
        }
        let s = std::str::from_utf8(raw).map_err(|_| IdentityError::NotUtf8)?;
        Self::parse(s)
    }

    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let (td, ns, sa) = Self::split(s)?;
        Ok(Self {
            trust_domain: td.to_owned(),
            namespace: ns.to_owned(),
            service_account: sa.to_owned(),
        })
    }

    /// Is `raw` an identity [`SpiffeId::parse_bytes`] accepts? Allocates nothing.
    pub fn is_valid(raw: &[u8]) -> bool {
        raw.len() <= MAX_SPIFFE_ID_LEN
            && std::str::from_utf8(raw).is_ok_and(|s| Self::split(s).is_ok())
    }

    /// The validated trust domain, namespace and service account of `s`.
    fn split(s: &str) -> Result<(&str, &str, &str), IdentityError> {
        if s.is_empty() {
            return Err(IdentityError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdentityError::TooLong);
        }
        let rest = s.strip_prefix("spiffe://").ok_or(IdentityError::Scheme)?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| IdentityError::Path(String::new()))?;
        validate_trust_domain(td)?;
        let mut parts = path.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => {
                validate_dns_label(ns)?;
                validate_dns_label(sa)?;
                Ok((td, ns, sa))
            }
            _ => Err(IdentityError::Path(format!("/{path}"))),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(IdentityError::TrustDomain(td.to_owned()))
    }
}

/// Validates an RFC 1123 label: the form of Kubernetes namespace, service and service-account names.
pub fn validate_dns_label(name: &str) -> Result<(), IdentityError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Name(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_istio_form() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/user-service").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "user-service");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/shop/sa/user-service"
        );
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "spiffe://",
            "http://cluster.local/ns/a/sa/b",
            "SPIFFE://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe://cluster.local/ns/a/sa/b/",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns/a/sa/",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/sa/b/ns/a",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://cluster.local/ns/a/sa/-b",
            "spiffe://clu ster/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b?x",
            "spiffe://cluster.local/ns/a/sa/b%2f",
            "spiffe://user@cluster.local/ns/a/sa/b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "accepted {bad:?}");
            assert!(!SpiffeId::is_valid(bad.as_bytes()), "valid {bad:?}");
        }
        assert_eq!(
            SpiffeId::parse_bytes(b"spiffe://td/ns/a/sa/\xff"),
            Err(IdentityError::NotUtf8)
        );
        let long = format!("spiffe://td/ns/a/sa/{}", "b".repeat(MAX_SPIFFE_ID_LEN));
        assert_eq!(SpiffeId::parse(&long), Err(IdentityError::TooLong));
        assert!(!SpiffeId::is_valid(long.as_bytes()));
        assert!(!SpiffeId::is_valid(b"spiffe://td/ns/a/sa/\xff"));
        assert!(SpiffeId::is_valid(b"spiffe://td/ns/a/sa/b"));
    }

    #[test]
    fn labels_follow_rfc1123() {
        assert!(validate_dns_label("order-service").is_ok());
        assert!(validate_dns_label(&"a".repeat(63)).is_ok());
        assert!(validate_dns_label(&"a".repeat(64)).is_err());
        assert!(validate_dns_label("a_b").is_err());
        assert!(validate_dns_label("a-").is_err());
    }
}

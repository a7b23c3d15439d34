//! The authorization decision, compiled from an [`AuthzConfig`].
//!
//! The decision is a pure function of the request facts the sidecar exposes, so it is tested here
//! natively and the filter only gathers the facts and acts on the result. Lookup is one hash of
//! the peer identity: O(1) in the number of callers configured for the workload.

use std::collections::HashMap;

use crate::config::{AuthzConfig, ConfigError, LogLevel, Mode};
use crate::http::{normalized_path, path_has_prefix, PathProblem};
use crate::identity::SpiffeId;

/// Why a request was denied. The string forms are stable: they appear in the `x-meshguard-deny-reason`
/// header, the JSON body, logs and the `reason` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// The connection is not mutual TLS (or the sidecar does not say it is).
    NoMtls,
    /// mTLS, but the peer certificate carries no URI SAN.
    NoPeerIdentity,
    /// The peer's URI SAN is not an Istio SPIFFE identity.
    InvalidPeerIdentity,
    /// A valid identity that the policy does not admit to this workload.
    UnknownPeer,
    /// The request has no `:method`.
    MissingMethod,
    /// The caller is admitted, but not for this method.
    MethodNotAllowed,
    /// The request's `:path` is missing or not a path.
    InvalidPath,
    /// The path contains dot segments, empty segments or encoded separators, so prefix matching
    /// would be unsound.
    PathNotNormalized,
    /// The caller is admitted, but not for this path.
    PathNotAllowed,
    /// The filter has no valid configuration.
    ConfigInvalid,
}

impl DenyReason {
    /// Every reason, for tests and dashboards.
    pub const ALL: [DenyReason; 10] = [
        Self::NoMtls,
        Self::NoPeerIdentity,
        Self::InvalidPeerIdentity,
        Self::UnknownPeer,
        Self::MissingMethod,
        Self::MethodNotAllowed,
        Self::InvalidPath,
        Self::PathNotNormalized,
        Self::PathNotAllowed,
        Self::ConfigInvalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoMtls => "no_mtls",
            Self::NoPeerIdentity => "no_peer_identity",
            Self::InvalidPeerIdentity => "invalid_peer_identity",
            Self::UnknownPeer => "unknown_peer",
            Self::MissingMethod => "missing_method",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InvalidPath => "invalid_path",
            Self::PathNotNormalized => "path_not_normalized",
            Self::PathNotAllowed => "path_not_allowed",
            Self::ConfigInvalid => "config_invalid",
        }
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the sidecar knows about a request, as raw bytes (headers may be anything).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFacts<'a> {
    /// `connection.mtls`; `None` when the property is absent.
    pub mtls: Option<bool>,
    /// `connection.uri_san_peer_certificate`.
    pub peer_identity: Option<&'a [u8]>,
    /// `:method`.
    pub method: Option<&'a [u8]>,
    /// `:path`.
    pub path: Option<&'a [u8]>,
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'p> {
    Allow {
        /// The caller's service name from the policy.
        source: &'p str,
    },
    Deny {
        reason: DenyReason,
        /// The caller's service name when its identity is known to the mesh, for labels.
        source: Option<&'p str>,
    },
}

impl Decision<'_> {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

#[derive(Debug, Clone)]
struct Caller {
    service: String,
    methods: Vec<String>,
    path_prefixes: Vec<String>,
}

/// A validated, compiled policy for one workload.
#[derive(Debug, Clone)]
pub struct Authorizer {
    workload: String,
    mode: Mode,
    log_level: LogLevel,
    callers: HashMap<String, Caller>,
    known_peers: HashMap<String, String>,
}

impl Authorizer {
    /// Validates `config` and compiles it.
    pub fn new(config: AuthzConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let callers = config
            .allow
            .into_iter()
            .map(|e| {
                (
                    e.from,
                    Caller {
                        service: e.service,
                        methods: e.methods,
                        path_prefixes: e.path_prefixes,
                    },
                )
            })
            .collect();
        Ok(Self {
            workload: config.workload,
            mode: config.mode,
            log_level: config.log_level,
            callers,
            known_peers: config.known_peers.into_iter().collect(),
        })
    }

    /// Parses, validates and compiles a JSON configuration.
    pub fn from_json(raw: &[u8]) -> Result<Self, ConfigError> {
        Self::new(AuthzConfig::from_json(raw)?)
    }

    pub fn workload(&self) -> &str {
        &self.workload
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn log_level(&self) -> LogLevel {
        self.log_level
    }

    /// Decides one request. Fail-closed: every missing or malformed fact denies.
    pub fn decide(&self, facts: &RequestFacts<'_>) -> Decision<'_> {
        if facts.mtls != Some(true) {
            return Decision::Deny {
                reason: DenyReason::NoMtls,
                source: None,
            };
        }
        let raw_id = match facts.peer_identity {
            Some(id) if !id.is_empty() => id,
            _ => {
                return Decision::Deny {
                    reason: DenyReason::NoPeerIdentity,
                    source: None,
                }
            }
        };
        // The parser accepts only the exact canonical form, so the validated text is the lookup key.
        let Some(id) = std::str::from_utf8(raw_id)
            .ok()
            .filter(|text| SpiffeId::parse(text).is_ok())
        else {
            return Decision::Deny {
                reason: DenyReason::InvalidPeerIdentity,
                source: None,
            };
        };
        let Some(caller) = self.callers.get(id) else {
            return Decision::Deny {
                reason: DenyReason::UnknownPeer,
                source: self.known_peers.get(id).map(String::as_str),
            };
        };
        let source = Some(caller.service.as_str());
        let deny = |reason| Decision::Deny { reason, source };
        if !caller.methods.is_empty() {
            let Some(method) = facts.method.filter(|m| !m.is_empty()) else {
                return deny(DenyReason::MissingMethod);
            };
            if !caller.methods.iter().any(|m| m.as_bytes() == method) {
                return deny(DenyReason::MethodNotAllowed);
            }
        }
        if !caller.path_prefixes.is_empty() {
            let path = match facts.path.map(normalized_path) {
                None | Some(Err(PathProblem::Malformed)) => return deny(DenyReason::InvalidPath),
                Some(Err(PathProblem::NotNormalized)) => {
                    return deny(DenyReason::PathNotNormalized)
                }
                Some(Ok(p)) => p,
            };
            if !caller
                .path_prefixes
                .iter()
                .any(|prefix| path_has_prefix(path, prefix))
            {
                return deny(DenyReason::PathNotAllowed);
            }
        }
        Decision::Allow {
            source: &caller.service,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &[u8] = b"spiffe://cluster.local/ns/shop/sa/user-service";

    fn order_authorizer() -> Authorizer {
        Authorizer::from_json(
            br#"{"workload":"order-service","allow":[
                {"from":"spiffe://cluster.local/ns/shop/sa/user-service","service":"user-service",
                 "methods":["GET","POST"],"path_prefixes":["/orders"]},
                {"from":"spiffe://cluster.local/ns/shop/sa/admin","service":"admin"}]}"#,
        )
        .unwrap()
    }

    fn facts<'a>(id: &'a [u8], method: &'a [u8], path: &'a [u8]) -> RequestFacts<'a> {
        RequestFacts {
            mtls: Some(true),
            peer_identity: Some(id),
            method: Some(method),
            path: Some(path),
        }
    }

    fn reason(d: Decision<'_>) -> Option<DenyReason> {
        match d {
            Decision::Allow { .. } => None,
            Decision::Deny { reason, .. } => Some(reason),
        }
    }

    #[test]
    fn admits_the_policy_and_nothing_else() {
        let a = order_authorizer();
        assert_eq!(
            a.decide(&facts(USER, b"GET", b"/orders?user_id=1")),
            Decision::Allow {
                source: "user-service"
            }
        );
        assert!(a
            .decide(&facts(
                b"spiffe://cluster.local/ns/shop/sa/admin",
                b"DELETE",
                b"/x"
            ))
            .is_allow());
        let d = |f: RequestFacts<'_>| reason(a.decide(&f));
        assert_eq!(
            d(facts(
                b"spiffe://cluster.local/ns/shop/sa/payment-service",
                b"GET",
                b"/orders"
            )),
            Some(DenyReason::UnknownPeer)
        );
        assert_eq!(
            d(facts(
                b"spiffe://other.domain/ns/shop/sa/user-service",
                b"GET",
                b"/orders"
            )),
            Some(DenyReason::UnknownPeer)
        );
        assert_eq!(
            d(facts(USER, b"DELETE", b"/orders")),
            Some(DenyReason::MethodNotAllowed)
        );
        assert_eq!(
            d(facts(USER, b"get", b"/orders")),
            Some(DenyReason::MethodNotAllowed)
        );
        assert_eq!(
            d(facts(USER, b"GET", b"/admin")),
            Some(DenyReason::PathNotAllowed)
        );
        assert_eq!(
            d(facts(USER, b"GET", b"/orders-admin")),
            Some(DenyReason::PathNotAllowed)
        );
        assert_eq!(
            d(facts(USER, b"GET", b"/orders/../admin")),
            Some(DenyReason::PathNotNormalized)
        );
        assert_eq!(
            d(facts(USER, b"GET", b"\xff")),
            Some(DenyReason::InvalidPath)
        );
        assert_eq!(
            d(RequestFacts {
                path: None,
                ..facts(USER, b"GET", b"")
            }),
            Some(DenyReason::InvalidPath)
        );
        assert_eq!(
            d(RequestFacts {
                method: None,
                ..facts(USER, b"", b"/orders")
            }),
            Some(DenyReason::MissingMethod)
        );
    }

    #[test]
    fn fails_closed_on_missing_transport_facts() {
        let a = order_authorizer();
        let d = |f: RequestFacts<'_>| reason(a.decide(&f));
        assert_eq!(
            d(RequestFacts {
                mtls: None,
                ..facts(USER, b"GET", b"/orders")
            }),
            Some(DenyReason::NoMtls)
        );
        assert_eq!(
            d(RequestFacts {
                mtls: Some(false),
                ..facts(USER, b"GET", b"/orders")
            }),
            Some(DenyReason::NoMtls)
        );
        assert_eq!(
            d(RequestFacts {
                peer_identity: None,
                ..facts(USER, b"GET", b"/orders")
            }),
            Some(DenyReason::NoPeerIdentity)
        );
        assert_eq!(
            d(facts(b"", b"GET", b"/orders")),
            Some(DenyReason::NoPeerIdentity)
        );
        assert_eq!(
            d(facts(
                b"spiffe://cluster.local/ns/shop/sa/user-service/",
                b"GET",
                b"/orders"
            )),
            Some(DenyReason::InvalidPeerIdentity)
        );
        assert_eq!(
            d(facts(b"\xffspiffe", b"GET", b"/orders")),
            Some(DenyReason::InvalidPeerIdentity)
        );
    }

    #[test]
    fn empty_policy_denies_everyone() {
        let a = Authorizer::from_json(br#"{"workload":"user-service","allow":[]}"#).unwrap();
        assert_eq!(
            reason(a.decide(&facts(USER, b"GET", b"/"))),
            Some(DenyReason::UnknownPeer)
        );
    }

    #[test]
    fn reasons_have_distinct_stable_names() {
        let names: std::collections::HashSet<_> =
            DenyReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), DenyReason::ALL.len());
    }
}

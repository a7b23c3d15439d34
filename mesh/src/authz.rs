//! The authorization decision, compiled from an [`AuthzConfig`].
//!
//! The decision is a pure function of the request facts the sidecar exposes, so it is tested here
//! natively and the filter only gathers the facts and acts on the result. Lookup is one hash of
//! the peer identity: O(1) in the number of callers configured for the workload.

use crate::config::{AuthzConfig, ConfigError, LogLevel, Mode};
use crate::fasthash::BytesTable;
use crate::http::{normalized_path, path_has_prefix, query_has_method_override, PathProblem};
use crate::identity::SpiffeId;
use crate::node::NodeFacts;

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
    /// The caller is admitted only for some methods, and the request asks the backend to run
    /// another one (a method-override header or a `_method` query parameter).
    MethodOverride,
    /// The filter runs in another workload than the one it was configured for.
    WrongWorkload,
    /// The filter has no valid configuration.
    ConfigInvalid,
}

impl DenyReason {
    /// Every reason, for tests and dashboards.
    pub const ALL: [DenyReason; 12] = [
        Self::NoMtls,
        Self::NoPeerIdentity,
        Self::InvalidPeerIdentity,
        Self::UnknownPeer,
        Self::MissingMethod,
        Self::MethodNotAllowed,
        Self::InvalidPath,
        Self::PathNotNormalized,
        Self::PathNotAllowed,
        Self::MethodOverride,
        Self::WrongWorkload,
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
            Self::MethodOverride => "method_override",
            Self::WrongWorkload => "wrong_workload",
            Self::ConfigInvalid => "config_invalid",
        }
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where [`Authorizer::decide_with`] gets the request's facts. The decision asks only for what it
/// needs (the method and path only when the caller's rule narrows by them), so a filter can read
/// each fact from the host on demand.
pub trait Facts {
    /// `connection.mtls`; `None` when the property is absent. Asked only when the request has
    /// no peer identity (see [`Authorizer::decide_with`]).
    fn mtls(&mut self) -> Option<bool>;
    /// `connection.uri_san_peer_certificate`.
    fn peer_identity(&mut self) -> Option<&[u8]>;
    /// `connection.uri_san_local_certificate`: asked only when the node metadata could not
    /// confirm the workload.
    fn local_identity(&mut self) -> Option<&[u8]>;
    /// `:method`.
    fn method(&mut self) -> Option<&[u8]>;
    /// `:path`.
    fn path(&mut self) -> Option<&[u8]>;
    /// Is any of [`crate::http::METHOD_OVERRIDE_HEADERS`] present?
    fn has_method_override_header(&mut self) -> bool;
}

/// What the sidecar knows about a request, as raw bytes (headers may be anything).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFacts<'a> {
    /// `connection.mtls`; `None` when the property is absent.
    pub mtls: Option<bool>,
    /// `connection.uri_san_peer_certificate`.
    pub peer_identity: Option<&'a [u8]>,
    /// `connection.uri_san_local_certificate`.
    pub local_identity: Option<&'a [u8]>,
    /// `:method`.
    pub method: Option<&'a [u8]>,
    /// `:path`.
    pub path: Option<&'a [u8]>,
    /// Whether a method-override header is present.
    pub method_override_header: bool,
}

impl Facts for RequestFacts<'_> {
    fn mtls(&mut self) -> Option<bool> {
        self.mtls
    }
    fn peer_identity(&mut self) -> Option<&[u8]> {
        self.peer_identity
    }
    fn local_identity(&mut self) -> Option<&[u8]> {
        self.local_identity
    }
    fn method(&mut self) -> Option<&[u8]> {
        self.method
    }
    fn path(&mut self) -> Option<&[u8]> {
        self.path
    }
    fn has_method_override_header(&mut self) -> bool {
        self.method_override_header
    }
}

/// What the node metadata says about the workload a filter runs in, against its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkloadCheck {
    /// The metadata names the configured workload and identity: nothing to check per request.
    Confirmed,
    /// The metadata cannot confirm the identity (no node, or no namespace/service account in
    /// it): every mTLS request's local certificate is compared with the configured identity.
    PerRequest,
    /// The metadata names the configured workload; no identity is configured to check.
    NameOnly,
    /// The filter runs in another workload: every request is denied with `wrong_workload`.
    Mismatch(String),
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
    identity: Option<SpiffeId>,
    identity_text: Option<String>,
    workload_check: WorkloadCheck,
    mode: Mode,
    log_level: LogLevel,
    /// By the exact identity bytes: every key was validated with the configuration, so a hit
    /// needs no parsing.
    callers: BytesTable<Caller>,
    known_peers: BytesTable<String>,
}

impl Authorizer {
    /// Validates `config` and compiles it.
    #[inline(never)] // see `config::parse_json`
    pub fn new(config: AuthzConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let identity = match &config.identity {
            Some(id) => {
                Some(SpiffeId::parse(id).map_err(|e| ConfigError::new("identity", e.to_string()))?)
            }
            None => None,
        };
        let workload_check = if identity.is_some() {
            WorkloadCheck::PerRequest
        } else {
            WorkloadCheck::NameOnly
        };
        let callers = config
            .allow
            .into_iter()
            .map(|e| {
                (
                    e.from.into_bytes().into_boxed_slice(),
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
            identity_text: identity.as_ref().map(ToString::to_string),
            identity,
            workload_check,
            mode: config.mode,
            log_level: config.log_level,
            callers,
            known_peers: config
                .known_peers
                .into_iter()
                .map(|(id, service)| (id.into_bytes().into_boxed_slice(), service))
                .collect(),
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

    /// The configured identity of the protected workload's pods.
    pub fn identity(&self) -> Option<&SpiffeId> {
        self.identity.as_ref()
    }

    /// How the workload is being checked (see [`Authorizer::check_node`]).
    pub fn workload_check(&self) -> &WorkloadCheck {
        &self.workload_check
    }

    /// Compares the node the filter runs in (`None`: nothing is known about it) with the
    /// configuration, and remembers the outcome for [`Authorizer::decide`]. A `WORKLOAD_NAME`,
    /// `NAMESPACE` or `SERVICE_ACCOUNT` that differs from the configuration is a mismatch.
    pub fn check_node(&mut self, node: Option<&NodeFacts>) -> &WorkloadCheck {
        let node = node.cloned().unwrap_or_default();
        let mut wrong = Vec::new();
        if let Some(name) = node.workload_name.as_deref() {
            if name != self.workload {
                wrong.push(format!("workload `{name}`, not `{}`", self.workload));
            }
        }
        let mut identity_confirmed = false;
        if let Some(id) = &self.identity {
            if let Some(ns) = node.namespace.as_deref() {
                if ns != id.namespace() {
                    wrong.push(format!("namespace `{ns}`, not `{}`", id.namespace()));
                }
            }
            if let Some(sa) = node.service_account.as_deref() {
                if sa != id.service_account() {
                    wrong.push(format!(
                        "service account `{sa}`, not `{}`",
                        id.service_account()
                    ));
                }
            }
            identity_confirmed = node.namespace.is_some() && node.service_account.is_some();
        }
        self.workload_check = if !wrong.is_empty() {
            WorkloadCheck::Mismatch(wrong.join(", "))
        } else if self.identity.is_none() {
            WorkloadCheck::NameOnly
        } else if identity_confirmed {
            WorkloadCheck::Confirmed
        } else {
            WorkloadCheck::PerRequest
        };
        &self.workload_check
    }

    /// Decides one request. Fail-closed: every missing or malformed fact denies.
    pub fn decide(&self, facts: &RequestFacts<'_>) -> Decision<'_> {
        let mut facts = *facts;
        self.decide_with(&mut facts)
    }

    /// [`Authorizer::decide`], asking `facts` for each fact only when the decision needs it.
    pub fn decide_with(&self, facts: &mut impl Facts) -> Decision<'_> {
        let wrong_workload = Decision::Deny {
            reason: DenyReason::WrongWorkload,
            source: None,
        };
        if matches!(self.workload_check, WorkloadCheck::Mismatch(_)) {
            return wrong_workload;
        }
        // A peer URI SAN is read from the certificate the peer presented, which is exactly what
        // Envoy's `connection.mtls` says (source/extensions/filters/common/expr/context.cc,
        // `ConnectionLookup`: TLS and `peerCertificatePresented()`). So a request with one is
        // mTLS, and `connection.mtls` is asked only for a request without: one host call fewer.
        let has_peer = facts.peer_identity().is_some_and(|id| !id.is_empty());
        if !has_peer && facts.mtls() != Some(true) {
            return Decision::Deny {
                reason: DenyReason::NoMtls,
                source: None,
            };
        }
        if let (WorkloadCheck::PerRequest, Some(own)) = (&self.workload_check, &self.identity_text)
        {
            // The parser accepts only the canonical form, so equal identities are equal bytes.
            if facts.local_identity() != Some(own.as_bytes()) {
                return wrong_workload;
            }
        }
        let caller = {
            let raw_id = match facts.peer_identity() {
                Some(id) if !id.is_empty() => id,
                _ => {
                    return Decision::Deny {
                        reason: DenyReason::NoPeerIdentity,
                        source: None,
                    }
                }
            };
            // The configuration's identities are validated and the parser accepts only the exact
            // canonical form, so the raw bytes are the lookup key, and only a miss needs parsing
            // to tell an invalid identity from an unknown one.
            match self.callers.get(raw_id) {
                Some(caller) => caller,
                None => {
                    // A known peer's identity was validated with the configuration too.
                    if let Some(service) = self.known_peers.get(raw_id) {
                        return Decision::Deny {
                            reason: DenyReason::UnknownPeer,
                            source: Some(service.as_str()),
                        };
                    }
                    return Decision::Deny {
                        reason: if SpiffeId::is_valid(raw_id) {
                            DenyReason::UnknownPeer
                        } else {
                            DenyReason::InvalidPeerIdentity
                        },
                        source: None,
                    };
                }
            }
        };
        let source = Some(caller.service.as_str());
        let deny = |reason| Decision::Deny { reason, source };
        if !caller.methods.is_empty() {
            let Some(method) = facts.method().filter(|m| !m.is_empty()) else {
                return deny(DenyReason::MissingMethod);
            };
            if !caller.methods.iter().any(|m| m.as_bytes() == method) {
                return deny(DenyReason::MethodNotAllowed);
            }
            // The backend may run another method than `:method`: an override is only safe when
            // every method is admitted, which is the case without narrowing.
            if facts.has_method_override_header()
                || facts.path().is_some_and(query_has_method_override)
            {
                return deny(DenyReason::MethodOverride);
            }
        }
        if !caller.path_prefixes.is_empty() {
            let path = match facts.path().map(normalized_path) {
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
            ..RequestFacts::default()
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
        // Without a peer identity, `connection.mtls` decides, and only an exact true passes.
        for mtls in [None, Some(false)] {
            assert_eq!(
                d(RequestFacts {
                    mtls,
                    peer_identity: None,
                    ..facts(USER, b"GET", b"/orders")
                }),
                Some(DenyReason::NoMtls)
            );
        }
        // A peer URI SAN comes from the certificate the peer presented, which is what Envoy's
        // `connection.mtls` means: with one, `connection.mtls` is not asked.
        for mtls in [None, Some(false)] {
            assert_eq!(
                d(RequestFacts {
                    mtls,
                    ..facts(USER, b"GET", b"/orders")
                }),
                None
            );
        }
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
    fn path_parameters_and_overrides_do_not_widen_a_narrowed_rule() {
        let a = order_authorizer();
        let d = |f: RequestFacts<'_>| reason(a.decide(&f));
        for path in [
            &b"/orders/..;/admin"[..],
            b"/orders/.;/admin",
            b"/orders;/../admin",
            b"/orders/%3b/../admin",
            b"/orders/x;y",
        ] {
            assert_eq!(
                d(facts(USER, b"GET", path)),
                Some(DenyReason::PathNotNormalized),
                "{path:?}"
            );
        }
        for path in [
            &b"/orders?_method=DELETE"[..],
            b"/orders?a=1&%5Fmethod=DELETE",
            b"/orders?_METHOD=get",
        ] {
            assert_eq!(
                d(facts(USER, b"GET", path)),
                Some(DenyReason::MethodOverride),
                "{path:?}"
            );
        }
        assert_eq!(
            d(RequestFacts {
                method_override_header: true,
                ..facts(USER, b"POST", b"/orders")
            }),
            Some(DenyReason::MethodOverride)
        );
        // A caller without method narrowing may run any method anyway.
        let admin = b"spiffe://cluster.local/ns/shop/sa/admin";
        assert!(a
            .decide(&RequestFacts {
                method_override_header: true,
                ..facts(admin, b"GET", b"/x?_method=DELETE")
            })
            .is_allow());
    }

    fn order_with_identity() -> Authorizer {
        Authorizer::from_json(
            br#"{"workload":"order-service","identity":"spiffe://cluster.local/ns/shop/sa/order-service",
                 "allow":[{"from":"spiffe://cluster.local/ns/shop/sa/user-service","service":"user-service"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_workload_is_checked_against_node_metadata() {
        let node = |name: &str, ns: Option<&str>, sa: Option<&str>| NodeFacts {
            workload_name: Some(name.into()),
            namespace: ns.map(Into::into),
            service_account: sa.map(Into::into),
        };
        let mut a = order_with_identity();
        assert_eq!(
            a.check_node(Some(&node(
                "order-service",
                Some("shop"),
                Some("order-service")
            ))),
            &WorkloadCheck::Confirmed
        );
        assert!(a.decide(&facts(USER, b"GET", b"/")).is_allow());
        for wrong in [
            node("payment-service", Some("shop"), Some("order-service")),
            node("order-service", Some("other"), Some("order-service")),
            node("order-service", Some("shop"), Some("payment-service")),
        ] {
            let mut a = order_with_identity();
            assert!(matches!(
                a.check_node(Some(&wrong)),
                WorkloadCheck::Mismatch(_)
            ));
            assert_eq!(
                reason(a.decide(&facts(USER, b"GET", b"/"))),
                Some(DenyReason::WrongWorkload)
            );
        }
        // Without a namespace or service account in the metadata, each request's local
        // certificate decides.
        let mut a = order_with_identity();
        assert_eq!(
            a.check_node(Some(&node("order-service", None, None))),
            &WorkloadCheck::PerRequest
        );
        let own = b"spiffe://cluster.local/ns/shop/sa/order-service";
        let with_local = |local: Option<&'static [u8]>| RequestFacts {
            local_identity: local,
            ..facts(USER, b"GET", b"/")
        };
        assert!(a.decide(&with_local(Some(own))).is_allow());
        for local in [
            None,
            Some(&b"spiffe://cluster.local/ns/shop/sa/payment-service"[..]),
            Some(b"spiffe://cluster.local/ns/shop/sa/order-service/"),
            Some(b""),
        ] {
            assert_eq!(
                reason(a.decide(&with_local(local))),
                Some(DenyReason::WrongWorkload),
                "{local:?}"
            );
        }
        // No node at all: the same per-request check.
        let mut a = order_with_identity();
        assert_eq!(a.check_node(None), &WorkloadCheck::PerRequest);
        // No identity configured: only the workload name can be checked.
        let mut a = order_authorizer();
        assert_eq!(a.check_node(None), &WorkloadCheck::NameOnly);
        assert!(matches!(
            a.check_node(Some(&node("user-service", None, None))),
            WorkloadCheck::Mismatch(_)
        ));
    }

    #[test]
    fn reasons_have_distinct_stable_names() {
        let names: std::collections::HashSet<_> =
            DenyReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), DenyReason::ALL.len());
    }
}

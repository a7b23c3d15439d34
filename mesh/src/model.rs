//! The system: its services, their identities and the call graph between them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{AllowEntry, AuthzConfig, LogLevel, MetricsConfig, Mode};
use crate::http::{is_method_token, normalized_path};
use crate::identity::{validate_dns_label, IdentityError, SpiffeId};

/// Port every service listens on (the original write-up's `:5000`).
pub const SERVICE_PORT: u16 = 5000;
/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The three services of the system, in call order.
pub const USER_SERVICE: &str = "user-service";
pub const ORDER_SERVICE: &str = "order-service";
pub const PAYMENT_SERVICE: &str = "payment-service";

/// An error in the mesh model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("invalid name: {0}")]
    Name(#[from] IdentityError),
    #[error("service `{0}` is defined twice")]
    DuplicateService(String),
    #[error("call rule {index} names unknown service `{service}`")]
    UnknownService { index: usize, service: String },
    #[error(
        "call rule {index}: `{client}` is a client: clients call services, nothing calls them"
    )]
    CallToClient { index: usize, client: String },
    #[error("`{0}` names both a service and a client")]
    ClientIsService(String),
    #[error("call rule {index}: {message}")]
    Rule { index: usize, message: String },
    #[error("no service named `{0}`")]
    NoSuchService(String),
    #[error(
        "services `{first}` and `{second}` share the service account `{service_account}`: they would \
         have one identity, and each would be admitted as the other; give each its own"
    )]
    SharedServiceAccount {
        first: String,
        second: String,
        service_account: String,
    },
}

/// One service of the system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Kubernetes name of the Deployment and Service.
    pub name: String,
    /// The ServiceAccount its pods run as: its mesh identity.
    pub service_account: String,
    /// The port it serves HTTP on.
    pub port: u16,
}

/// A caller that is not one of the mesh's services: an identity from outside the call graph
/// (a front end, an ingress gateway's pods) that calls services. Its pods run under
/// `service_account` in `namespace`: `spiffe://<trust domain>/ns/<namespace>/sa/<account>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// Its name in `calls` and in the metrics' `source` label; its pods carry it as
    /// `app.kubernetes.io/name` (what the NetworkPolicies select).
    pub name: String,
    /// The namespace its pods run in.
    pub namespace: String,
    /// The ServiceAccount its pods run as: its mesh identity.
    pub service_account: String,
}

/// "`from` may call `to`", optionally only with these methods and under these path prefixes.
// A mesh file's `calls` entries are these, so the schema published for editors (feature
// `schema`) is this type's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallRule {
    pub from: String,
    pub to: String,
    /// Upper-case HTTP methods; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Normalized absolute paths; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_prefixes: Vec<String>,
}

/// The whole system in one namespace: services, the clients that call them from outside the
/// call graph, and the calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mesh {
    pub namespace: String,
    pub trust_domain: String,
    pub services: Vec<Service>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<Client>,
    pub calls: Vec<CallRule>,
}

impl Mesh {
    /// The reference system: user-service → order-service → payment-service, nothing else, each
    /// service on port 5000 with a ServiceAccount of its own name.
    pub fn reference(namespace: &str) -> Result<Self, ModelError> {
        let service = |name: &str| Service {
            name: name.to_owned(),
            service_account: name.to_owned(),
            port: SERVICE_PORT,
        };
        let call = |from: &str, to: &str| CallRule {
            from: from.to_owned(),
            to: to.to_owned(),
            methods: Vec::new(),
            path_prefixes: Vec::new(),
        };
        let mesh = Self {
            namespace: namespace.to_owned(),
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            services: vec![
                service(USER_SERVICE),
                service(ORDER_SERVICE),
                service(PAYMENT_SERVICE),
            ],
            clients: Vec::new(),
            calls: vec![
                call(USER_SERVICE, ORDER_SERVICE),
                call(ORDER_SERVICE, PAYMENT_SERVICE),
            ],
        };
        mesh.validate()?;
        Ok(mesh)
    }

    /// Checks names, references and narrowing of every rule.
    pub fn validate(&self) -> Result<(), ModelError> {
        validate_dns_label(&self.namespace)?;
        // The trust domain is checked by building an identity with it.
        SpiffeId::new(&self.trust_domain, &self.namespace, "probe")?;
        let mut names = BTreeMap::new();
        let mut accounts: BTreeMap<&str, &str> = BTreeMap::new();
        for s in &self.services {
            validate_dns_label(&s.name)?;
            validate_dns_label(&s.service_account)?;
            if names.insert(s.name.as_str(), s).is_some() {
                return Err(ModelError::DuplicateService(s.name.clone()));
            }
            // The identity is the service account: two services on one account are one caller.
            if let Some(first) = accounts.insert(s.service_account.as_str(), s.name.as_str()) {
                return Err(ModelError::SharedServiceAccount {
                    first: first.to_owned(),
                    second: s.name.clone(),
                    service_account: s.service_account.clone(),
                });
            }
        }
        let mut clients = BTreeMap::new();
        for c in &self.clients {
            validate_dns_label(&c.name)?;
            validate_dns_label(&c.namespace)?;
            validate_dns_label(&c.service_account)?;
            if names.contains_key(c.name.as_str()) || clients.insert(c.name.as_str(), c).is_some() {
                return Err(ModelError::ClientIsService(c.name.clone()));
            }
            // A client under a service's account would be that service.
            if c.namespace == self.namespace {
                if let Some(first) = accounts.insert(c.service_account.as_str(), c.name.as_str()) {
                    return Err(ModelError::SharedServiceAccount {
                        first: first.to_owned(),
                        second: c.name.clone(),
                        service_account: c.service_account.clone(),
                    });
                }
            }
        }
        for (index, rule) in self.calls.iter().enumerate() {
            if !names.contains_key(rule.from.as_str()) && !clients.contains_key(rule.from.as_str())
            {
                return Err(ModelError::UnknownService {
                    index,
                    service: rule.from.clone(),
                });
            }
            if clients.contains_key(rule.to.as_str()) {
                return Err(ModelError::CallToClient {
                    index,
                    client: rule.to.clone(),
                });
            }
            if !names.contains_key(rule.to.as_str()) {
                return Err(ModelError::UnknownService {
                    index,
                    service: rule.to.clone(),
                });
            }
            if let Some(m) = rule.methods.iter().find(|m| !is_method_token(m)) {
                return Err(ModelError::Rule {
                    index,
                    message: format!("`{m}` is not an upper-case HTTP method"),
                });
            }
            if let Some(p) = rule
                .path_prefixes
                .iter()
                .find(|p| normalized_path(p.as_bytes()) != Ok(p.as_str()))
            {
                return Err(ModelError::Rule {
                    index,
                    message: format!("`{p}` is not a normalized absolute path"),
                });
            }
        }
        Ok(())
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Result<&Service, ModelError> {
        self.services
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ModelError::NoSuchService(name.to_owned()))
    }

    /// The client named `name`.
    pub fn client(&self, name: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.name == name)
    }

    /// The SPIFFE identity of a service's or a client's pods.
    pub fn identity(&self, name: &str) -> Result<SpiffeId, ModelError> {
        if let Some(c) = self.client(name) {
            return Ok(SpiffeId::new(
                &self.trust_domain,
                &c.namespace,
                &c.service_account,
            )?);
        }
        let s = self.service(name)?;
        Ok(SpiffeId::new(
            &self.trust_domain,
            &self.namespace,
            &s.service_account,
        )?)
    }

    /// Every caller's name: the services, then the clients.
    fn caller_names(&self) -> impl Iterator<Item = &str> {
        self.services
            .iter()
            .map(|s| s.name.as_str())
            .chain(self.clients.iter().map(|c| c.name.as_str()))
    }

    /// Rules whose destination is `name`.
    pub fn callers_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a CallRule> + 'a {
        self.calls.iter().filter(move |r| r.to == name)
    }

    /// Rules whose source is `name`.
    pub fn callees_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a CallRule> + 'a {
        self.calls.iter().filter(move |r| r.from == name)
    }

    /// The authorization filter's configuration for the pods of `name`.
    pub fn authz_config(
        &self,
        name: &str,
        mode: Mode,
        log_level: LogLevel,
    ) -> Result<AuthzConfig, ModelError> {
        self.validate()?;
        self.service(name)?;
        let mut allow: Vec<AllowEntry> = Vec::new();
        for rule in self.callers_of(name) {
            let from = self.identity(&rule.from)?.to_string();
            // Two rules from the same caller widen each other: merge them, where an empty list
            // (anything) wins.
            if let Some(entry) = allow.iter_mut().find(|e| e.from == from) {
                merge(&mut entry.methods, &rule.methods);
                merge(&mut entry.path_prefixes, &rule.path_prefixes);
            } else {
                allow.push(AllowEntry {
                    from,
                    service: rule.from.clone(),
                    methods: rule.methods.clone(),
                    path_prefixes: rule.path_prefixes.clone(),
                });
            }
        }
        let mut known_peers = BTreeMap::new();
        for caller in self.caller_names() {
            let id = self.identity(caller)?.to_string();
            if !allow.iter().any(|e| e.from == id) {
                known_peers.insert(id, caller.to_owned());
            }
        }
        Ok(AuthzConfig {
            workload: name.to_owned(),
            identity: Some(self.identity(name)?.to_string()),
            mode,
            log_level,
            allow,
            known_peers,
        })
    }

    /// The metrics filter's configuration for the pods of `name`: every service and client of the
    /// mesh is a known peer, so that a denied call from one is still labelled by its name.
    pub fn metrics_config(
        &self,
        name: &str,
        log_level: LogLevel,
    ) -> Result<MetricsConfig, ModelError> {
        self.service(name)?;
        let mut peers = BTreeMap::new();
        for caller in self.caller_names() {
            peers.insert(self.identity(caller)?.to_string(), caller.to_owned());
        }
        Ok(MetricsConfig {
            workload: name.to_owned(),
            log_level,
            peers,
        })
    }
}

/// `into |= from`, where an empty list means "anything".
fn merge(into: &mut Vec<String>, from: &[String]) {
    if into.is_empty() {
        return;
    }
    if from.is_empty() {
        into.clear();
        return;
    }
    for item in from {
        if !into.contains(item) {
            into.push(item.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Authorizer, Decision, DenyReason, RequestFacts};

    #[test]
    fn reference_call_graph() {
        let mesh = Mesh::reference("shop").unwrap();
        assert_eq!(
            mesh.identity(USER_SERVICE).unwrap().to_string(),
            "spiffe://cluster.local/ns/shop/sa/user-service"
        );
        let callers = |s| {
            mesh.callers_of(s)
                .map(|r| r.from.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(callers(USER_SERVICE), Vec::<&str>::new());
        assert_eq!(callers(ORDER_SERVICE), vec![USER_SERVICE]);
        assert_eq!(callers(PAYMENT_SERVICE), vec![ORDER_SERVICE]);
    }

    #[test]
    fn generated_configs_validate_and_decide() {
        let mesh = Mesh::reference("shop").unwrap();
        for s in [USER_SERVICE, ORDER_SERVICE, PAYMENT_SERVICE] {
            let cfg = mesh.authz_config(s, Mode::Enforce, LogLevel::Info).unwrap();
            let json = cfg.to_json();
            assert_eq!(AuthzConfig::from_json(json.as_bytes()).unwrap(), cfg);
            let m = mesh.metrics_config(s, LogLevel::Info).unwrap();
            assert_eq!(MetricsConfig::from_json(m.to_json().as_bytes()).unwrap(), m);
        }
        let payment = Authorizer::new(
            mesh.authz_config(PAYMENT_SERVICE, Mode::Enforce, LogLevel::Info)
                .unwrap(),
        )
        .unwrap();
        let from = |sa: &str| format!("spiffe://cluster.local/ns/shop/sa/{sa}");
        let order = from(ORDER_SERVICE);
        let user = from(USER_SERVICE);
        let facts = |id: &'static str| RequestFacts {
            mtls: Some(true),
            peer_identity: Some(id.as_bytes()),
            method: Some(b"POST"),
            path: Some(b"/pay"),
            // The sidecar's own certificate: the payment-service pod the config was made for.
            local_identity: Some(b"spiffe://cluster.local/ns/shop/sa/payment-service"),
            ..RequestFacts::default()
        };
        let order: &'static str = Box::leak(order.into_boxed_str());
        let user: &'static str = Box::leak(user.into_boxed_str());
        assert!(payment.decide(&facts(order)).is_allow());
        assert_eq!(
            payment.decide(&facts(user)),
            Decision::Deny {
                reason: DenyReason::UnknownPeer,
                source: Some(USER_SERVICE)
            }
        );
    }

    #[test]
    fn rejects_broken_models() {
        let mut mesh = Mesh::reference("shop").unwrap();
        mesh.calls.push(CallRule {
            from: "ghost".into(),
            to: ORDER_SERVICE.into(),
            methods: vec![],
            path_prefixes: vec![],
        });
        assert!(matches!(
            mesh.validate(),
            Err(ModelError::UnknownService { index: 2, .. })
        ));
        let mut mesh = Mesh::reference("shop").unwrap();
        mesh.services.push(mesh.services[0].clone());
        assert!(matches!(
            mesh.validate(),
            Err(ModelError::DuplicateService(_))
        ));
        assert!(Mesh::reference("Shop").is_err());
        let mut mesh = Mesh::reference("shop").unwrap();
        mesh.calls[0].path_prefixes = vec!["/a/../b".into()];
        assert!(matches!(
            mesh.validate(),
            Err(ModelError::Rule { index: 0, .. })
        ));
    }

    #[test]
    fn two_services_on_one_service_account_are_rejected_by_name() {
        let mut mesh = Mesh::reference("shop").unwrap();
        mesh.services[2].service_account = USER_SERVICE.into();
        let err = mesh.validate().unwrap_err();
        assert_eq!(
            err,
            ModelError::SharedServiceAccount {
                first: USER_SERVICE.into(),
                second: PAYMENT_SERVICE.into(),
                service_account: USER_SERVICE.into(),
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("`user-service` and `payment-service`"),
            "{text}"
        );
        // Another service's account name is fine as long as no two services share one.
        let mut mesh = Mesh::reference("shop").unwrap();
        mesh.services[0].service_account = "frontend".into();
        assert!(mesh.validate().is_ok());
    }

    #[test]
    fn configs_name_the_workload_identity() {
        let mesh = Mesh::reference("shop").unwrap();
        let cfg = mesh
            .authz_config(ORDER_SERVICE, Mode::Enforce, LogLevel::Info)
            .unwrap();
        assert_eq!(
            cfg.identity.as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/order-service")
        );
    }

    #[test]
    fn clients_call_services_under_their_own_identity() {
        let mut mesh = Mesh::reference("shop").unwrap();
        mesh.clients.push(Client {
            name: "storefront".into(),
            namespace: "web".into(),
            service_account: "front".into(),
        });
        mesh.calls.push(CallRule {
            from: "storefront".into(),
            to: USER_SERVICE.into(),
            methods: vec!["GET".into()],
            path_prefixes: vec![],
        });
        mesh.validate().unwrap();
        let user = mesh
            .authz_config(USER_SERVICE, Mode::Enforce, LogLevel::Info)
            .unwrap();
        assert_eq!(user.allow.len(), 1);
        assert_eq!(user.allow[0].from, "spiffe://cluster.local/ns/web/sa/front");
        assert_eq!(user.allow[0].service, "storefront");
        // Known to the others, so that their denials name it.
        let order = mesh
            .authz_config(ORDER_SERVICE, Mode::Enforce, LogLevel::Info)
            .unwrap();
        assert_eq!(
            order
                .known_peers
                .get("spiffe://cluster.local/ns/web/sa/front"),
            Some(&"storefront".to_owned())
        );
        let metrics = mesh.metrics_config(USER_SERVICE, LogLevel::Info).unwrap();
        assert_eq!(
            metrics.peers.get("spiffe://cluster.local/ns/web/sa/front"),
            Some(&"storefront".to_owned())
        );

        // Nothing calls a client; a client is not a service; in the mesh's namespace it has an
        // account of its own.
        let mut bad = mesh.clone();
        bad.calls.push(CallRule {
            from: USER_SERVICE.into(),
            to: "storefront".into(),
            methods: vec![],
            path_prefixes: vec![],
        });
        assert!(matches!(
            bad.validate(),
            Err(ModelError::CallToClient { index: 3, .. })
        ));
        let mut bad = mesh.clone();
        bad.clients[0].name = ORDER_SERVICE.into();
        assert_eq!(
            bad.validate(),
            Err(ModelError::ClientIsService(ORDER_SERVICE.into()))
        );
        let mut bad = mesh.clone();
        bad.clients[0].namespace = "shop".into();
        bad.clients[0].service_account = PAYMENT_SERVICE.into();
        assert!(matches!(
            bad.validate(),
            Err(ModelError::SharedServiceAccount { .. })
        ));
        // The same account name in another namespace is another identity.
        let mut ok = mesh;
        ok.clients[0].service_account = PAYMENT_SERVICE.into();
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn rules_from_one_caller_merge() {
        let mut mesh = Mesh::reference("shop").unwrap();
        mesh.calls[0].methods = vec!["GET".into()];
        mesh.calls.push(CallRule {
            from: USER_SERVICE.into(),
            to: ORDER_SERVICE.into(),
            methods: vec!["POST".into()],
            path_prefixes: vec![],
        });
        let cfg = mesh
            .authz_config(ORDER_SERVICE, Mode::Enforce, LogLevel::Info)
            .unwrap();
        assert_eq!(cfg.allow.len(), 1);
        assert_eq!(cfg.allow[0].methods, vec!["GET", "POST"]);
    }
}

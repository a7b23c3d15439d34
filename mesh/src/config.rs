//! The filters' JSON configuration: what the installer writes into each `WasmPlugin`'s
//! `pluginConfig` and what the filters parse in `on_configure`.
//!
//! Parsing is strict: unknown fields, wrong types, invalid identities and limits exceeded are all
//! errors that name the offending field (e.g. `allow[1].from`), because a filter that guesses at a
//! configuration it does not understand is not fail-closed.
//!
//! Documents are read with the small strict reader in `json.rs` (a general JSON library was a
//! fifth of each filter's module). The serde derives stay: `Serialize` writes the documents (the
//! installer, `to_json`), and `Deserialize` is the independent reference the reader is tested
//! against.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::http::is_method_token;
use crate::identity::{validate_dns_label, SpiffeId};
use crate::json::Reader;

/// Largest configuration accepted, in bytes (4096 callers of about 100 bytes each fit).
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// Most allow entries (callers) for one workload.
pub const MAX_ALLOW_ENTRIES: usize = 4096;
/// Most methods or path prefixes in one allow entry.
pub const MAX_NARROWING_ITEMS: usize = 64;
/// Longest path prefix.
pub const MAX_PATH_PREFIX_LEN: usize = 1024;

/// A configuration error, with the JSON path of the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration at `{field}`: {message}")]
pub struct ConfigError {
    /// Where in the document: `.` for the whole document, `allow[0].from` for a field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What the authorization filter does with a denied request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Deny with 403.
    #[default]
    Enforce,
    /// Log and count the decision, but let the request through.
    DryRun,
}

/// Level at which a filter logs its decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

/// One caller the protected workload admits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    /// The caller's SPIFFE identity, exactly as its mTLS certificate carries it.
    pub from: String,
    /// The caller's service name, used in logs and metric labels.
    pub service: String,
    /// Methods admitted (upper case); empty admits any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Path prefixes admitted, matched on segment boundaries against the normalized path; empty
    /// admits any path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_prefixes: Vec<String>,
}

/// Configuration of the identity authorization filter for one workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzConfig {
    /// The service this filter protects (its pods run the sidecar).
    pub workload: String,
    /// The SPIFFE identity of the protected workload's own pods. With it the filter checks that it
    /// runs in the workload it was configured for (Istio's node metadata, else the local
    /// certificate's URI SAN) and denies everything with `wrong_workload` if not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub log_level: LogLevel,
    /// The callers admitted. Anything not listed is denied.
    pub allow: Vec<AllowEntry>,
    /// Other identities of the mesh and their service names: never admitted, but named in logs
    /// and in the `source` label of denials, so a denied call from a known service says who.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub known_peers: BTreeMap<String, String>,
}

/// Configuration of the request metrics filter for one workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The service whose inbound requests are measured (the `destination` label).
    pub workload: String,
    #[serde(default)]
    pub log_level: LogLevel,
    /// Known peer identities and the service names used as their `source` label. Any other
    /// identity is labelled `unknown`, a request without mTLS `none`: label values stay a closed set.
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
}

/// Checks a document's size and reads it with `read`, which must consume one value.
///
/// The readers (`read` of each type) and [`Reader`]'s `object` and `array` are kept out of line:
/// left to the optimizer, a configuration reader inlines into one function of over 13 KB of Wasm.
/// Envoy compiles every function with V8's optimizing compiler (`--no-liftoff`,
/// proxy-wasm-cpp-host `src/v8/v8.cc`), whose memory for a function grows faster than its size,
/// and Envoy's allocator keeps what that took: such a function alone raised the sidecar's heap
/// by about 2 MiB (`/memory`'s `heap_size`, measured with the Envoy benchmark's setup).
/// tests/filters/tests/budget.rs holds every function to the size of the largest one in an empty
/// SDK-built filter.
#[inline(never)]
fn parse_json<T>(
    raw: &[u8],
    read: impl FnOnce(&mut Reader<'_>) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::new(".", "configuration is empty"));
    }
    if raw.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::new(
            ".",
            format!(
                "configuration is {} bytes, more than the {MAX_CONFIG_BYTES} allowed",
                raw.len()
            ),
        ));
    }
    let mut reader = Reader::new(raw);
    let value = read(&mut reader)?;
    reader.end()?;
    Ok(value)
}

/// Stores a field's value, refusing a field given twice.
fn once<'a, T>(
    r: &mut Reader<'a>,
    slot: &mut Option<T>,
    key: &str,
    read: impl FnOnce(&mut Reader<'a>) -> Result<T, ConfigError>,
) -> Result<(), ConfigError> {
    if slot.is_some() {
        return Err(r.error(format!("duplicate field `{key}`")));
    }
    *slot = Some(read(r)?);
    Ok(())
}

/// A required field's value, or the error naming it.
fn required<T>(r: &Reader<'_>, slot: Option<T>, key: &str) -> Result<T, ConfigError> {
    slot.ok_or_else(|| r.error(format!("missing field `{key}`")))
}

fn unknown_field(r: &Reader<'_>, key: &str, known: &[&str]) -> ConfigError {
    r.error(format!(
        "unknown field `{key}`, expected one of `{}`",
        known.join("`, `")
    ))
}

/// An enum written as one of its `names`; `values` in the same order.
fn variant<T: Copy>(r: &mut Reader<'_>, names: &[&str], values: &[T]) -> Result<T, ConfigError> {
    let name = r.string()?;
    names
        .iter()
        .position(|n| *n == name)
        .and_then(|i| values.get(i).copied())
        .ok_or_else(|| {
            r.error(format!(
                "unknown variant `{name}`, expected one of `{}`",
                names.join("`, `")
            ))
        })
}

fn strings(r: &mut Reader<'_>) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    r.array(|r| {
        out.push(r.string()?);
        Ok(())
    })?;
    Ok(out)
}

/// An object of string values; a key given twice is an error.
fn string_map(r: &mut Reader<'_>) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut map = BTreeMap::new();
    r.object("a map", |r, key| {
        let value = r.string()?;
        match map.insert(key.to_owned(), value) {
            None => Ok(()),
            Some(_) => Err(r.error(format!("duplicate key `{key}`"))),
        }
    })?;
    Ok(map)
}

impl Mode {
    #[inline(never)] // see `parse_json`
    fn read(r: &mut Reader<'_>) -> Result<Self, ConfigError> {
        variant(r, &["enforce", "dry_run"], &[Self::Enforce, Self::DryRun])
    }
}

impl LogLevel {
    #[inline(never)] // see `parse_json`
    fn read(r: &mut Reader<'_>) -> Result<Self, ConfigError> {
        variant(
            r,
            &["trace", "debug", "info", "warn", "error"],
            &[
                Self::Trace,
                Self::Debug,
                Self::Info,
                Self::Warn,
                Self::Error,
            ],
        )
    }
}

impl AllowEntry {
    #[inline(never)] // see `parse_json`
    fn read(r: &mut Reader<'_>) -> Result<Self, ConfigError> {
        let (mut from, mut service, mut methods, mut path_prefixes) = (None, None, None, None);
        r.object("struct AllowEntry", |r, key| match key {
            "from" => once(r, &mut from, key, Reader::string),
            "service" => once(r, &mut service, key, Reader::string),
            "methods" => once(r, &mut methods, key, strings),
            "path_prefixes" => once(r, &mut path_prefixes, key, strings),
            _ => Err(unknown_field(
                r,
                key,
                &["from", "service", "methods", "path_prefixes"],
            )),
        })?;
        Ok(Self {
            from: required(r, from, "from")?,
            service: required(r, service, "service")?,
            methods: methods.unwrap_or_default(),
            path_prefixes: path_prefixes.unwrap_or_default(),
        })
    }
}

fn check_service_name(field: &str, name: &str) -> Result<(), ConfigError> {
    validate_dns_label(name).map_err(|e| ConfigError::new(field, e.to_string()))
}

impl AuthzConfig {
    /// Parses and validates a configuration document.
    pub fn from_json(raw: &[u8]) -> Result<Self, ConfigError> {
        let cfg = parse_json(raw, Self::read)?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[inline(never)] // see `parse_json`
    fn read(r: &mut Reader<'_>) -> Result<Self, ConfigError> {
        let (mut workload, mut identity, mut mode, mut log_level, mut allow, mut known_peers) =
            (None, None, None, None, None, None);
        r.object("struct AuthzConfig", |r, key| match key {
            "workload" => once(r, &mut workload, key, Reader::string),
            "identity" => once(r, &mut identity, key, |r| {
                // `null` is the same as leaving the field out.
                if r.null() {
                    Ok(None)
                } else {
                    r.string().map(Some)
                }
            }),
            "mode" => once(r, &mut mode, key, Mode::read),
            "log_level" => once(r, &mut log_level, key, LogLevel::read),
            "allow" => once(r, &mut allow, key, |r| {
                let mut entries = Vec::new();
                r.array(|r| {
                    entries.push(AllowEntry::read(r)?);
                    Ok(())
                })?;
                Ok(entries)
            }),
            "known_peers" => once(r, &mut known_peers, key, string_map),
            _ => Err(unknown_field(
                r,
                key,
                &[
                    "workload",
                    "identity",
                    "mode",
                    "log_level",
                    "allow",
                    "known_peers",
                ],
            )),
        })?;
        Ok(Self {
            workload: required(r, workload, "workload")?,
            identity: identity.flatten(),
            mode: mode.unwrap_or_default(),
            log_level: log_level.unwrap_or_default(),
            allow: required(r, allow, "allow")?,
            known_peers: known_peers.unwrap_or_default(),
        })
    }

    /// Serializes to the JSON the filter reads.
    pub fn to_json(&self) -> String {
        // Serializing plain strings, vectors and enums cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Checks every field; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_service_name("workload", &self.workload)?;
        if let Some(id) = &self.identity {
            SpiffeId::parse(id).map_err(|e| ConfigError::new("identity", e.to_string()))?;
        }
        if self.allow.len() > MAX_ALLOW_ENTRIES {
            return Err(ConfigError::new(
                "allow",
                format!(
                    "{} entries, at most {MAX_ALLOW_ENTRIES} allowed",
                    self.allow.len()
                ),
            ));
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, entry) in self.allow.iter().enumerate() {
            let at = |f: &str| format!("allow[{i}].{f}");
            SpiffeId::parse(&entry.from)
                .map_err(|e| ConfigError::new(at("from"), e.to_string()))?;
            if let Some(first) = seen.insert(entry.from.as_str(), i) {
                return Err(ConfigError::new(
                    at("from"),
                    format!("identity already listed in allow[{first}]; merge the two entries"),
                ));
            }
            check_service_name(&at("service"), &entry.service)?;
            if entry.methods.len() > MAX_NARROWING_ITEMS {
                return Err(ConfigError::new(
                    at("methods"),
                    format!("at most {MAX_NARROWING_ITEMS} methods allowed"),
                ));
            }
            for (j, m) in entry.methods.iter().enumerate() {
                if !is_method_token(m) {
                    return Err(ConfigError::new(
                        format!("allow[{i}].methods[{j}]"),
                        format!("`{m}` is not an upper-case HTTP method token"),
                    ));
                }
            }
            if entry.path_prefixes.len() > MAX_NARROWING_ITEMS {
                return Err(ConfigError::new(
                    at("path_prefixes"),
                    format!("at most {MAX_NARROWING_ITEMS} path prefixes allowed"),
                ));
            }
            for (j, p) in entry.path_prefixes.iter().enumerate() {
                let field = format!("allow[{i}].path_prefixes[{j}]");
                if p.len() > MAX_PATH_PREFIX_LEN {
                    return Err(ConfigError::new(field, "path prefix too long"));
                }
                if crate::http::normalized_path(p.as_bytes()) != Ok(p.as_str()) {
                    return Err(ConfigError::new(
                        field,
                        format!("`{p}` must be a normalized absolute path without query (e.g. `/orders`)"),
                    ));
                }
            }
        }
        if self.known_peers.len() > MAX_ALLOW_ENTRIES {
            return Err(ConfigError::new(
                "known_peers",
                format!("at most {MAX_ALLOW_ENTRIES} known peers allowed"),
            ));
        }
        for (id, service) in &self.known_peers {
            let field = format!("known_peers.{id}");
            SpiffeId::parse(id).map_err(|e| ConfigError::new(field.as_str(), e.to_string()))?;
            check_service_name(&field, service)?;
            if let Some(i) = seen.get(id.as_str()) {
                return Err(ConfigError::new(
                    field,
                    format!("identity is admitted by allow[{i}]; list it in one place only"),
                ));
            }
        }
        Ok(())
    }
}

impl MetricsConfig {
    /// Parses and validates a configuration document.
    pub fn from_json(raw: &[u8]) -> Result<Self, ConfigError> {
        let cfg = parse_json(raw, Self::read)?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[inline(never)] // see `parse_json`
    fn read(r: &mut Reader<'_>) -> Result<Self, ConfigError> {
        let (mut workload, mut log_level, mut peers) = (None, None, None);
        r.object("struct MetricsConfig", |r, key| match key {
            "workload" => once(r, &mut workload, key, Reader::string),
            "log_level" => once(r, &mut log_level, key, LogLevel::read),
            "peers" => once(r, &mut peers, key, string_map),
            _ => Err(unknown_field(r, key, &["workload", "log_level", "peers"])),
        })?;
        Ok(Self {
            workload: required(r, workload, "workload")?,
            log_level: log_level.unwrap_or_default(),
            peers: peers.unwrap_or_default(),
        })
    }

    /// Serializes to the JSON the filter reads.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Checks every field; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_service_name("workload", &self.workload)?;
        if self.peers.len() > MAX_ALLOW_ENTRIES {
            return Err(ConfigError::new(
                "peers",
                format!("at most {MAX_ALLOW_ENTRIES} peers allowed"),
            ));
        }
        for (id, service) in &self.peers {
            let field = format!("peers.{id}");
            SpiffeId::parse(id).map_err(|e| ConfigError::new(field.as_str(), e.to_string()))?;
            check_service_name(&field, service)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = r#"{
        "workload": "order-service",
        "mode": "dry_run",
        "log_level": "debug",
        "allow": [{"from": "spiffe://cluster.local/ns/shop/sa/user-service", "service": "user-service",
                   "methods": ["GET"], "path_prefixes": ["/orders"]}]
    }"#;

    #[test]
    fn parses_a_full_document() {
        let cfg = AuthzConfig::from_json(ORDER.as_bytes()).unwrap();
        assert_eq!(cfg.workload, "order-service");
        assert_eq!(cfg.mode, Mode::DryRun);
        assert_eq!(cfg.log_level, LogLevel::Debug);
        assert_eq!(cfg.allow[0].methods, vec!["GET"]);
        assert_eq!(
            AuthzConfig::from_json(cfg.to_json().as_bytes()).unwrap(),
            cfg
        );
    }

    #[test]
    fn defaults_are_enforce_and_info() {
        let cfg = AuthzConfig::from_json(br#"{"workload":"a","allow":[]}"#).unwrap();
        assert!(cfg.known_peers.is_empty());
        assert_eq!(cfg.mode, Mode::Enforce);
        assert_eq!(cfg.log_level, LogLevel::Info);
    }

    fn field_of(raw: &str) -> String {
        AuthzConfig::from_json(raw.as_bytes()).unwrap_err().field
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(""), ".");
        assert_eq!(field_of("{"), ".");
        assert_eq!(field_of(r#"{"workload":"a","allow":[]} x"#), ".");
        assert_eq!(field_of(r#"{"allow":[]}"#), ".");
        assert_eq!(field_of(r#"{"workload":"A","allow":[]}"#), "workload");
        assert_eq!(
            field_of(r#"{"workload":"a","identity":"spiffe://t/ns/n","allow":[]}"#),
            "identity"
        );
        assert_eq!(
            field_of(r#"{"workload":"a","allow":[],"extra":1}"#),
            "extra"
        );
        assert_eq!(
            field_of(r#"{"workload":"a","mode":"off","allow":[]}"#),
            "mode"
        );
        assert_eq!(
            field_of(r#"{"workload":"a","allow":[{"from":"x","service":"b"}]}"#),
            "allow[0].from"
        );
        assert_eq!(
            field_of(
                r#"{"workload":"a","allow":[{"from":"spiffe://t/ns/n/sa/b","service":"b","methods":["get"]}]}"#
            ),
            "allow[0].methods[0]"
        );
        assert_eq!(
            field_of(
                r#"{"workload":"a","allow":[{"from":"spiffe://t/ns/n/sa/b","service":"b","path_prefixes":["/a/../b"]}]}"#
            ),
            "allow[0].path_prefixes[0]"
        );
        assert_eq!(
            field_of(
                r#"{"workload":"a","allow":[{"from":"spiffe://t/ns/n/sa/b","service":"b"},{"from":"spiffe://t/ns/n/sa/b","service":"c"}]}"#
            ),
            "allow[1].from"
        );
        assert_eq!(
            field_of(
                r#"{"workload":"a","allow":[{"from":"spiffe://t/ns/n/sa/b","service":"b","x":1}]}"#
            ),
            "allow[0].x"
        );
    }

    #[test]
    fn known_peers_are_checked_and_never_overlap_allow() {
        let ok = AuthzConfig::from_json(
            br#"{"workload":"a","allow":[],"known_peers":{"spiffe://t/ns/n/sa/b":"b"}}"#,
        )
        .unwrap();
        assert_eq!(ok.known_peers.len(), 1);
        assert_eq!(
            field_of(r#"{"workload":"a","allow":[],"known_peers":{"x":"b"}}"#),
            "known_peers.x"
        );
        assert_eq!(
            field_of(
                r#"{"workload":"a","allow":[{"from":"spiffe://t/ns/n/sa/b","service":"b"}],"known_peers":{"spiffe://t/ns/n/sa/b":"b"}}"#
            ),
            "known_peers.spiffe://t/ns/n/sa/b"
        );
    }

    #[test]
    fn hostile_documents_are_rejected_not_crashed() {
        let deep = "[".repeat(100_000);
        assert!(AuthzConfig::from_json(deep.as_bytes()).is_err());
        let huge = vec![b' '; MAX_CONFIG_BYTES + 1];
        assert!(AuthzConfig::from_json(&huge).is_err());
        assert!(AuthzConfig::from_json(b"\xff\xfe\x00").is_err());
        assert!(AuthzConfig::from_json(b"null").is_err());
    }

    #[test]
    fn metrics_config_checks_peers() {
        let ok = MetricsConfig::from_json(
            br#"{"workload":"order-service","peers":{"spiffe://cluster.local/ns/shop/sa/user-service":"user-service"}}"#,
        )
        .unwrap();
        assert_eq!(ok.peers.len(), 1);
        let err = MetricsConfig::from_json(br#"{"workload":"o","peers":{"nope":"user-service"}}"#)
            .unwrap_err();
        assert_eq!(err.field, "peers.nope");
    }
}

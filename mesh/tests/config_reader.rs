//! The filters' configuration reader against serde_json, an implementation nobody here wrote:
//! generated documents, written compactly or spread out and with characters escaped, then mutated
//! byte by byte, must be accepted by both to the same value or refused by both. The only documents
//! serde_json may take and the reader refuse are the forms `mesh/src/json.rs` names as stricter:
//! a key given twice, a struct written as an array, an enum written as a map.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test assertions

use std::collections::BTreeMap;

use meshguard_mesh::{AllowEntry, AuthzConfig, ConfigError, LogLevel, MetricsConfig, Mode};
use serde::de::DeserializeOwned;

/// xorshift64*: a fixed sequence, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A value from `good`, or now and then (one time in 50) one that validation refuses.
fn sometimes_bad(rng: &mut Rng, good: &[&str], bad: &str) -> String {
    if rng.chance(2) {
        bad.to_owned()
    } else {
        rng.pick(good).to_string()
    }
}

fn service(rng: &mut Rng) -> String {
    let good = [
        "user-service",
        "order-service",
        "payment-service",
        "a",
        "caf-1",
    ];
    sometimes_bad(rng, &good, "Bad_Name")
}

/// Identities of many service accounts, so the entries of one document rarely collide.
fn identity(rng: &mut Rng) -> String {
    let sa = format!("sa-{}", rng.below(1000));
    match rng.below(50) {
        0 => format!("spiffe://cluster.local/ns/shop/{sa}"),
        1 => format!("spiffe://cluster.local/ns/shop/sa/{sa}\u{e9}"),
        _ => format!("spiffe://cluster.local/ns/shop/sa/{sa}"),
    }
}

fn authz(rng: &mut Rng) -> AuthzConfig {
    let allow = (0..rng.below(4))
        .map(|_| AllowEntry {
            from: identity(rng),
            service: service(rng),
            methods: (0..rng.below(3))
                .map(|_| sometimes_bad(rng, &["GET", "POST", "DELETE", "PATCH"], "get"))
                .collect(),
            path_prefixes: (0..rng.below(3))
                .map(|_| sometimes_bad(rng, &["/orders", "/a/b", "/", "/caf\u{e9}"], "/a/../b"))
                .collect(),
        })
        .collect();
    let known_peers: BTreeMap<String, String> = (0..rng.below(3))
        .map(|_| (identity(rng), service(rng)))
        .collect();
    AuthzConfig {
        workload: service(rng),
        identity: rng.chance(50).then(|| identity(rng)),
        mode: *rng.pick(&[Mode::Enforce, Mode::DryRun]),
        log_level: *rng.pick(&[LogLevel::Trace, LogLevel::Info, LogLevel::Error]),
        allow,
        known_peers,
    }
}

fn metrics(rng: &mut Rng) -> MetricsConfig {
    MetricsConfig {
        workload: service(rng),
        log_level: *rng.pick(&[LogLevel::Debug, LogLevel::Warn]),
        peers: (0..rng.below(4))
            .map(|_| (identity(rng), service(rng)))
            .collect(),
    }
}

/// Escapes one character of every string as `\uXXXX` (a pair for one outside the BMP), now and
/// then; the document means the same.
fn escape_some(rng: &mut Rng, json: &str) -> String {
    let mut out = String::new();
    let mut in_string = false;
    let mut chars = json.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && in_string {
            out.push(c);
            out.extend(chars.next());
            continue;
        }
        if c == '"' {
            in_string = !in_string;
        } else if in_string && rng.chance(15) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04X}"));
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Bytes that make or break JSON.
const ALPHABET: &[u8] = b"{}[]\",:\\ \t\nu0123456789abcdefnultr/-.x\x00\x1f\xc3\xa9\xff";

fn mutate(rng: &mut Rng, doc: &mut Vec<u8>) {
    for _ in 0..=rng.below(3) {
        let at = rng.below(doc.len() + 1);
        match rng.below(5) {
            0 if at < doc.len() => {
                doc.remove(at);
            }
            1 if at < doc.len() => doc[at] = *rng.pick(ALPHABET),
            2 => doc.insert(at, *rng.pick(ALPHABET)),
            3 if at < doc.len() => {
                let end = (at + 1 + rng.below(12)).min(doc.len());
                let span = doc[at..end].to_vec();
                let to = rng.below(doc.len() + 1);
                doc.splice(to..to, span);
            }
            _ => {
                let to = rng.below(doc.len() + 1);
                const VALUES: [&[u8]; 5] = [b"null", b"1", b"[]", b"{}", b"\"\""];
                let value = rng.pick(&VALUES);
                doc.splice(to..to, value.iter().copied());
            }
        }
    }
}

/// serde_json's answer: the derived reader, then the same validation.
fn reference<T: DeserializeOwned>(
    doc: &[u8],
    validate: impl Fn(&T) -> Result<(), ConfigError>,
) -> Option<T> {
    let value: T = serde_json::from_slice(doc).ok()?;
    validate(&value).ok()?;
    Some(value)
}

/// Whether serde_json may accept a document the reader refuses with `err`: only for the
/// stricter forms.
fn stricter(err: &ConfigError) -> bool {
    err.message.starts_with("duplicate ")
        || err
            .message
            .starts_with("invalid type: sequence, expected struct")
        || err
            .message
            .starts_with("invalid type: map, expected a string")
}

struct Tally {
    both_accept: usize,
    both_refuse: usize,
    stricter: usize,
}

fn compare<T: DeserializeOwned + PartialEq + std::fmt::Debug>(
    doc: &[u8],
    ours: Result<T, ConfigError>,
    theirs: Option<T>,
    tally: &mut Tally,
) {
    let shown = String::from_utf8_lossy(doc);
    match (ours, theirs) {
        (Ok(a), Some(b)) => {
            assert_eq!(a, b, "different values for {shown}");
            tally.both_accept += 1;
        }
        (Err(_), None) => tally.both_refuse += 1,
        (Ok(a), None) => panic!("accepted what serde_json refuses: {shown} as {a:?}"),
        (Err(e), Some(b)) => {
            assert!(
                stricter(&e),
                "refused what serde_json accepts ({b:?}): {shown}: {e}"
            );
            tally.stricter += 1;
        }
    }
}

#[test]
fn the_reader_agrees_with_serde_json() {
    let mut rng = Rng(0x6d65_7368_6775_6172);
    let mut authz_tally = Tally {
        both_accept: 0,
        both_refuse: 0,
        stricter: 0,
    };
    let mut metrics_tally = Tally {
        both_accept: 0,
        both_refuse: 0,
        stricter: 0,
    };
    for round in 0..20_000 {
        let (json, is_authz) = if round % 2 == 0 {
            let cfg = authz(&mut rng);
            let json = if rng.chance(50) {
                serde_json::to_string(&cfg)
            } else {
                serde_json::to_string_pretty(&cfg)
            };
            (json.unwrap(), true)
        } else {
            (
                serde_json::to_string_pretty(&metrics(&mut rng)).unwrap(),
                false,
            )
        };
        let mut doc = escape_some(&mut rng, &json).into_bytes();
        if round % 4 >= 2 {
            mutate(&mut rng, &mut doc);
        }
        if is_authz {
            let theirs = reference(&doc, AuthzConfig::validate);
            compare(&doc, AuthzConfig::from_json(&doc), theirs, &mut authz_tally);
        } else {
            let theirs = reference(&doc, MetricsConfig::validate);
            compare(
                &doc,
                MetricsConfig::from_json(&doc),
                theirs,
                &mut metrics_tally,
            );
        }
    }
    for (name, t) in [("authz", &authz_tally), ("metrics", &metrics_tally)] {
        eprintln!(
            "{name}: {} accepted by both, {} refused by both, {} refused only by the stricter reader",
            t.both_accept, t.both_refuse, t.stricter
        );
        // The generator reaches both outcomes often, so agreement is not vacuous.
        assert!(t.both_accept > 1_000 && t.both_refuse > 1_000, "{name}");
    }
}

#[test]
fn the_stricter_forms_are_refused_with_their_reason() {
    let cases: [(&str, &str, &str); 4] = [
        (
            r#"{"workload":"a","allow":[],"known_peers":{"spiffe://t/ns/n/sa/b":"b","spiffe://t/ns/n/sa/b":"c"}}"#,
            "known_peers.spiffe://t/ns/n/sa/b",
            "duplicate key `spiffe://t/ns/n/sa/b`",
        ),
        (
            r#"["a", null, "enforce", "info", []]"#,
            ".",
            "invalid type: sequence, expected struct AuthzConfig",
        ),
        (
            r#"{"workload":"a","allow":[["spiffe://t/ns/n/sa/b","b"]]}"#,
            "allow[0]",
            "invalid type: sequence, expected struct AllowEntry",
        ),
        (
            r#"{"workload":"a","allow":[],"mode":{"dry_run":null}}"#,
            "mode",
            "invalid type: map, expected a string",
        ),
    ];
    for (doc, field, message) in cases {
        // serde_json's derived reader takes each of them...
        assert!(
            serde_json::from_str::<AuthzConfig>(doc).is_ok(),
            "serde_json refuses {doc}"
        );
        // ...the filters' reader does not, and says why.
        let err = AuthzConfig::from_json(doc.as_bytes()).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.message.as_str()),
            (field, message),
            "{doc}"
        );
    }
}

#[test]
fn errors_read_like_serde_s() {
    let err = |doc: &str| {
        AuthzConfig::from_json(doc.as_bytes())
            .unwrap_err()
            .to_string()
    };
    let twice = r#"{"workload":"a","allow":[],"workload":"b"}"#;
    assert!(serde_json::from_str::<AuthzConfig>(twice).is_err());
    assert_eq!(
        err(twice),
        "invalid configuration at `workload`: duplicate field `workload`"
    );
    assert_eq!(
        err(r#"{"workload":"a"}"#),
        "invalid configuration at `.`: missing field `allow`"
    );
    assert_eq!(
        err(r#"{"workload":"a","allow":[],"allow_all":true}"#),
        "invalid configuration at `allow_all`: unknown field `allow_all`, expected one of \
         `workload`, `identity`, `mode`, `log_level`, `allow`, `known_peers`"
    );
    assert_eq!(
        err(r#"{"workload":"a","allow":[],"mode":"permissive"}"#),
        "invalid configuration at `mode`: unknown variant `permissive`, expected one of \
         `enforce`, `dry_run`"
    );
    assert_eq!(
        err(r#"{"workload":7,"allow":[]}"#),
        "invalid configuration at `workload`: invalid type: number, expected a string"
    );
    assert_eq!(
        err("{\"workload\":\"a\",\n \"allow\":[}"),
        "invalid configuration at `allow[0]`: expected value at line 2 column 11"
    );
}

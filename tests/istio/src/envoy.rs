//! What Envoy does with a bootstrap's `stats_config` when a Wasm module defines a metric, applied
//! to stat names so a test can see the series Prometheus gets.
//!
//! - **Stats matcher.** A stat is created only if `stats_matcher` accepts its full name
//!   (`inclusion_list`: one of the string matchers matches).
//! - **Tag extraction.** Every `stats_tags` rule is searched in the full name (std::regex,
//!   ECMAScript grammar, `regex_search`); on a match, group 2 is the tag's value and group 1's
//!   characters are removed from the name; the removals of all rules are applied together at the
//!   end, so each rule sees the original name. With `use_all_default_tags: false` (Istio's
//!   bootstrap) these rules are all there are.
//! - **Prometheus names.** Metrics a Wasm module defines live under `wasmcustom.`; the Prometheus
//!   endpoint strips that custom namespace and adds no `envoy_` prefix.
//!
//! The regexes are compiled with `regress`, an ECMAScript engine. std::regex's ECMAScript grammar
//! also accepts POSIX class names inside brackets (`[[:digit:]]`, C++ [re.grammar]), which
//! JavaScript does not; Istio's own rules use `[:digit:]`, so [`ecmascript_pattern`] rewrites
//! such class names to their ECMAScript escapes before compiling.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A `stats_config` as the bootstrap carries it (proto field names).
#[derive(Debug, Clone, Deserialize)]
pub struct StatsConfig {
    #[serde(default)]
    pub stats_tags: Vec<TagRule>,
    #[serde(default)]
    pub use_all_default_tags: Option<bool>,
    #[serde(default)]
    pub stats_matcher: Option<StatsMatcherConfig>,
}

/// One `stats_tags` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TagRule {
    pub tag_name: String,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub fixed_value: Option<String>,
}

/// `stats_matcher`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StatsMatcherConfig {
    #[serde(default)]
    pub reject_all: Option<bool>,
    #[serde(default)]
    pub inclusion_list: Option<ListMatcher>,
    #[serde(default)]
    pub exclusion_list: Option<ListMatcher>,
}

/// `envoy.type.matcher.v3.ListStringMatcher`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListMatcher {
    #[serde(default)]
    pub patterns: Vec<StringMatcher>,
}

/// `envoy.type.matcher.v3.StringMatcher`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StringMatcher {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub contains: Option<String>,
    pub safe_regex: Option<SafeRegex>,
    #[serde(default)]
    pub ignore_case: bool,
}

/// `envoy.type.matcher.v3.RegexMatcher` (RE2).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SafeRegex {
    pub regex: String,
}

/// One Deployment's entry in `meshguard-istio sidecar-stats` output.
#[derive(Debug, Clone, Deserialize)]
pub struct SidecarStats {
    pub deployment: String,
    #[serde(default)]
    pub bootstrap_override: Option<String>,
    pub stats_config: StatsConfig,
}

/// Why stats settings cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyError {
    #[error("stats settings are not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("tag `{0}` is specified twice")]
    DuplicateTag(String),
    #[error("tag `{name}`: {message}")]
    Rule { name: String, message: String },
    #[error("stats matcher regex `{regex}`: {message}")]
    MatcherRegex { regex: String, message: String },
}

/// Parses `meshguard-istio sidecar-stats` output.
pub fn parse_sidecar_stats(json: &str) -> Result<Vec<SidecarStats>, EnvoyError> {
    Ok(serde_json::from_str(json)?)
}

/// std::regex ECMAScript pattern → the same pattern in JavaScript's grammar: POSIX class names
/// inside bracket expressions become escapes or ranges. Everything else is passed through.
pub fn ecmascript_pattern(pattern: &str) -> Result<String, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len());
    let mut in_class = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            out.push(c);
            if let Some(next) = chars.get(i + 1) {
                out.push(*next);
            }
            i += 2;
            continue;
        }
        if in_class && c == '[' && chars.get(i + 1) == Some(&':') {
            let rest: String = chars[i + 2..].iter().collect();
            let Some(end) = rest.find(":]") else {
                return Err(format!("unterminated class name in `{pattern}`"));
            };
            let name = &rest[..end];
            let replacement = match name {
                "digit" | "d" => r"\d",
                "alpha" => "A-Za-z",
                "alnum" => "A-Za-z0-9",
                "upper" => "A-Z",
                "lower" => "a-z",
                "xdigit" => "0-9A-Fa-f",
                "space" | "s" => r"\s",
                "w" => r"\w",
                other => return Err(format!("class name [:{other}:] has no translation")),
            };
            out.push_str(replacement);
            i += 2 + end + 2;
            continue;
        }
        if !in_class && c == '[' {
            in_class = true;
            out.push(c);
            // `[^` and a leading `]`: ECMAScript has no literal leading `]`, so nothing special.
            i += 1;
            continue;
        }
        if in_class && c == ']' {
            in_class = false;
        }
        out.push(c);
        i += 1;
    }
    Ok(out)
}

/// A stat name after tag extraction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    /// The name with every rule's group 1 removed.
    pub name: String,
    /// Tags in rule order.
    pub tags: Vec<(String, String)>,
}

/// The `stats_tags` rules, compiled.
pub struct TagProducer {
    rules: Vec<(String, Rule)>,
}

enum Rule {
    Regex(regress::Regex),
    Fixed(String),
}

impl TagProducer {
    /// Compiles the rules as Envoy does; a tag name given twice is refused.
    pub fn new(rules: &[TagRule]) -> Result<Self, EnvoyError> {
        let mut compiled = Vec::with_capacity(rules.len());
        for r in rules {
            if compiled.iter().any(|(n, _)| n == &r.tag_name) {
                return Err(EnvoyError::DuplicateTag(r.tag_name.clone()));
            }
            let rule = match (&r.regex, &r.fixed_value) {
                (Some(re), None) => {
                    let js = ecmascript_pattern(re).map_err(|message| EnvoyError::Rule {
                        name: r.tag_name.clone(),
                        message,
                    })?;
                    Rule::Regex(regress::Regex::new(&js).map_err(|e| EnvoyError::Rule {
                        name: r.tag_name.clone(),
                        message: e.to_string(),
                    })?)
                }
                (None, Some(v)) => Rule::Fixed(v.clone()),
                _ => {
                    return Err(EnvoyError::Rule {
                        name: r.tag_name.clone(),
                        message: "needs exactly one of regex and fixed_value".into(),
                    })
                }
            };
            compiled.push((r.tag_name.clone(), rule));
        }
        Ok(Self { rules: compiled })
    }

    /// Extracts the tags of `stat` (its full name, `wasmcustom.` included).
    pub fn produce(&self, stat: &str) -> Tagged {
        let mut cut = vec![false; stat.len()];
        let mut tags = Vec::new();
        for (name, rule) in &self.rules {
            match rule {
                Rule::Fixed(v) => tags.push((name.clone(), v.clone())),
                Rule::Regex(re) => {
                    let Some(m) = re.find(stat) else { continue };
                    let value = m
                        .group(2)
                        .and_then(|r| stat.get(r))
                        .unwrap_or_default()
                        .to_owned();
                    tags.push((name.clone(), value));
                    if let Some(r) = m.group(1) {
                        if let Some(slice) = cut.get_mut(r) {
                            slice.iter_mut().for_each(|b| *b = true);
                        }
                    }
                }
            }
        }
        let name = stat
            .char_indices()
            .filter(|(i, _)| !cut.get(*i).copied().unwrap_or(false))
            .map(|(_, c)| c)
            .collect();
        Tagged { name, tags }
    }
}

/// The compiled `stats_matcher`.
pub struct StatsMatcher {
    reject_all: bool,
    inclusion: Option<Vec<CompiledMatcher>>,
    exclusion: Vec<CompiledMatcher>,
}

struct CompiledMatcher {
    spec: StringMatcher,
    regex: Option<regex::Regex>,
}

impl CompiledMatcher {
    fn new(spec: &StringMatcher) -> Result<Self, EnvoyError> {
        let regex = match &spec.safe_regex {
            Some(r) => Some(
                regex::Regex::new(&format!("^(?:{})$", r.regex)).map_err(|e| {
                    EnvoyError::MatcherRegex {
                        regex: r.regex.clone(),
                        message: e.to_string(),
                    }
                })?,
            ),
            None => None,
        };
        Ok(Self {
            spec: spec.clone(),
            regex,
        })
    }

    fn matches(&self, name: &str) -> bool {
        let s = &self.spec;
        let fold = |x: &str| {
            if s.ignore_case {
                x.to_ascii_lowercase()
            } else {
                x.to_owned()
            }
        };
        let n = fold(name);
        if let Some(e) = &s.exact {
            return n == fold(e);
        }
        if let Some(p) = &s.prefix {
            return n.starts_with(&fold(p));
        }
        if let Some(p) = &s.suffix {
            return n.ends_with(&fold(p));
        }
        if let Some(p) = &s.contains {
            return n.contains(&fold(p));
        }
        self.regex.as_ref().is_some_and(|r| r.is_match(name))
    }
}

impl StatsMatcher {
    pub fn new(config: Option<&StatsMatcherConfig>) -> Result<Self, EnvoyError> {
        let Some(c) = config else {
            return Ok(Self {
                reject_all: false,
                inclusion: None,
                exclusion: Vec::new(),
            });
        };
        let compile = |l: &ListMatcher| -> Result<Vec<CompiledMatcher>, EnvoyError> {
            l.patterns.iter().map(CompiledMatcher::new).collect()
        };
        Ok(Self {
            reject_all: c.reject_all.unwrap_or(false),
            inclusion: c.inclusion_list.as_ref().map(compile).transpose()?,
            exclusion: c
                .exclusion_list
                .as_ref()
                .map(compile)
                .transpose()?
                .unwrap_or_default(),
        })
    }

    /// Whether Envoy creates the stat with this full name.
    pub fn accepts(&self, stat: &str) -> bool {
        if self.reject_all {
            return false;
        }
        if let Some(inc) = &self.inclusion {
            return inc.iter().any(|m| m.matches(stat));
        }
        !self.exclusion.iter().any(|m| m.matches(stat))
    }
}

/// Envoy's custom stat namespace for metrics Wasm modules define.
pub const WASM_NAMESPACE: &str = "wasmcustom";

/// The Prometheus metric name of a tag-extracted stat name.
pub fn prometheus_name(extracted: &str) -> String {
    let (prefix, rest) = match extracted
        .strip_prefix(WASM_NAMESPACE)
        .and_then(|r| r.strip_prefix('.'))
    {
        Some(rest) => ("", rest),
        None => ("envoy_", extracted),
    };
    let sanitized: String = rest
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}{sanitized}")
}

/// One Prometheus series as the sidecar exports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Everything a sidecar's stats settings do to one stat a module defined (`stat` without the
/// `wasmcustom.` Envoy adds): `None` if the stats matcher drops it.
pub struct Sidecar {
    pub matcher: StatsMatcher,
    pub tags: TagProducer,
}

impl Sidecar {
    pub fn new(config: &StatsConfig) -> Result<Self, EnvoyError> {
        Ok(Self {
            matcher: StatsMatcher::new(config.stats_matcher.as_ref())?,
            tags: TagProducer::new(&config.stats_tags)?,
        })
    }

    /// The full Envoy name of a stat a Wasm module defined.
    pub fn full_name(stat: &str) -> String {
        format!("{WASM_NAMESPACE}.{stat}")
    }

    /// The series a module-defined `stat` becomes, with its tag-extracted name.
    pub fn series(&self, stat: &str) -> Option<(Series, Tagged)> {
        let full = Self::full_name(stat);
        if !self.matcher.accepts(&full) {
            return None;
        }
        let tagged = self.tags.produce(&full);
        Some((
            Series {
                name: prometheus_name(&tagged.name),
                labels: tagged.tags.iter().cloned().collect(),
            },
            tagged,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn posix_classes_become_escapes_only_inside_brackets() {
        assert_eq!(
            ecmascript_pattern(r"^http\.(((?:[_.[:digit:]\w]*|[_\[\]aAbB[:digit:]\w\:]*));\.)")
                .unwrap(),
            r"^http\.(((?:[_.\d\w]*|[_\[\]aAbB\d\w\:]*));\.)"
        );
        assert_eq!(ecmascript_pattern(r"a[:digit:]").unwrap(), r"a[:digit:]");
        assert!(ecmascript_pattern("[[:graph:]]").is_err());
    }

    #[test]
    fn extraction_removes_group_one_of_every_rule_from_the_original_name() {
        let rules = [
            TagRule {
                tag_name: "a".into(),
                regex: Some(r"(\.a=([^.]+))".into()),
                fixed_value: None,
            },
            TagRule {
                tag_name: "b".into(),
                regex: Some(r"^x(?:\.a=[^.]+)?(\.b=([^.]+))".into()),
                fixed_value: None,
            },
        ];
        let p = TagProducer::new(&rules).unwrap();
        let t = p.produce("x.a=1.b=2");
        assert_eq!(t.name, "x");
        assert_eq!(
            t.tags,
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        let mut twice = rules.to_vec();
        twice.push(rules[0].clone());
        assert!(matches!(
            TagProducer::new(&twice),
            Err(EnvoyError::DuplicateTag(_))
        ));
    }

    #[test]
    fn lazy_quantifiers_follow_ecmascript_backtracking() {
        // ECMAScript: the leftmost match, then the lazy `*?` takes as little as it can.
        let p = TagProducer::new(&[TagRule {
            tag_name: "t".into(),
            regex: Some(r"(t=\.=(.*?);\.;)".into()),
            fixed_value: None,
        }])
        .unwrap();
        let t = p.produce("t=.=a;.;t=.=b;.;m");
        assert_eq!(t.tags, vec![("t".into(), "a".into())]);
        assert_eq!(t.name, "t=.=b;.;m");
    }

    #[test]
    fn prometheus_names_strip_only_the_wasm_namespace() {
        assert_eq!(prometheus_name("wasmcustom.meshguard_x"), "meshguard_x");
        assert_eq!(prometheus_name("server.live"), "envoy_server_live");
    }
}

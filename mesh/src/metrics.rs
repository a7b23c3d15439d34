//! Metric names the filters define and the Envoy tag-extraction rules that turn them into
//! Prometheus labels. Both live here so the filters and the installer cannot drift apart.
//!
//! Envoy prefixes metrics defined by Wasm with `wasmcustom.` and its Prometheus endpoint exports
//! that namespace without the `envoy_` prefix. Labels are encoded in the stat name as
//! `.<label>=<value>` segments; the [`STATS_TAGS`] regexes (Envoy compiles them as std::regex in
//! its ECMAScript grammar; they use only constructs that grammar and Rust's `regex` read alike;
//! the installer puts them into the sidecars' bootstrap `stats_config.stats_tags` through a
//! `sidecar.istio.io/bootstrapOverride` ConfigMap) extract each segment into a tag, leaving the
//! bare metric name. Label values are drawn from closed sets (service names from the
//! policy, `unknown`, `none`, method tokens, code classes, deny reasons) and never contain `.` or
//! `=`, so a hostile request cannot create new series or forge a label.

/// Requests seen by the metrics filter: counter.
pub const REQUESTS_TOTAL: &str = "meshguard_requests_total";
/// Request duration in milliseconds, from request headers to the end of the stream: histogram.
pub const REQUEST_DURATION_MS: &str = "meshguard_request_duration_milliseconds";
/// Requests denied (or, in dry-run, that would have been denied) by the authorization filter: counter.
pub const DENIALS_TOTAL: &str = "meshguard_denials_total";
/// Requests admitted by the authorization filter: counter.
pub const ALLOWED_TOTAL: &str = "meshguard_allowed_total";

/// `source` label for a peer whose identity is valid but not known to the policy.
pub const SOURCE_UNKNOWN: &str = "unknown";
/// `source` label for a request without an mTLS peer identity.
pub const SOURCE_NONE: &str = "none";

/// The labels, in the order they appear in a stat name.
pub const LABELS: [&str; 6] = [
    "source",
    "destination",
    "method",
    "code_class",
    "reason",
    "mode",
];

/// One Envoy `stats_tags` entry: `regex`'s first capture group is removed from the stat name and
/// its second is the tag's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsTag {
    pub tag_name: &'static str,
    pub regex: &'static str,
}

/// The tag-extraction rules for every label the filters emit.
pub const STATS_TAGS: [StatsTag; 6] = [
    StatsTag {
        tag_name: "source",
        regex: r"^(?:wasmcustom\.)?meshguard_\w+(?:\.\w+=[^.=]+)*?(\.source=([^.=]+))",
    },
    StatsTag {
        tag_name: "destination",
        regex: r"^(?:wasmcustom\.)?meshguard_\w+(?:\.\w+=[^.=]+)*?(\.destination=([^.=]+))",
    },
    StatsTag {
        tag_name: "method",
        regex: r"^(?:wasmcustom\.)?meshguard_\w+(?:\.\w+=[^.=]+)*?(\.method=([^.=]+))",
    },
    StatsTag {
        tag_name: "code_class",
        regex: r"^(?:wasmcustom\.)?meshguard_\w+(?:\.\w+=[^.=]+)*?(\.code_class=([^.=]+))",
    },
    StatsTag {
        tag_name: "reason",
        regex: r"^(?:wasmcustom\.)?meshguard_\w+(?:\.\w+=[^.=]+)*?(\.reason=([^.=]+))",
    },
    StatsTag {
        tag_name: "mode",
        regex: r"^(?:wasmcustom\.)?meshguard_\w+(?:\.\w+=[^.=]+)*?(\.mode=([^.=]+))",
    },
];

/// Prefix of every stat the filters define, as Envoy names it (for `proxyStatsMatcher`).
pub const ENVOY_STAT_PREFIX: &str = "wasmcustom.meshguard_";

fn name(base: &str, labels: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(base.len() + labels.len() * 24);
    out.push_str(base);
    for (k, v) in labels {
        out.push('.');
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Name of the [`REQUESTS_TOTAL`] series for these labels.
pub fn requests_total(source: &str, destination: &str, method: &str, code_class: &str) -> String {
    name(
        REQUESTS_TOTAL,
        &[
            ("source", source),
            ("destination", destination),
            ("method", method),
            ("code_class", code_class),
        ],
    )
}

/// Name of the [`REQUEST_DURATION_MS`] series for these labels.
pub fn request_duration(source: &str, destination: &str, code_class: &str) -> String {
    name(
        REQUEST_DURATION_MS,
        &[
            ("source", source),
            ("destination", destination),
            ("code_class", code_class),
        ],
    )
}

/// Name of the [`DENIALS_TOTAL`] series for these labels; `mode` is `enforce` or `dry_run`.
pub fn denials_total(source: &str, destination: &str, reason: &str, mode: &str) -> String {
    name(
        DENIALS_TOTAL,
        &[
            ("source", source),
            ("destination", destination),
            ("reason", reason),
            ("mode", mode),
        ],
    )
}

/// Name of the [`ALLOWED_TOTAL`] series for these labels.
pub fn allowed_total(source: &str, destination: &str) -> String {
    name(
        ALLOWED_TOTAL,
        &[("source", source), ("destination", destination)],
    )
}

/// Most series one filter instance defines. Label values come from closed sets, but a large
/// configuration (up to 4096 peers) times methods and code classes could still ask the host for
/// tens of thousands of series, and a host may refuse some (the crates.io `proxy-wasm-host`
/// refuses a guest's 1025th metric name). Beyond this many, a new series is counted in its
/// metric's [`overflow_series`].
pub const MAX_SERIES: usize = 512;

/// The label value of every label of an overflow series.
pub const OVERFLOW: &str = "overflow";

/// The overflow series of a stat name: the same metric and labels, every value [`OVERFLOW`].
pub fn overflow_series(stat: &str) -> String {
    let mut parts = stat.split('.');
    let mut out = String::with_capacity(stat.len() + 32);
    out.push_str(parts.next().unwrap_or_default());
    for part in parts {
        out.push('.');
        out.push_str(part.split('=').next().unwrap_or_default());
        out.push('=');
        out.push_str(OVERFLOW);
    }
    out
}

/// PromQL for the request rate into `destination` (requests per second over 1m), the query a KEDA
/// trigger or a Grafana panel uses.
pub fn request_rate_query(namespace: &str, destination: &str) -> String {
    format!(
        "sum(rate({REQUESTS_TOTAL}{{namespace=\"{namespace}\",destination=\"{destination}\"}}[1m]))"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    /// Applies the tag rules the way Envoy's `TagProducerImpl` does: every rule is matched against
    /// the original name, group 2 is the tag value, and the characters of every group 1 are removed
    /// from the name at the end.
    fn extract(stat: &str) -> (String, Vec<(String, String)>) {
        let mut remove = vec![false; stat.len()];
        let mut tags = Vec::new();
        for tag in STATS_TAGS {
            let re = Regex::new(tag.regex).unwrap();
            if let Some(c) = re.captures(stat) {
                let whole = c.get(1).unwrap();
                tags.push((
                    tag.tag_name.to_owned(),
                    c.get(2).unwrap().as_str().to_owned(),
                ));
                remove[whole.range()].iter_mut().for_each(|r| *r = true);
            }
        }
        let name = stat
            .char_indices()
            .filter(|(i, _)| !remove[*i])
            .map(|(_, c)| c)
            .collect();
        (name, tags)
    }

    #[test]
    fn tag_rules_recover_every_label() {
        let stat = format!(
            "wasmcustom.{}",
            requests_total("user-service", "order-service", "GET", "2xx")
        );
        let (name, tags) = extract(&stat);
        assert_eq!(name, "wasmcustom.meshguard_requests_total");
        assert_eq!(
            tags,
            vec![
                ("source".into(), "user-service".into()),
                ("destination".into(), "order-service".into()),
                ("method".into(), "GET".into()),
                ("code_class".into(), "2xx".into()),
            ]
        );
        let (name, tags) = extract(&denials_total(
            "none",
            "payment-service",
            "no_mtls",
            "enforce",
        ));
        assert_eq!(name, "meshguard_denials_total");
        assert_eq!(tags.len(), 4);
        assert_eq!(tags[2], ("reason".into(), "no_mtls".into()));
    }

    #[test]
    fn a_service_named_like_a_label_does_not_confuse_extraction() {
        let (name, tags) = extract(&allowed_total("source", "destination"));
        assert_eq!(name, "meshguard_allowed_total");
        assert_eq!(
            tags,
            vec![
                ("source".into(), "source".into()),
                ("destination".into(), "destination".into())
            ]
        );
    }

    #[test]
    fn overflow_series_keep_the_metric_and_its_labels() {
        let stat = requests_total("user-service", "order-service", "GET", "2xx");
        let over = overflow_series(&stat);
        assert_eq!(
            over,
            "meshguard_requests_total.source=overflow.destination=overflow.method=overflow.code_class=overflow"
        );
        let (name, tags) = extract(&over);
        assert_eq!(name, REQUESTS_TOTAL);
        assert_eq!(tags.len(), 4);
        assert_eq!(overflow_series(&over), over);
    }

    #[test]
    fn rules_ignore_other_stats() {
        let (name, tags) = extract("cluster.outbound|5000||order-service.upstream_rq.source=x");
        assert!(tags.is_empty());
        assert_eq!(
            name,
            "cluster.outbound|5000||order-service.upstream_rq.source=x"
        );
    }
}

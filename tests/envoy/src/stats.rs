//! Envoy's `/stats/prometheus` as samples: the series Prometheus would scrape from the sidecar.

use std::collections::BTreeMap;

/// One sample line: `name{label="value",…} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a text exposition (comment lines skipped). A line that is not a sample is an
/// error naming it.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(sample(line).ok_or_else(|| format!("not a sample: {line}"))?);
    }
    Ok(out)
}

fn sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, labels(rest.strip_suffix('}')?)?),
        None => (series, BTreeMap::new()),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn labels(mut text: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    while !text.is_empty() {
        let (key, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        out.insert(key.trim_start_matches(',').to_owned(), value);
        text = rest.get(end + 1..)?.trim_start_matches(',');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_with_labels() {
        let s = parse(
            "# TYPE meshguard_requests_total counter\nmeshguard_requests_total{source=\"user-service\",code_class=\"2xx\"} 3\nmeshguard_x 1.5\n",
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels["source"], "user-service");
        assert_eq!(s[0].labels["code_class"], "2xx");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].name, "meshguard_x");
        assert!(parse("garbage").is_err());
    }
}

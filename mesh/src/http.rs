//! HTTP facts as the filters see them: method tokens, request paths and status classes.

/// Methods that get their own metric label; anything else is counted as `OTHER` so that a hostile
/// client cannot create unbounded label values.
pub const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// The metric label for a request method: one of [`KNOWN_METHODS`] or `OTHER`.
pub fn method_label(raw: &[u8]) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| m.as_bytes() == raw)
        .copied()
        .unwrap_or("OTHER")
}

/// The metric label for a response status: `1xx`..`5xx`, or `other` for anything outside 100..=599.
pub fn code_class(status: u64) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// Parses an HTTP `:status` value (three ASCII digits).
pub fn parse_status(raw: &[u8]) -> Option<u64> {
    if raw.len() != 3 || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// Is `token` a valid HTTP method token (RFC 9110 `tchar`s, upper-case letters only here)?
pub fn is_method_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 32
        && token
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Why a request path cannot be matched against path prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    /// Not valid UTF-8 or not starting with `/`.
    Malformed,
    /// Contains `.`/`..` segments, an empty segment, a backslash, or a percent-encoded `/`, `\`, `.` or `%`
    /// that a backend could decode into a different path than the one matched.
    NotNormalized,
}

/// Returns the path part of a `:path` header (query and fragment removed) if it is safe to match
/// on by prefix. Only normalized paths are accepted: matching `/orders` against `/orders/../admin`
/// would otherwise authorize a request for `/admin`.
pub fn normalized_path(raw: &[u8]) -> Result<&str, PathProblem> {
    let s = std::str::from_utf8(raw).map_err(|_| PathProblem::Malformed)?;
    let end = s.find(['?', '#']).unwrap_or(s.len());
    let path = &s[..end];
    if !path.starts_with('/') {
        return Err(PathProblem::Malformed);
    }
    if path.contains('\\') {
        return Err(PathProblem::NotNormalized);
    }
    let lower = path.to_ascii_lowercase();
    if ["%2f", "%5c", "%2e", "%25"]
        .iter()
        .any(|enc| lower.contains(enc))
    {
        return Err(PathProblem::NotNormalized);
    }
    // Every segment after the leading `/` must be non-empty and not `.` or `..`; a single trailing
    // `/` is allowed.
    let body = &path[1..];
    let body = body.strip_suffix('/').unwrap_or(body);
    if !body.is_empty()
        && body
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(PathProblem::NotNormalized);
    }
    Ok(path)
}

/// Does `path` fall under `prefix`, on a segment boundary? `/orders` covers `/orders`,
/// `/orders/` and `/orders/7`, but not `/orders-admin`. A prefix ending in `/` covers what
/// starts with it.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_a_closed_set() {
        assert_eq!(method_label(b"GET"), "GET");
        assert_eq!(method_label(b"get"), "OTHER");
        assert_eq!(method_label(b"\xff\xfe"), "OTHER");
        assert_eq!(method_label(&[b'A'; 10_000]), "OTHER");
    }

    #[test]
    fn status_classes() {
        assert_eq!(parse_status(b"200"), Some(200));
        assert_eq!(parse_status(b"2000"), None);
        assert_eq!(parse_status(b"+20"), None);
        assert_eq!(code_class(403), "4xx");
        assert_eq!(code_class(99), "other");
        assert_eq!(code_class(600), "other");
    }

    #[test]
    fn paths_must_be_normalized() {
        assert_eq!(normalized_path(b"/orders?user_id=7"), Ok("/orders"));
        assert_eq!(normalized_path(b"/orders/"), Ok("/orders/"));
        assert_eq!(normalized_path(b"/"), Ok("/"));
        assert_eq!(normalized_path(b"/a#frag"), Ok("/a"));
        for bad in [
            &b"/orders/../admin"[..],
            b"/orders/./x",
            b"/orders//x",
            b"/orders/%2e%2e/admin",
            b"/orders%2Fadmin",
            b"/orders\\..\\admin",
            b"/orders/%252e",
        ] {
            assert_eq!(
                normalized_path(bad),
                Err(PathProblem::NotNormalized),
                "{bad:?}"
            );
        }
        assert_eq!(normalized_path(b"orders"), Err(PathProblem::Malformed));
        assert_eq!(normalized_path(b"/\xff"), Err(PathProblem::Malformed));
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(path_has_prefix("/orders", "/orders"));
        assert!(path_has_prefix("/orders/7", "/orders"));
        assert!(path_has_prefix("/orders/", "/orders"));
        assert!(!path_has_prefix("/orders-admin", "/orders"));
        assert!(!path_has_prefix("/order", "/orders"));
        assert!(path_has_prefix("/api/v1/x", "/api/"));
        assert!(path_has_prefix("/anything", "/"));
    }
}

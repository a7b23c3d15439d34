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

/// The index of a request method in [`KNOWN_METHODS`], or `KNOWN_METHODS.len()` for `OTHER`.
pub fn method_index(raw: &[u8]) -> usize {
    KNOWN_METHODS
        .iter()
        .position(|m| m.as_bytes() == raw)
        .unwrap_or(KNOWN_METHODS.len())
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
    /// Contains `.`/`..` segments, an empty segment, a backslash, a `;` (path parameters), a control
    /// character, or a percent-encoded `/`, `\`, `.`, `%`, `;` or NUL that a backend could decode
    /// or strip into a different path than the one matched.
    NotNormalized,
}

/// Returns the path part of a `:path` header (query and fragment removed) if it is safe to match
/// on by prefix. Only normalized paths are accepted: matching `/orders` against `/orders/../admin`
/// would otherwise authorize a request for `/admin`.
pub fn normalized_path(raw: &[u8]) -> Result<&str, PathProblem> {
    let s = std::str::from_utf8(raw).map_err(|_| PathProblem::Malformed)?;
    let end = raw
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(raw.len());
    let path = raw.get(..end).unwrap_or_default();
    if path.first() != Some(&b'/') {
        return Err(PathProblem::Malformed);
    }
    // A backslash, a `;` (path parameters: Tomcat, Spring and Jetty drop `;…` from each segment,
    // so `/orders/..;/admin` is `/admin` to them) or a control character can make the backend
    // resolve another path than the one matched.
    if path
        .iter()
        .any(|&b| b == b'\\' || b == b';' || b.is_ascii_control())
    {
        return Err(PathProblem::NotNormalized);
    }
    // Percent-encoded `/` `\` `.` `%` `;` and NUL, in either case: %2f %5c %2e %25 %3b %00.
    if path.windows(3).any(|w| match *w {
        [b'%', hi, lo] => matches!(
            (hi, lo.to_ascii_lowercase()),
            (b'2', b'f' | b'e' | b'5') | (b'5', b'c') | (b'3', b'b') | (b'0', b'0')
        ),
        _ => false,
    }) {
        return Err(PathProblem::NotNormalized);
    }
    // Every segment after the leading `/` must be non-empty and not `.` or `..`; a single trailing
    // `/` is allowed.
    let body = path.get(1..).unwrap_or_default();
    let body = body.strip_suffix(b"/").unwrap_or(body);
    if !body.is_empty()
        && body
            .split(|&b| b == b'/')
            .any(|seg| seg.is_empty() || seg == b"." || seg == b"..")
    {
        return Err(PathProblem::NotNormalized);
    }
    // `end` is at an ASCII byte or at the end, so it is a character boundary.
    s.get(..end).ok_or(PathProblem::Malformed)
}

/// Request headers that ask a framework to run another method than `:method` (Express
/// `method-override`, Spring, Rails, Laravel, ASP.NET, Symfony and others honour one or more).
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The query parameter frameworks read as a method override (Spring `HiddenHttpMethodFilter`,
/// Rails, Laravel, Symfony).
pub const METHOD_OVERRIDE_PARAM: &str = "_method";

/// Does the query of `raw_path` carry a [`METHOD_OVERRIDE_PARAM`] parameter? Parameter names are
/// compared after percent-decoding and case-insensitively, so `%5Fmethod` and `_METHOD` count too;
/// a path that is not UTF-8 or whose name cannot be decoded counts as carrying one (fail-closed).
pub fn query_has_method_override(raw_path: &[u8]) -> bool {
    let Some(q) = raw_path.iter().position(|b| *b == b'?') else {
        return false;
    };
    let query = &raw_path[q + 1..];
    let query = match query.iter().position(|b| *b == b'#') {
        Some(end) => &query[..end],
        None => query,
    };
    query.split(|b| *b == b'&' || *b == b';').any(|param| {
        let name = match param.iter().position(|b| *b == b'=') {
            Some(eq) => &param[..eq],
            None => param,
        };
        match percent_decode(name) {
            Some(decoded) => decoded
                .trim_ascii()
                .eq_ignore_ascii_case(METHOD_OVERRIDE_PARAM.as_bytes()),
            None => true,
        }
    })
}

/// Percent-decodes `raw` (and `+` as a space, as form decoding does); `None` for a bad escape.
fn percent_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match b {
            b'%' => {
                let hi = raw.get(i + 1).and_then(|c| (*c as char).to_digit(16))?;
                let lo = raw.get(i + 2).and_then(|c| (*c as char).to_digit(16))?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// What kind of gRPC request a `content-type` value makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcKind {
    /// Not gRPC.
    None,
    /// gRPC over HTTP/2: Envoy's `Grpc::Common::hasGrpcContentType`
    /// (`source/common/grpc/common.cc`), i.e. exactly `application/grpc`, or starting with
    /// `application/grpc+`. Parameters (`application/grpc;charset=utf-8`) make it not gRPC for
    /// Envoy, which then answers a local reply as plain HTTP (pinned by tests/envoy).
    Grpc,
    /// gRPC-web, binary: `application/grpc-web` or `application/grpc-web+<codec>`.
    GrpcWeb,
    /// gRPC-web, base64 text: `application/grpc-web-text` or `application/grpc-web-text+<codec>`.
    GrpcWebText,
}

/// Classifies a request's `content-type` as Envoy does for gRPC (case-sensitive, like Envoy's
/// `absl::StartsWith` on the header value) and as gRPC-web clients send it.
pub fn grpc_kind(content_type: &[u8]) -> GrpcKind {
    let kind = |base: &[u8], seps: &[u8]| {
        content_type
            .strip_prefix(base)
            .is_some_and(|rest| rest.is_empty() || rest.first().is_some_and(|c| seps.contains(c)))
    };
    if kind(b"application/grpc", b"+") {
        GrpcKind::Grpc
    } else if kind(b"application/grpc-web-text", b"+;") {
        GrpcKind::GrpcWebText
    } else if kind(b"application/grpc-web", b"+;") {
        GrpcKind::GrpcWeb
    } else {
        GrpcKind::None
    }
}

/// Envoy's `Grpc::Utility::grpcToHttpStatus`: the HTTP status a gRPC status stands for, so that a
/// gRPC response (always HTTP 200) is counted in the code class of what happened.
pub fn grpc_to_http_status(grpc_status: u64) -> u64 {
    match grpc_status {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// Parses a `grpc-status` value (decimal, at most two digits, as gRPC sends it).
pub fn parse_grpc_status(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw.len() > 2 || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(raw.iter().fold(0, |acc, d| acc * 10 + u64::from(d - b'0')))
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
        assert_eq!(method_index(b"GET"), 0);
        assert_eq!(method_index(b"get"), KNOWN_METHODS.len());
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
            b"/orders/..;/admin",
            b"/orders/.;/admin",
            b"/orders;x=1/../admin",
            b"/orders;jsessionid=1",
            b"/orders/%3b/x",
            b"/orders/%3B/x",
            b"/orders/\0",
            b"/orders/%00",
            b"/orders/\t",
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

    /// The string-based form this check had before it moved to bytes, kept to show the two agree.
    fn normalized_path_by_strings(raw: &[u8]) -> Result<&str, PathProblem> {
        let s = std::str::from_utf8(raw).map_err(|_| PathProblem::Malformed)?;
        let path = &s[..s.find(['?', '#']).unwrap_or(s.len())];
        if !path.starts_with('/') {
            return Err(PathProblem::Malformed);
        }
        let lower = path.to_ascii_lowercase();
        if path
            .bytes()
            .any(|b| b == b'\\' || b == b';' || b.is_ascii_control())
            || ["%2f", "%5c", "%2e", "%25", "%3b", "%00"]
                .iter()
                .any(|enc| lower.contains(enc))
        {
            return Err(PathProblem::NotNormalized);
        }
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

    #[test]
    fn byte_and_string_path_checks_agree() {
        // Every path of up to 4 characters over an alphabet holding each special case.
        let alphabet: &[&str] = &[
            "/", ".", "%", "2", "f", "F", "5", "c", "3", "b", "0", "e", "?", "#", ";", "\\",
            "\u{0}", "a", "\u{e9}",
        ];
        let mut paths = vec![String::new()];
        let mut checked = 0;
        for _ in 0..4 {
            let mut next = Vec::new();
            for p in &paths {
                for c in alphabet {
                    next.push(format!("{p}{c}"));
                }
            }
            for p in &next {
                let with_slash = format!("/{p}");
                for candidate in [p.as_bytes(), with_slash.as_bytes()] {
                    assert_eq!(
                        normalized_path(candidate),
                        normalized_path_by_strings(candidate),
                        "{candidate:?}"
                    );
                    checked += 1;
                }
            }
            paths = next;
        }
        assert!(checked > 250_000);
        assert_eq!(normalized_path(b"/a\xff"), Err(PathProblem::Malformed));
    }

    #[test]
    fn method_override_parameters_are_found_however_spelled() {
        for with in [
            &b"/orders?_method=DELETE"[..],
            b"/orders?a=1&_method=DELETE",
            b"/orders?a=1;_method=DELETE",
            b"/orders?%5Fmethod=DELETE",
            b"/orders?%5fmethod=DELETE",
            b"/orders?_%6Dethod=DELETE",
            b"/orders?_METHOD=delete",
            b"/orders?_method",
            b"/orders?+_method=x",
            b"/orders?%zz=1",
        ] {
            assert!(query_has_method_override(with), "{with:?}");
        }
        for without in [
            &b"/orders"[..],
            b"/orders?user_id=7",
            b"/orders?x_method=1",
            b"/orders?method=DELETE",
            b"/orders#_method=1",
            b"/orders?a=1#_method=1",
            b"/_method",
        ] {
            assert!(!query_has_method_override(without), "{without:?}");
        }
    }

    #[test]
    fn grpc_content_types_follow_envoy() {
        for ct in [
            &b"application/grpc"[..],
            b"application/grpc+proto",
            b"application/grpc+json",
        ] {
            assert_eq!(grpc_kind(ct), GrpcKind::Grpc, "{ct:?}");
        }
        for ct in [&b"application/grpc-web"[..], b"application/grpc-web+proto"] {
            assert_eq!(grpc_kind(ct), GrpcKind::GrpcWeb, "{ct:?}");
        }
        for ct in [
            &b"application/grpc-web-text"[..],
            b"application/grpc-web-text+proto",
        ] {
            assert_eq!(grpc_kind(ct), GrpcKind::GrpcWebText, "{ct:?}");
        }
        for ct in [
            &b"application/grpcx"[..],
            b"application/grpc;charset=utf-8",
            b"application/grpc-webx",
            b"application/grpc-web-textual",
            b"application/grpc-",
            b"Application/grpc",
            b"application/json",
            b"",
            b" application/grpc",
        ] {
            assert_eq!(grpc_kind(ct), GrpcKind::None, "{ct:?}");
        }
    }

    #[test]
    fn grpc_statuses_map_to_http_classes() {
        assert_eq!(grpc_to_http_status(7), 403);
        assert_eq!(grpc_to_http_status(0), 200);
        assert_eq!(grpc_to_http_status(16), 401);
        assert_eq!(grpc_to_http_status(14), 503);
        assert_eq!(grpc_to_http_status(99), 500);
        assert_eq!(parse_grpc_status(b"7"), Some(7));
        assert_eq!(parse_grpc_status(b"16"), Some(16));
        assert_eq!(parse_grpc_status(b"123"), None);
        assert_eq!(parse_grpc_status(b"-1"), None);
        assert_eq!(parse_grpc_status(b""), None);
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

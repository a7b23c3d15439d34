//! Any request facts against a fixed policy: never a panic, and an allowed request is always from
//! the one admitted identity, with an admitted method and a normalized path under the prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_mesh::http::{normalized_path, path_has_prefix};
use meshguard_mesh::{Authorizer, Decision, RequestFacts};

const POLICY: &[u8] = br#"{"workload":"order-service","allow":[
  {"from":"spiffe://cluster.local/ns/shop/sa/user-service","service":"user-service",
   "methods":["GET"],"path_prefixes":["/orders"]}]}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(authorizer) = Authorizer::from_json(POLICY) else {
        return;
    };
    // Split the input into identity, method and path at the first two NUL bytes.
    let mut parts = data.splitn(3, |b| *b == 0);
    let id = parts.next();
    let method = parts.next();
    let path = parts.next();
    let facts = RequestFacts {
        mtls: Some(data.len() % 7 != 0),
        peer_identity: id,
        method,
        path,
        method_override_header: data.len() % 5 == 0,
        ..RequestFacts::default()
    };
    if let Decision::Allow { source } = authorizer.decide(&facts) {
        assert_eq!(source, "user-service");
        assert_eq!(facts.mtls, Some(true));
        assert_eq!(
            id,
            Some(&b"spiffe://cluster.local/ns/shop/sa/user-service"[..])
        );
        assert_eq!(method, Some(&b"GET"[..]));
        let p = normalized_path(path.unwrap_or_default()).unwrap_or("/not-normalized");
        assert!(path_has_prefix(p, "/orders"));
        assert!(!p.contains(".."));
        assert!(
            !p.contains(';'),
            "path parameters are never admitted under a prefix"
        );
        assert!(!facts.method_override_header);
        assert!(!meshguard_mesh::http::query_has_method_override(
            path.unwrap_or_default()
        ));
    }
});

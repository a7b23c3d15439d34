//! Any bytes as a filter configuration: never a panic; what parses re-serializes to an equal value,
//! and serde_json (an independent JSON implementation) reads it to that same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_mesh::{Authorizer, AuthzConfig, MetricsConfig};

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = AuthzConfig::from_json(data) {
        let again = AuthzConfig::from_json(cfg.to_json().as_bytes());
        assert_eq!(again.as_ref().ok(), Some(&cfg));
        assert_eq!(
            serde_json::from_slice::<AuthzConfig>(data).ok(),
            Some(cfg.clone())
        );
        assert!(Authorizer::new(cfg).is_ok());
    }
    if let Ok(cfg) = MetricsConfig::from_json(data) {
        assert_eq!(
            MetricsConfig::from_json(cfg.to_json().as_bytes()).ok(),
            Some(cfg.clone())
        );
        assert_eq!(
            serde_json::from_slice::<MetricsConfig>(data).ok(),
            Some(cfg)
        );
    }
});

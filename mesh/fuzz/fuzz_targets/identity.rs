//! Any bytes as a peer identity: never a panic; an accepted identity is exactly its canonical form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard_mesh::SpiffeId;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = SpiffeId::parse_bytes(data) {
        assert_eq!(id.to_string().as_bytes(), data);
        assert_eq!(SpiffeId::parse(&id.to_string()), Ok(id));
    }
});

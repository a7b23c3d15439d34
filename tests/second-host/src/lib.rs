//! Runs the compiled meshguard filters in the crates.io `proxy-wasm-host` (0.2.0), an independent
//! Proxy-Wasm ABI v0.2.1 host on wasmtime 49, with the scenarios of `meshguard-scenarios`. The
//! embedding (header maps, properties, local replies, metrics) is this crate's: see
//! `tests/wasm-host/README.md`, "A second host", for where it and the workspace's host differ.

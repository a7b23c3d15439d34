//! The Proxy-Wasm host calls the filters make, declared here instead of taken from
//! `proxy_wasm::hostcalls`.
//!
//! The SDK's wrappers (`proxy-wasm` 0.2.5, `src/hostcalls.rs`) `panic!` on any status they do not
//! expect: `define_metric`, `increment_metric` for most statuses, `send_http_response`,
//! `send_grpc_response`, `reset_http_request`, `log` (through its logger's `unwrap`), and
//! `get_property` for anything but NotFound, SerializationFailure and InternalFailure. With
//! `panic = "abort"` a panic is a trap, which fails the plugin's VM in Envoy. These wrappers
//! return every status to the caller instead, so a host that refuses a call gets the handling
//! the filter means to give it.
//!
//! The imports have the ABI v0.2.1 signatures (`proxy-wasm/spec`, `abi-versions/v0.2.1`); the
//! SDK imports the same names with the same wasm types, so the module still has one import of
//! each. Statuses are read as plain integers: a value outside the SDK's `Status` enum is not
//! undefined behaviour here.
#![allow(unsafe_code)] // the ABI boundary: raw imports, and buffers the host allocated for us

use std::ptr::null_mut;

/// `proxy_status_t` values the filters look at.
pub const OK: u32 = 0;
pub const NOT_FOUND: u32 = 1;

/// `proxy_map_type_t`.
pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;
pub const RESPONSE_TRAILERS: u32 = 3;
/// `proxy_buffer_type_t`: the plugin configuration.
pub const PLUGIN_CONFIGURATION: u32 = 7;
/// `proxy_stream_type_t`: the HTTP request.
pub const STREAM_HTTP_REQUEST: u32 = 0;
/// `proxy_metric_type_t`.
pub const METRIC_COUNTER: u32 = 0;
pub const METRIC_HISTOGRAM: u32 = 2;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_close_stream(stream_type: u32) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

/// Takes ownership of a buffer the host filled through the guest's `proxy_on_memory_allocate`.
/// Hosts return an empty value as pointer 0 (cpp-host `copyToPointerSize`): an empty vector.
fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: the host allocated `size` bytes with the SDK's `proxy_on_memory_allocate` (a boxed
    // slice of exactly `size` bytes) and hands them over; this is how the SDK itself frees them.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// A value-returning call: `Ok(None)` for NotFound, `Ok(Some(value))` (maybe empty) for OK,
/// `Err(status)` otherwise.
fn fetch(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Option<Vec<u8>>, u32> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    match call(&mut data, &mut size) {
        OK => Ok(Some(owned(data, size))),
        NOT_FOUND => Ok(None),
        status => Err(status),
    }
}

/// `proxy_log`; a refusal is ignored (there is nowhere else to report it).
pub fn log(level: u32, message: &[u8]) {
    // SAFETY: the pointer and length describe `message`, which outlives the call.
    let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

/// `proxy_get_log_level`: the level the host logs at (0 trace … 5 critical).
pub fn log_level() -> Option<u32> {
    let mut level = 0;
    // SAFETY: `level` is a valid place for the host to write a u32.
    match unsafe { proxy_get_log_level(&mut level) } {
        OK => Some(level),
        _ => None,
    }
}

/// `proxy_get_buffer_bytes`.
pub fn buffer(buffer_type: u32, start: usize, max_size: usize) -> Result<Option<Vec<u8>>, u32> {
    // SAFETY: the out-pointers are valid for the call; the result is taken over by `owned`.
    fetch(|d, s| unsafe { proxy_get_buffer_bytes(buffer_type, start, max_size, d, s) })
}

/// `proxy_get_header_map_value` (the first value of `key`, which must be lower case).
pub fn header(map_type: u32, key: &[u8]) -> Result<Option<Vec<u8>>, u32> {
    // SAFETY: as for `buffer`; `key` outlives the call.
    fetch(|d, s| unsafe { proxy_get_header_map_value(map_type, key.as_ptr(), key.len(), d, s) })
}

/// `proxy_get_header_map_pairs`: the whole map in the ABI's pairs serialization (see
/// [`serialize_pairs`] and [`Pairs`]).
pub fn header_pairs(map_type: u32) -> Result<Option<Vec<u8>>, u32> {
    // SAFETY: as for `buffer`.
    fetch(|d, s| unsafe { proxy_get_header_map_pairs(map_type, d, s) })
}

/// `proxy_set_tick_period_milliseconds`: `proxy_on_tick` every `period` ms from now on.
pub fn set_tick_period(period_ms: u32) -> Result<(), u32> {
    // SAFETY: no pointers.
    match unsafe { proxy_set_tick_period_milliseconds(period_ms) } {
        OK => Ok(()),
        status => Err(status),
    }
}

/// `proxy_get_property`; `path` is the segments joined by NUL bytes.
pub fn property(path: &[u8]) -> Result<Option<Vec<u8>>, u32> {
    // SAFETY: as for `buffer`; `path` outlives the call.
    fetch(|d, s| unsafe { proxy_get_property(path.as_ptr(), path.len(), d, s) })
}

/// `proxy_send_local_response`. `headers` is a map in the ABI's pairs serialization
/// ([`serialize_pairs`]); `grpc_status` is -1 for none.
pub fn send_local_response(
    status_code: u32,
    details: &[u8],
    body: &[u8],
    headers: &[u8],
    grpc_status: i32,
) -> Result<(), u32> {
    // SAFETY: every pointer/length pair describes a live slice.
    let status = unsafe {
        proxy_send_local_response(
            status_code,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            grpc_status,
        )
    };
    if status == OK {
        Ok(())
    } else {
        Err(status)
    }
}

/// `proxy_close_stream`: resets the stream.
pub fn close_stream(stream_type: u32) -> Result<(), u32> {
    // SAFETY: no pointers.
    match unsafe { proxy_close_stream(stream_type) } {
        OK => Ok(()),
        status => Err(status),
    }
}

/// `proxy_define_metric`.
pub fn define_metric(metric_type: u32, name: &[u8]) -> Result<u32, u32> {
    let mut id = 0;
    // SAFETY: `name` outlives the call and `id` is a valid place for a u32.
    match unsafe { proxy_define_metric(metric_type, name.as_ptr(), name.len(), &mut id) } {
        OK => Ok(id),
        status => Err(status),
    }
}

/// `proxy_increment_metric`.
pub fn increment_metric(id: u32, offset: i64) -> Result<(), u32> {
    // SAFETY: no pointers.
    match unsafe { proxy_increment_metric(id, offset) } {
        OK => Ok(()),
        status => Err(status),
    }
}

/// `proxy_record_metric`.
pub fn record_metric(id: u32, value: u64) -> Result<(), u32> {
    // SAFETY: no pointers.
    match unsafe { proxy_record_metric(id, value) } {
        OK => Ok(()),
        status => Err(status),
    }
}

//! The `env.proxy_*` host functions (Proxy-Wasm ABI 0.2.1), implemented after
//! proxy-wasm-cpp-host `src/exports.cc` and Envoy
//! `source/extensions/common/wasm/context.cc`.

use std::collections::HashSet;

use wasmtime::{Caller, IntoFunc, Linker};

use crate::error::HostCallTrap;
use crate::memory::{copy_out, finish, read, write_u32, write_u64, Fail};
use crate::pairs;
use crate::property;
use crate::state::{HostState, StreamPhase, VmPhase};
use crate::types::{
    BufferType, Headers, LocalResponse, LogLevel, MapType, MetricType, Status, StreamType,
};

type C<'a> = Caller<'a, HostState>;

/// Names of the functions defined natively, `(module, name)`.
pub(crate) type Defined = HashSet<(String, String)>;

/// Host calls Envoy allows while `_initialize`/`main` run
/// (`WasmBase::startVm`, `setRestrictedCallback`).
const START_ALLOWED: &[&str] = &[
    "proxy_log",
    "fd_write",
    "args_sizes_get",
    "args_get",
    "environ_sizes_get",
    "environ_get",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "clock_time_get",
    "random_get",
];

/// Traps if `name` is called while the VM starts and Envoy forbids it.
pub(crate) fn guard(caller: &C<'_>, name: &'static str) -> wasmtime::Result<()> {
    if caller.data().vm_phase == VmPhase::Starting && !START_ALLOWED.contains(&name) {
        return Err(wasmtime::Error::new(HostCallTrap::Restricted(
            name.to_string(),
        )));
    }
    Ok(())
}

pub(crate) fn def<Params, Args>(
    linker: &mut Linker<HostState>,
    defined: &mut Defined,
    module: &str,
    name: &str,
    func: impl IntoFunc<HostState, Params, Args>,
) -> wasmtime::Result<()> {
    linker.func_wrap(module, name, func)?;
    defined.insert((module.to_string(), name.to_string()));
    Ok(())
}

/// Defines every implemented `env.proxy_*` function.
pub(crate) fn define(linker: &mut Linker<HostState>, d: &mut Defined) -> wasmtime::Result<()> {
    const ENV: &str = "env";

    def(
        linker,
        d,
        ENV,
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| {
            guard(&c, "proxy_log")?;
            finish(log(&mut c, level, ptr, len))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_get_log_level",
        |mut c: C<'_>, ptr: i32| {
            guard(&c, "proxy_get_log_level")?;
            let level = c.data().log_level as u32;
            finish(write_u32(&mut c, ptr, level).map_err(Fail::from))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ptr: i32| {
            guard(&c, "proxy_get_current_time_nanoseconds")?;
            let now = c.data().realtime_ns;
            finish(write_u64(&mut c, ptr, now).map_err(Fail::from))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, period: i32| {
            guard(&c, "proxy_set_tick_period_milliseconds")?;
            c.data_mut().tick_period_ms = Some(period as u32);
            finish(Ok(()))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_get_property",
        |mut c: C<'_>, path_ptr: i32, path_len: i32, out_ptr: i32, out_len: i32| {
            guard(&c, "proxy_get_property")?;
            finish(get_property(&mut c, path_ptr, path_len, out_ptr, out_len))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_set_property",
        |mut c: C<'_>, path_ptr: i32, path_len: i32, value_ptr: i32, value_len: i32| {
            guard(&c, "proxy_set_property")?;
            finish(set_property(
                &mut c, path_ptr, path_len, value_ptr, value_len,
            ))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_get_buffer_status",
        |mut c: C<'_>, ty: i32, len_ptr: i32, flags_ptr: i32| {
            guard(&c, "proxy_get_buffer_status")?;
            finish(get_buffer_status(&mut c, ty, len_ptr, flags_ptr))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, ty: i32, start: i32, len: i32, out_ptr: i32, out_len: i32| {
            guard(&c, "proxy_get_buffer_bytes")?;
            finish(get_buffer_bytes(&mut c, ty, start, len, out_ptr, out_len))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, ty: i32, start: i32, len: i32, data_ptr: i32, data_len: i32| {
            guard(&c, "proxy_set_buffer_bytes")?;
            finish(set_buffer_bytes(&mut c, ty, start, len, data_ptr, data_len))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, ty: i32, out_ptr: i32, out_len: i32| {
            guard(&c, "proxy_get_header_map_pairs")?;
            finish(get_header_map_pairs(&mut c, ty, out_ptr, out_len))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, ty: i32, ptr: i32, len: i32| {
            guard(&c, "proxy_set_header_map_pairs")?;
            finish(set_header_map_pairs(&mut c, ty, ptr, len))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_get_header_map_value",
        |mut c: C<'_>, ty: i32, key_ptr: i32, key_len: i32, out_ptr: i32, out_len: i32| {
            guard(&c, "proxy_get_header_map_value")?;
            finish(get_header_map_value(
                &mut c, ty, key_ptr, key_len, out_ptr, out_len,
            ))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_add_header_map_value",
        |mut c: C<'_>, ty: i32, key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32| {
            guard(&c, "proxy_add_header_map_value")?;
            finish(modify_header(
                &mut c,
                HeaderOp::Add,
                ty,
                key_ptr,
                key_len,
                Some((value_ptr, value_len)),
            ))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_replace_header_map_value",
        |mut c: C<'_>, ty: i32, key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32| {
            guard(&c, "proxy_replace_header_map_value")?;
            finish(modify_header(
                &mut c,
                HeaderOp::Replace,
                ty,
                key_ptr,
                key_len,
                Some((value_ptr, value_len)),
            ))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_remove_header_map_value",
        |mut c: C<'_>, ty: i32, key_ptr: i32, key_len: i32| {
            guard(&c, "proxy_remove_header_map_value")?;
            finish(modify_header(
                &mut c,
                HeaderOp::Remove,
                ty,
                key_ptr,
                key_len,
                None,
            ))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_get_header_map_size",
        |mut c: C<'_>, ty: i32, out_ptr: i32| {
            guard(&c, "proxy_get_header_map_size")?;
            finish(get_header_map_size(&mut c, ty, out_ptr))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_send_local_response",
        |mut c: C<'_>,
         code: i32,
         details_ptr: i32,
         details_len: i32,
         body_ptr: i32,
         body_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         grpc_status: i32| {
            guard(&c, "proxy_send_local_response")?;
            finish(send_local_response(
                &mut c,
                code,
                (details_ptr, details_len),
                (body_ptr, body_len),
                (headers_ptr, headers_len),
                grpc_status,
            ))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_continue_stream",
        |mut c: C<'_>, ty: i32| {
            guard(&c, "proxy_continue_stream")?;
            finish(continue_stream(&mut c, ty))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_close_stream",
        |mut c: C<'_>, ty: i32| {
            guard(&c, "proxy_close_stream")?;
            finish(close_stream(&mut c, ty))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_set_effective_context",
        |mut c: C<'_>, id: i32| {
            guard(&c, "proxy_set_effective_context")?;
            let id = id as u32;
            let st = c.data_mut();
            if !st.context_exists(id) {
                return finish(Err(Status::BadArgument.into()));
            }
            st.effective_context = id;
            finish(Ok(()))
        },
    )?;
    def(linker, d, ENV, "proxy_done", |mut c: C<'_>| {
        guard(&c, "proxy_done")?;
        let st = c.data_mut();
        if st.root_pending_done && !st.root_done_called {
            st.root_done_called = true;
            return finish(Ok(()));
        }
        finish(Err(Status::NotFound.into()))
    })?;
    def(
        linker,
        d,
        ENV,
        "proxy_define_metric",
        |mut c: C<'_>, ty: i32, name_ptr: i32, name_len: i32, id_ptr: i32| {
            guard(&c, "proxy_define_metric")?;
            finish(define_metric(&mut c, ty, name_ptr, name_len, id_ptr))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_increment_metric",
        |mut c: C<'_>, id: i32, offset: i64| {
            guard(&c, "proxy_increment_metric")?;
            finish(increment_metric(&mut c, id as u32, offset))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_record_metric",
        |mut c: C<'_>, id: i32, value: i64| {
            guard(&c, "proxy_record_metric")?;
            finish(record_metric(&mut c, id as u32, value as u64))
        },
    )?;
    def(
        linker,
        d,
        ENV,
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, out_ptr: i32| {
            guard(&c, "proxy_get_metric")?;
            finish(get_metric(&mut c, id as u32, out_ptr))
        },
    )?;
    Ok(())
}

fn log(c: &mut C<'_>, level: i32, ptr: i32, len: i32) -> Result<(), Fail> {
    let level = LogLevel::from_raw(level as u32).ok_or(Status::BadArgument)?;
    let message = read(c, ptr, len)?;
    c.data_mut()
        .log(level, String::from_utf8_lossy(&message).into_owned());
    Ok(())
}

// ---------------------------------------------------------------------------
// Properties

fn get_property(
    c: &mut C<'_>,
    path_ptr: i32,
    path_len: i32,
    out_ptr: i32,
    out_len: i32,
) -> Result<(), Fail> {
    let path = read(c, path_ptr, path_len)?;
    if path.is_empty() {
        // Envoy serializes the (absent) top-level value: not serializable.
        return Err(Status::SerializationFailure.into());
    }
    let value = lookup_property(c.data(), &path).ok_or(Status::NotFound)?;
    copy_out(c, &value, out_ptr, out_len)
}

/// Property lookup for the current (or effective) context: values the test
/// stored for the stream, attributes derived from the stream, values the guest
/// stored with `proxy_set_property`, then values the test stored for the root.
fn lookup_property(st: &HostState, path: &[u8]) -> Option<Vec<u8>> {
    if let Some(stream) = st.stream() {
        if let Some(v) = stream.properties.get_raw(path) {
            return Some(v.to_vec());
        }
        // Envoy's `request.duration` (RequestWrapper): the stream's duration once the request is
        // complete, which in a filter is the access-log phase.
        if path == b"request\0duration" && stream.log_phase {
            let nanos = st.monotonic_ns.saturating_sub(stream.started_monotonic_ns);
            return Some(property::int64(i64::try_from(nanos).unwrap_or(i64::MAX)));
        }
        if let Some(v) = derived_stream_property(stream, path) {
            return Some(v);
        }
        if let Some(v) = stream.filter_state.get(path) {
            return Some(v.clone());
        }
    }
    if let Some(v) = st.root_properties.get_raw(path) {
        return Some(v.to_vec());
    }
    match path {
        b"plugin_name" => Some(st.plugin_name.as_bytes().to_vec()),
        b"plugin_root_id" => Some(st.plugin_root_id.as_bytes().to_vec()),
        b"plugin_vm_id" => Some(st.vm_id.as_bytes().to_vec()),
        _ => None,
    }
}

/// The subset of Envoy's CEL attributes that the host derives from the stream
/// (`source/extensions/filters/common/expr/context.cc`). Request attributes
/// need the request header map to be available, as in Envoy.
fn derived_stream_property(stream: &crate::state::StreamState, path: &[u8]) -> Option<Vec<u8>> {
    let mut parts = path.split(|b| *b == 0);
    let top = parts.next()?;
    let second = parts.next();
    let third = parts.next();
    if parts.next().is_some() {
        return None;
    }
    match (top, second, third) {
        (b"request", Some(field), None) => {
            let headers = stream.map(MapType::RequestHeaders)?;
            let header = |name: &str| headers.get(name).map(<[u8]>::to_vec);
            match field {
                b"path" => header(":path"),
                b"url_path" => {
                    let p = headers.get(":path")?;
                    let end = p.iter().position(|b| *b == b'?').unwrap_or(p.len());
                    Some(p[..end].to_vec())
                }
                b"host" => header(":authority"),
                b"scheme" => header(":scheme"),
                b"method" => header(":method"),
                b"referer" => header("referer"),
                b"useragent" => header("user-agent"),
                b"id" => header("x-request-id"),
                _ => None,
            }
        }
        (b"request", Some(b"headers"), Some(name)) => stream
            .map(MapType::RequestHeaders)?
            .get_raw(name)
            .map(<[u8]>::to_vec),
        (b"response", Some(b"code"), None) => stream
            .response_code
            .map(|code| property::int64(i64::from(code))),
        (b"response", Some(b"code_details"), None) => stream
            .response_code_details
            .as_ref()
            .map(|d| d.as_bytes().to_vec()),
        (b"response", Some(b"headers"), Some(name)) => stream
            .map(MapType::ResponseHeaders)?
            .get_raw(name)
            .map(<[u8]>::to_vec),
        // Envoy's ConnectionWrapper always answers `mtls`: false unless the
        // downstream TLS connection presented a peer certificate.
        (b"connection", Some(b"mtls"), None) => Some(property::bool(false)),
        _ => None,
    }
}

fn set_property(
    c: &mut C<'_>,
    path_ptr: i32,
    path_len: i32,
    value_ptr: i32,
    value_len: i32,
) -> Result<(), Fail> {
    let path = read(c, path_ptr, path_len)?;
    let value = read(c, value_ptr, value_len)?;
    // Envoy stores it in the stream's filter state; a root context has no
    // stream info, so Envoy answers NotFound there.
    let stream = c.data_mut().stream_mut().ok_or(Status::NotFound)?;
    stream.filter_state.insert(path, value);
    Ok(())
}

// ---------------------------------------------------------------------------
// Buffers

/// Envoy `Context::getBuffer`: `None` means "no buffer" (NotFound).
fn buffer_contents(st: &HostState, ty: BufferType) -> Option<Vec<u8>> {
    match ty {
        BufferType::VmConfiguration => Some(st.vm_config.clone()),
        BufferType::PluginConfiguration => st.plugin_config_live.then(|| st.plugin_config.clone()),
        BufferType::HttpRequestBody => Some(
            st.stream()
                .filter(|s| s.request_body_live)
                .map(|s| s.request_body.clone())
                .unwrap_or_default(),
        ),
        BufferType::HttpResponseBody => Some(
            st.stream()
                .filter(|s| s.response_body_live)
                .map(|s| s.response_body.clone())
                .unwrap_or_default(),
        ),
        BufferType::DownstreamData
        | BufferType::UpstreamData
        | BufferType::GrpcReceiveBuffer
        | BufferType::CallData => Some(Vec::new()),
        BufferType::HttpCallResponseBody => None,
    }
}

fn get_buffer_status(c: &mut C<'_>, ty: i32, len_ptr: i32, flags_ptr: i32) -> Result<(), Fail> {
    let ty = BufferType::from_raw(ty as u32).ok_or(Status::BadArgument)?;
    let buf = buffer_contents(c.data(), ty).ok_or(Status::NotFound)?;
    let len = u32::try_from(buf.len()).map_err(|_| Status::InternalFailure)?;
    write_u32(c, len_ptr, len)?;
    write_u32(c, flags_ptr, 0)?;
    Ok(())
}

fn get_buffer_bytes(
    c: &mut C<'_>,
    ty: i32,
    start: i32,
    len: i32,
    out_ptr: i32,
    out_len: i32,
) -> Result<(), Fail> {
    let ty = BufferType::from_raw(ty as u32).ok_or(Status::BadArgument)?;
    let buf = buffer_contents(c.data(), ty).ok_or(Status::NotFound)?;
    // Word arithmetic is 64-bit in Envoy, so start + length cannot overflow.
    let start = u64::from(start as u32);
    let mut length = u64::from(len as u32);
    let size = buf.len() as u64;
    if start > size {
        length = 0;
    } else if start + length > size {
        length = size - start;
    }
    if length == 0 {
        write_u32(c, out_ptr, 0)?;
        write_u32(c, out_len, 0)?;
        return Ok(());
    }
    let from = start as usize;
    let slice = buf
        .get(from..from + length as usize)
        .ok_or(Status::InternalFailure)?;
    copy_out(c, slice, out_ptr, out_len)
}

fn set_buffer_bytes(
    c: &mut C<'_>,
    ty: i32,
    start: i32,
    len: i32,
    data_ptr: i32,
    data_len: i32,
) -> Result<(), Fail> {
    let ty = BufferType::from_raw(ty as u32).ok_or(Status::BadArgument)?;
    if buffer_contents(c.data(), ty).is_none() {
        return Err(Status::NotFound.into());
    }
    let data = read(c, data_ptr, data_len)?;
    let start = start as u32 as usize;
    let length = len as u32 as usize;
    let st = c.data_mut();
    let body = match (ty, st.stream_mut()) {
        (BufferType::HttpRequestBody, Some(s)) if s.request_body_live => &mut s.request_body,
        (BufferType::HttpResponseBody, Some(s)) if s.response_body_live => &mut s.response_body,
        // Envoy's string buffers (configuration, absent bodies) are immutable.
        _ => return Err(Status::BadArgument.into()),
    };
    // Envoy `Buffer::copyFrom` on a live body.
    if start == 0 {
        let drain = length.min(body.len());
        body.drain(..drain);
        let mut new_body = data;
        new_body.extend_from_slice(body);
        *body = new_body;
        Ok(())
    } else if start >= body.len() {
        body.extend_from_slice(&data);
        Ok(())
    } else {
        Err(Status::BadArgument.into())
    }
}

// ---------------------------------------------------------------------------
// Header maps

fn get_header_map_pairs(c: &mut C<'_>, ty: i32, out_ptr: i32, out_len: i32) -> Result<(), Fail> {
    let map = MapType::from_raw(ty as u32).ok_or(Status::BadArgument)?;
    // Envoy `headerMapToPairs(getConstMap(type))`: an unavailable map is empty.
    let serialized = match c.data().stream().and_then(|s| s.map(map)) {
        Some(h) if !h.is_empty() => pairs::serialize(
            h.entries()
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice())),
        ),
        _ => Vec::new(),
    };
    copy_out(c, &serialized, out_ptr, out_len)
}

fn set_header_map_pairs(c: &mut C<'_>, ty: i32, ptr: i32, len: i32) -> Result<(), Fail> {
    let map = MapType::from_raw(ty as u32).ok_or(Status::BadArgument)?;
    let data = read(c, ptr, len)?;
    let new_pairs = pairs::parse(&data).unwrap_or_default();
    let headers = c
        .data_mut()
        .stream_mut()
        .and_then(|s| s.map_mut(map))
        .ok_or(Status::BadArgument)?;
    headers.clear();
    for (k, v) in new_pairs {
        headers.add_raw(&k, &v);
    }
    Ok(())
}

fn get_header_map_value(
    c: &mut C<'_>,
    ty: i32,
    key_ptr: i32,
    key_len: i32,
    out_ptr: i32,
    out_len: i32,
) -> Result<(), Fail> {
    let map = MapType::from_raw(ty as u32).ok_or(Status::BadArgument)?;
    let key = read(c, key_ptr, key_len)?;
    let st = c.data();
    let value = match st.stream().map(|s| (s.map(map), s.log_phase)) {
        Some((Some(h), _)) => h
            .get_raw(&key)
            .map(<[u8]>::to_vec)
            .ok_or(Status::NotFound)?,
        // Maps may be absent in the access-log phase: NotFound there.
        Some((None, true)) => return Err(Status::NotFound.into()),
        // "Requested map type is not currently available."
        _ => return Err(Status::BadArgument.into()),
    };
    copy_out(c, &value, out_ptr, out_len)
}

#[derive(Clone, Copy)]
enum HeaderOp {
    Add,
    Replace,
    Remove,
}

fn modify_header(
    c: &mut C<'_>,
    op: HeaderOp,
    ty: i32,
    key_ptr: i32,
    key_len: i32,
    value: Option<(i32, i32)>,
) -> Result<(), Fail> {
    let map = MapType::from_raw(ty as u32).ok_or(Status::BadArgument)?;
    let key = read(c, key_ptr, key_len)?;
    let value = match value {
        Some((p, l)) => read(c, p, l)?,
        None => Vec::new(),
    };
    let headers = c
        .data_mut()
        .stream_mut()
        .and_then(|s| s.map_mut(map))
        .ok_or(Status::BadArgument)?;
    match op {
        HeaderOp::Add => headers.add_raw(&key, &value),
        HeaderOp::Replace => {
            headers.remove_raw(&key);
            headers.add_raw(&key, &value);
        }
        HeaderOp::Remove => headers.remove_raw(&key),
    }
    Ok(())
}

fn get_header_map_size(c: &mut C<'_>, ty: i32, out_ptr: i32) -> Result<(), Fail> {
    let map = MapType::from_raw(ty as u32).ok_or(Status::BadArgument)?;
    // Envoy uses the mutable map here, and reports `byteSize()`.
    let size = c
        .data_mut()
        .stream_mut()
        .and_then(|s| s.map_mut(map))
        .map(|h| h.byte_size())
        .ok_or(Status::BadArgument)?;
    let size = u32::try_from(size).map_err(|_| Status::InternalFailure)?;
    write_u32(c, out_ptr, size)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Stream control

/// The status a test asked this host function to answer with (`HostBuilder::refuse`).
fn refused(c: &C<'_>, name: &str) -> Result<(), Status> {
    match c.data().refused.iter().find(|(n, _)| n == name) {
        Some((_, status)) => Err(*status),
        None => Ok(()),
    }
}

fn send_local_response(
    c: &mut C<'_>,
    code: i32,
    details: (i32, i32),
    body: (i32, i32),
    headers: (i32, i32),
    grpc_status: i32,
) -> Result<(), Fail> {
    refused(c, "proxy_send_local_response")?;
    let details = read(c, details.0, details.1)?;
    let body = read(c, body.0, body.1)?;
    let headers = read(c, headers.0, headers.1)?;
    let extra: Headers = pairs::parse(&headers)
        .unwrap_or_default()
        .into_iter()
        .collect();
    // Envoy: StringUtil::replaceAllEmptySpace(details).
    let details: String = String::from_utf8_lossy(&details)
        .chars()
        .map(|ch| if ch.is_ascii_whitespace() { '_' } else { ch })
        .collect();
    let st = c.data_mut();
    let context_id = st.context_id();
    if let Some(stream) = st.stream_mut() {
        let in_filter_chain = matches!(
            stream.phase,
            StreamPhase::RequestHeaders
                | StreamPhase::RequestBody
                | StreamPhase::ResponseHeaders
                | StreamPhase::ResponseBody
        );
        if in_filter_chain && stream.local_response.is_none() {
            stream.local_response = Some(LocalResponse {
                status_code: code as u32,
                details,
                body,
                headers: extra,
                grpc_status,
                context_id,
            });
        }
    }
    Ok(())
}

fn continue_stream(c: &mut C<'_>, ty: i32) -> Result<(), Fail> {
    let ty = StreamType::from_raw(ty as u32).ok_or(Status::BadArgument)?;
    match ty {
        StreamType::Downstream => return Ok(()),
        StreamType::Upstream => return Err(Status::Unimplemented.into()),
        StreamType::Request | StreamType::Response => {}
    }
    if let Some(stream) = c.data_mut().stream_mut() {
        match ty {
            StreamType::Request => stream.continue_request = true,
            _ => stream.continue_response = true,
        }
        // Envoy `Context::continueStream` drops the request-side pointers for
        // both request and response streams.
        stream.request_headers_live = false;
        stream.request_body_live = false;
    }
    Ok(())
}

fn close_stream(c: &mut C<'_>, ty: i32) -> Result<(), Fail> {
    let ty = StreamType::from_raw(ty as u32).ok_or(Status::BadArgument)?;
    if matches!(ty, StreamType::Request | StreamType::Response) {
        if let Some(stream) = c.data_mut().stream_mut() {
            stream.reset = true;
            if stream.response_code_details.is_none() {
                stream.response_code_details = Some("wasm_close_stream".to_string());
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Metrics (Envoy `Context::defineMetric` and friends)

fn define_metric(
    c: &mut C<'_>,
    ty: i32,
    name_ptr: i32,
    name_len: i32,
    id_ptr: i32,
) -> Result<(), Fail> {
    refused(c, "proxy_define_metric")?;
    let name = read(c, name_ptr, name_len)?;
    let ty = MetricType::from_raw(ty as u32).ok_or(Status::BadArgument)?;
    let name = String::from_utf8_lossy(&name).into_owned();
    let id = c.data_mut().metrics.define(ty, name);
    write_u32(c, id_ptr, id)?;
    Ok(())
}

fn metric_name(c: &C<'_>, id: u32, ty: MetricType) -> Option<String> {
    c.data()
        .metrics
        .ids
        .get(&id)
        .filter(|(t, _)| *t == ty)
        .map(|(_, name)| name.clone())
}

fn increment_metric(c: &mut C<'_>, id: u32, offset: i64) -> Result<(), Fail> {
    match id & 3 {
        0 => {
            let name = metric_name(c, id, MetricType::Counter).ok_or(Status::NotFound)?;
            if offset <= 0 {
                return Err(Status::BadArgument.into());
            }
            let counter = c.data_mut().metrics.counters.entry(name).or_insert(0);
            *counter = counter.wrapping_add(offset as u64);
            Ok(())
        }
        1 => {
            let name = metric_name(c, id, MetricType::Gauge).ok_or(Status::NotFound)?;
            let gauge = c.data_mut().metrics.gauges.entry(name).or_insert(0);
            *gauge = gauge.wrapping_add(offset as u64);
            Ok(())
        }
        _ => Err(Status::BadArgument.into()),
    }
}

fn record_metric(c: &mut C<'_>, id: u32, value: u64) -> Result<(), Fail> {
    let m = &mut c.data_mut().metrics;
    match (id & 3, m.ids.get(&id)) {
        (0, Some((MetricType::Counter, name))) => {
            let counter = m.counters.entry(name.clone()).or_insert(0);
            *counter = counter.wrapping_add(value);
            Ok(())
        }
        (1, Some((MetricType::Gauge, name))) => {
            m.gauges.insert(name.clone(), value);
            Ok(())
        }
        (2, Some((MetricType::Histogram, name))) => {
            m.histograms.entry(name.clone()).or_default().push(value);
            Ok(())
        }
        _ => Err(Status::NotFound.into()),
    }
}

fn get_metric(c: &mut C<'_>, id: u32, out_ptr: i32) -> Result<(), Fail> {
    let m = &c.data().metrics;
    let value = match id & 3 {
        0 => metric_name(c, id, MetricType::Counter)
            .and_then(|n| m.counters.get(&n).copied())
            .ok_or(Status::NotFound)?,
        1 => metric_name(c, id, MetricType::Gauge)
            .and_then(|n| m.gauges.get(&n).copied())
            .ok_or(Status::NotFound)?,
        _ => return Err(Status::BadArgument.into()),
    };
    write_u64(c, out_ptr, value)?;
    Ok(())
}

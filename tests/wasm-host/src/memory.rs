//! Bounds-checked access to guest memory from host functions.

use wasmtime::Caller;

use crate::state::HostState;
use crate::types::Status;

/// Why a host call could not complete: a status for the guest, or a trap.
pub(crate) enum Fail {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for Fail {
    fn from(s: Status) -> Fail {
        Fail::Status(s)
    }
}

/// Converts a host-call result into the `proxy_status_t` returned to the guest.
pub(crate) fn finish(result: Result<(), Fail>) -> wasmtime::Result<i32> {
    match result {
        Ok(()) => Ok(Status::Ok.code()),
        Err(Fail::Status(s)) => Ok(s.code()),
        Err(Fail::Trap(e)) => Err(e),
    }
}

/// Wasm32 pointers and sizes arrive as `i32`; they are unsigned.
pub(crate) fn addr(v: i32) -> usize {
    v as u32 as usize
}

/// Copies `len` bytes at `ptr` out of guest memory (Envoy `getMemory`).
pub(crate) fn read(caller: &Caller<'_, HostState>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let memory = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let data = memory.data(caller);
    let start = addr(ptr);
    let end = start
        .checked_add(addr(len))
        .ok_or(Status::InvalidMemoryAccess)?;
    data.get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

/// Writes bytes into guest memory (Envoy `setMemory`).
pub(crate) fn write(
    caller: &mut Caller<'_, HostState>,
    ptr: usize,
    bytes: &[u8],
) -> Result<(), Status> {
    let memory = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let data = memory.data_mut(caller);
    let end = ptr
        .checked_add(bytes.len())
        .ok_or(Status::InvalidMemoryAccess)?;
    let dst = data.get_mut(ptr..end).ok_or(Status::InvalidMemoryAccess)?;
    dst.copy_from_slice(bytes);
    Ok(())
}

/// Writes a wasm32 word (Envoy `setWord`).
pub(crate) fn write_u32(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    v: u32,
) -> Result<(), Status> {
    write(caller, addr(ptr), &v.to_le_bytes())
}

/// Writes a 64-bit value (Envoy `setDatatype<uint64_t>`).
pub(crate) fn write_u64(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    v: u64,
) -> Result<(), Status> {
    write(caller, addr(ptr), &v.to_le_bytes())
}

/// Allocates `size` bytes in the guest with its exported allocator
/// (`malloc`, else `proxy_on_memory_allocate`, as Envoy picks them).
pub(crate) fn alloc(caller: &mut Caller<'_, HostState>, size: usize) -> Result<usize, Fail> {
    let malloc = caller
        .data()
        .malloc
        .clone()
        .ok_or(Status::InvalidMemoryAccess)?;
    let size = i32::try_from(size).map_err(|_| Status::InvalidMemoryAccess)?;
    let ptr = malloc.call(&mut *caller, size).map_err(Fail::Trap)?;
    if ptr == 0 {
        return Err(Status::InvalidMemoryAccess.into());
    }
    Ok(addr(ptr))
}

/// Envoy `copyToPointerSize`: allocates a guest buffer holding `data` (none
/// for empty data) and stores its address and size at `ptr_ptr` / `size_ptr`.
pub(crate) fn copy_out(
    caller: &mut Caller<'_, HostState>,
    data: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> Result<(), Fail> {
    let mut pointer = 0usize;
    if !data.is_empty() {
        pointer = alloc(caller, data.len())?;
        write(caller, pointer, data)?;
    }
    let pointer = u32::try_from(pointer).map_err(|_| Status::InvalidMemoryAccess)?;
    let size = u32::try_from(data.len()).map_err(|_| Status::InvalidMemoryAccess)?;
    write_u32(caller, ptr_ptr, pointer)?;
    write_u32(caller, size_ptr, size)?;
    Ok(())
}

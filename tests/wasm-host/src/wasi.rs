//! The WASI preview1 subset Envoy provides (proxy-wasm-cpp-host
//! `exports.cc`, `wasi_unstable_*`), registered under both
//! `wasi_snapshot_preview1` and `wasi_unstable`. Implemented natively, without
//! wasmtime-wasi: no files, no environment, stdout/stderr go to the log.

use wasmtime::{Caller, Linker};

use crate::error::HostCallTrap;
use crate::hostcalls::{def, guard, Defined};
use crate::memory::{addr, read, write, write_u32, write_u64};
use crate::state::HostState;
use crate::types::LogLevel;

type C<'a> = Caller<'a, HostState>;

const ESUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ENOENT: i32 = 44;
const ENOSYS: i32 = 52;
const ENOTSUP: i32 = 58;

/// proxy-wasm-cpp-host `PROXY_WASM_HOST_WASI_RANDOM_GET_MAX_SIZE_BYTES`.
const RANDOM_GET_MAX: u32 = 64 * 1024;

pub(crate) fn define(linker: &mut Linker<HostState>, d: &mut Defined) -> wasmtime::Result<()> {
    for m in ["wasi_snapshot_preview1", "wasi_unstable"] {
        def(
            linker,
            d,
            m,
            "fd_write",
            |mut c: C<'_>, fd: i32, iovs: i32, n: i32, nw: i32| {
                guard(&c, "fd_write")?;
                Ok(fd_write(&mut c, fd, iovs, n, nw))
            },
        )?;
        def(
            linker,
            d,
            m,
            "fd_read",
            |c: C<'_>, _: i32, _: i32, _: i32, _: i32| {
                guard(&c, "fd_read")?;
                Ok(ENOSYS)
            },
        )?;
        // Envoy logs and returns success without writing the new offset.
        def(
            linker,
            d,
            m,
            "fd_seek",
            |c: C<'_>, _: i32, _: i64, _: i32, _: i32| {
                guard(&c, "fd_seek")?;
                Ok(ESUCCESS)
            },
        )?;
        def(linker, d, m, "fd_close", |c: C<'_>, _: i32| {
            guard(&c, "fd_close")?;
            Ok(ESUCCESS)
        })?;
        def(
            linker,
            d,
            m,
            "fd_fdstat_get",
            |mut c: C<'_>, fd: i32, out: i32| {
                guard(&c, "fd_fdstat_get")?;
                if fd != 1 && fd != 2 {
                    return Ok(EBADF);
                }
                // 24 bytes: filetype/flags 0, fs_rights_base = FD_WRITE (64), inheriting 0.
                let mut stat = [0u8; 24];
                stat[8..16].copy_from_slice(&64u64.to_le_bytes());
                Ok(match write(&mut c, addr(out), &stat) {
                    Ok(()) => ESUCCESS,
                    Err(_) => EFAULT,
                })
            },
        )?;
        def(linker, d, m, "environ_get", |c: C<'_>, _: i32, _: i32| {
            guard(&c, "environ_get")?;
            Ok(ESUCCESS)
        })?;
        def(
            linker,
            d,
            m,
            "environ_sizes_get",
            |mut c: C<'_>, count: i32, size: i32| {
                guard(&c, "environ_sizes_get")?;
                Ok(two_zero_words(&mut c, count, size))
            },
        )?;
        def(linker, d, m, "args_get", |c: C<'_>, _: i32, _: i32| {
            guard(&c, "args_get")?;
            Ok(ESUCCESS)
        })?;
        def(
            linker,
            d,
            m,
            "args_sizes_get",
            |mut c: C<'_>, argc: i32, size: i32| {
                guard(&c, "args_sizes_get")?;
                Ok(two_zero_words(&mut c, argc, size))
            },
        )?;
        def(
            linker,
            d,
            m,
            "clock_time_get",
            |mut c: C<'_>, id: i32, _precision: i64, out: i32| {
                guard(&c, "clock_time_get")?;
                let now = match id {
                    0 => c.data().realtime_ns,
                    1 => c.data().monotonic_ns,
                    _ => return Ok(ENOTSUP),
                };
                Ok(match write_u64(&mut c, out, now) {
                    Ok(()) => ESUCCESS,
                    Err(_) => EFAULT,
                })
            },
        )?;
        def(
            linker,
            d,
            m,
            "random_get",
            |mut c: C<'_>, buf: i32, len: i32| {
                guard(&c, "random_get")?;
                let len = len as u32;
                if len > RANDOM_GET_MAX {
                    return Ok(EINVAL);
                }
                let mut bytes = vec![0u8; len as usize];
                c.data_mut().fill_random(&mut bytes);
                Ok(match write(&mut c, addr(buf), &bytes) {
                    Ok(()) => ESUCCESS,
                    Err(_) => EFAULT,
                })
            },
        )?;
        def(
            linker,
            d,
            m,
            "proc_exit",
            |c: C<'_>, code: i32| -> wasmtime::Result<()> {
                guard(&c, "proc_exit")?;
                Err(wasmtime::Error::new(HostCallTrap::ProcExit(code)))
            },
        )?;
        def(
            linker,
            d,
            m,
            "fd_prestat_get",
            |c: C<'_>, _: i32, _: i32| {
                guard(&c, "fd_prestat_get")?;
                Ok(EBADF)
            },
        )?;
        def(
            linker,
            d,
            m,
            "fd_prestat_dir_name",
            |c: C<'_>, _: i32, _: i32, _: i32| {
                guard(&c, "fd_prestat_dir_name")?;
                Ok(ENOSYS)
            },
        )?;
        def(
            linker,
            d,
            m,
            "path_open",
            |c: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32, _: i32| {
                guard(&c, "path_open")?;
                Ok(ENOENT)
            },
        )?;
    }
    Ok(())
}

fn two_zero_words(c: &mut C<'_>, a: i32, b: i32) -> i32 {
    if write_u32(c, a, 0).is_err() || write_u32(c, b, 0).is_err() {
        return EFAULT;
    }
    ESUCCESS
}

/// Envoy `writevImpl`: stdout is logged at info, stderr at error, with one
/// trailing newline removed.
fn fd_write(c: &mut C<'_>, fd: i32, iovs: i32, iovs_len: i32, nwritten_ptr: i32) -> i32 {
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return EBADF,
    };
    let mut out = Vec::new();
    for i in 0..u64::from(iovs_len as u32) {
        let off = u64::from(iovs as u32) + i * 8;
        let Ok(off) = u32::try_from(off) else {
            return EFAULT;
        };
        let Ok(iov) = read(c, off as i32, 8) else {
            return EFAULT;
        };
        let buf = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        if len == 0 {
            continue;
        }
        match read(c, buf as i32, len as i32) {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(_) => return EFAULT,
        }
    }
    let written = out.len();
    let st = c.data_mut();
    if fd == 1 {
        st.stdout.extend_from_slice(&out);
    } else {
        st.stderr.extend_from_slice(&out);
    }
    if !out.is_empty() {
        if out.last() == Some(&b'\n') {
            out.pop();
        }
        st.log(level, String::from_utf8_lossy(&out).into_owned());
    }
    match write_u32(c, nwritten_ptr, written as u32) {
        Ok(()) => ESUCCESS,
        Err(_) => EFAULT,
    }
}

//! The few `wasi_snapshot_preview1` functions a Rust proxy-wasm filter imports,
//! by hand: the clock reads the emulator's clock, randomness is seeded, stdout and
//! stderr go to the worker's log, the environment is the host's ([`super::Host::set_environment`]),
//! the arguments are empty, and `proc_exit` traps. Anything else answers `ENOSYS`.

use std::collections::BTreeSet;

use wasmtime::{Caller, Linker};

use super::memory::{read, read_u32, write, write_u32, write_u64, Fail, HostResult};
use super::state::VmState;

/// WASI's `ENOSYS`: function not supported.
pub const ENOSYS: i32 = 52;
const SUCCESS: i32 = 0;
const EFAULT: i32 = 21;

type C<'a> = Caller<'a, VmState>;

fn errno(
    caller: &mut C<'_>,
    name: &str,
    body: impl FnOnce(&mut C<'_>) -> HostResult<()>,
) -> wasmtime::Result<i32> {
    caller.data_mut().count(name);
    match body(caller) {
        Ok(()) => Ok(SUCCESS),
        Err(Fail::Status(_)) => Ok(EFAULT),
        Err(Fail::Trap(trap)) => Err(trap),
    }
}

pub fn register(linker: &mut Linker<VmState>) -> wasmtime::Result<BTreeSet<&'static str>> {
    const M: &str = "wasi_snapshot_preview1";
    linker.func_wrap(M, "fd_write", |mut c: C<'_>, fd: i32, iovs: i32, count: i32, written: i32| {
        errno(&mut c, "fd_write", |c| fd_write(c, fd, iovs, count, written))
    })?;
    linker.func_wrap(M, "clock_time_get", |mut c: C<'_>, _id: i32, _precision: i64, ptr: i32| {
        errno(&mut c, "clock_time_get", |c| {
            let now = c.data().now_ns();
            write_u64(c, ptr, now)
        })
    })?;
    linker.func_wrap(M, "random_get", |mut c: C<'_>, ptr: i32, len: i32| {
        errno(&mut c, "random_get", |c| {
            let len = usize::try_from(len as u32).unwrap_or(0);
            let mut bytes = Vec::with_capacity(len);
            while bytes.len() < len {
                bytes.extend_from_slice(&c.data_mut().next_random().to_le_bytes());
            }
            bytes.truncate(len);
            write(c, ptr, &bytes)
        })
    })?;
    linker.func_wrap(M, "environ_sizes_get", |mut c: C<'_>, count: i32, size: i32| {
        errno(&mut c, "environ_sizes_get", |c| {
            let environment = c.data().shared.environment.borrow().clone();
            let bytes: usize = environment.iter().map(|e| e.len() + 1).sum();
            write_u32(c, count, u32::try_from(environment.len()).unwrap_or(u32::MAX))?;
            write_u32(c, size, u32::try_from(bytes).unwrap_or(u32::MAX))
        })
    })?;
    linker.func_wrap(M, "environ_get", |mut c: C<'_>, list: i32, buf: i32| {
        errno(&mut c, "environ_get", |c| {
            let environment = c.data().shared.environment.borrow().clone();
            let (mut pointer, mut at) = (list, buf);
            for entry in environment {
                write_u32(c, pointer, at as u32)?;
                let mut bytes = entry.into_bytes();
                bytes.push(0);
                write(c, at, &bytes)?;
                at = at.wrapping_add(bytes.len() as i32);
                pointer = pointer.wrapping_add(4);
            }
            Ok(())
        })
    })?;
    linker.func_wrap(M, "args_sizes_get", |mut c: C<'_>, count: i32, size: i32| {
        errno(&mut c, "args_sizes_get", |c| {
            write_u32(c, count, 0)?;
            write_u32(c, size, 0)
        })
    })?;
    linker.func_wrap(M, "args_get", |mut c: C<'_>, _list: i32, _buf: i32| {
        errno(&mut c, "args_get", |_| Ok(()))
    })?;
    linker.func_wrap(M, "proc_exit", |mut c: C<'_>, code: i32| -> wasmtime::Result<()> {
        c.data_mut().count("proc_exit");
        Err(wasmtime::format_err!("the guest called proc_exit({code})"))
    })?;
    linker.func_wrap(M, "sched_yield", |mut c: C<'_>| errno(&mut c, "sched_yield", |_| Ok(())))?;
    Ok([
        "fd_write",
        "clock_time_get",
        "random_get",
        "environ_sizes_get",
        "args_sizes_get",
        "environ_get",
        "args_get",
        "proc_exit",
        "sched_yield",
    ]
    .into_iter()
    .collect())
}

fn fd_write(c: &mut C<'_>, fd: i32, iovs: i32, count: i32, written: i32) -> HostResult<()> {
    let mut total: u32 = 0;
    let mut data = Vec::new();
    for i in 0..count.max(0) {
        let entry = iovs.wrapping_add(i.wrapping_mul(8));
        let ptr = read_u32(c, entry)? as i32;
        let len = read_u32(c, entry.wrapping_add(4))? as i32;
        data.extend_from_slice(&read(c, ptr, len)?);
        total = total.saturating_add(len as u32);
    }
    if fd == 1 || fd == 2 {
        c.data_mut().output(&data);
    }
    write_u32(c, written, total)
}

//! Moving bytes between the host and the guest's linear memory.

use std::ops::Range;

use wasmtime::Caller;

use super::abi::Status;
use super::state::VmState;

/// Why a host function did not finish: a status for the guest, or a trap.
pub enum Fail {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for Fail {
    fn from(status: Status) -> Self {
        Fail::Status(status)
    }
}

pub type HostResult<T> = Result<T, Fail>;

/// The guest-visible result of a host function.
pub fn status_of(result: HostResult<()>) -> wasmtime::Result<i32> {
    match result {
        Ok(()) => Ok(Status::Ok.code()),
        Err(Fail::Status(status)) => Ok(status.code()),
        Err(Fail::Trap(trap)) => Err(trap),
    }
}

fn range(ptr: i32, len: usize) -> HostResult<Range<usize>> {
    let start = usize::try_from(ptr as u32).map_err(|_| Status::InvalidMemoryAccess)?;
    let end = start.checked_add(len).ok_or(Status::InvalidMemoryAccess)?;
    Ok(start..end)
}

fn size(len: i32) -> HostResult<usize> {
    usize::try_from(len as u32).map_err(|_| Fail::Status(Status::InvalidMemoryAccess))
}

pub fn read(caller: &mut Caller<'_, VmState>, ptr: i32, len: i32) -> HostResult<Vec<u8>> {
    let memory = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let range = range(ptr, size(len)?)?;
    memory.data(&*caller).get(range).map(<[u8]>::to_vec).ok_or(Fail::Status(Status::InvalidMemoryAccess))
}

pub fn read_string(caller: &mut Caller<'_, VmState>, ptr: i32, len: i32) -> HostResult<String> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

pub fn write(caller: &mut Caller<'_, VmState>, ptr: i32, bytes: &[u8]) -> HostResult<()> {
    let memory = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let range = range(ptr, bytes.len())?;
    let target = memory.data_mut(&mut *caller).get_mut(range).ok_or(Status::InvalidMemoryAccess)?;
    target.copy_from_slice(bytes);
    Ok(())
}

pub fn write_u32(caller: &mut Caller<'_, VmState>, ptr: i32, value: u32) -> HostResult<()> {
    write(caller, ptr, &value.to_le_bytes())
}

pub fn write_u64(caller: &mut Caller<'_, VmState>, ptr: i32, value: u64) -> HostResult<()> {
    write(caller, ptr, &value.to_le_bytes())
}

pub fn read_u32(caller: &mut Caller<'_, VmState>, ptr: i32) -> HostResult<u32> {
    let bytes = read(caller, ptr, 4)?;
    let raw: [u8; 4] = bytes.try_into().map_err(|_| Status::InvalidMemoryAccess)?;
    Ok(u32::from_le_bytes(raw))
}

/// Hands `bytes` to the guest: a buffer from its `proxy_on_memory_allocate`, its
/// address at `ptr_ptr` and its size at `size_ptr`. Empty data is pointer 0, size 0
/// (Envoy); APISIX writes the size 0 and leaves the pointer alone.
pub fn give(caller: &mut Caller<'_, VmState>, bytes: &[u8], ptr_ptr: i32, size_ptr: i32) -> HostResult<()> {
    if bytes.is_empty() {
        if !caller.data().profile.is_apisix() {
            write_u32(caller, ptr_ptr, 0)?;
        }
        return write_u32(caller, size_ptr, 0);
    }
    let allocate = caller.data().allocate.clone().ok_or(Status::InternalFailure)?;
    let len = i32::try_from(bytes.len()).map_err(|_| Status::InternalFailure)?;
    let ptr = allocate.call(&mut *caller, len).map_err(Fail::Trap)?;
    if ptr == 0 {
        return Err(Status::InternalFailure.into());
    }
    write(caller, ptr, bytes)?;
    write_u32(caller, ptr_ptr, ptr as u32)?;
    write_u32(caller, size_ptr, len as u32)
}

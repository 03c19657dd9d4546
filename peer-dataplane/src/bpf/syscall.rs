//! The raw `bpf(2)` call, for what aya's typed API does not cover: the probe's program
//! load and live-frames run, and single-entry reads and writes on a map by bytes (one
//! code path for every stored map, whatever its key and value types).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
/// `union bpf_attr` is larger; the kernel takes a shorter one whose tail is zero.
pub const ATTR: usize = 128;

/// One `bpf(2)` call with `attr`; the call's return value.
pub fn bpf(cmd: libc::c_long, attr: &mut [u8; ATTR]) -> io::Result<i32> {
    // SAFETY: `attr` is a zero-tailed bpf_attr of the size passed; the pointers in it
    // outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), ATTR as u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as i32)
}

pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

pub fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// The map-element part of `bpf_attr`: map fd, key pointer, value (or next-key) pointer.
fn elem_attr(map: BorrowedFd, key: *const u8, value: *const u8) -> [u8; ATTR] {
    let mut attr = [0u8; ATTR];
    put32(&mut attr, 0, map.as_raw_fd() as u32);
    put64(&mut attr, 8, key as u64);
    put64(&mut attr, 16, value as u64);
    attr
}

/// Writes `key` -> `value` (`BPF_ANY`: adds or replaces). The slices must be the map's
/// key and value sizes.
pub fn update(map: BorrowedFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    bpf(
        BPF_MAP_UPDATE_ELEM,
        &mut elem_attr(map, key.as_ptr(), value.as_ptr()),
    )
    .map(drop)
}

/// Removes `key`; `Ok(false)` if it was not there.
pub fn delete(map: BorrowedFd, key: &[u8]) -> io::Result<bool> {
    match bpf(
        BPF_MAP_DELETE_ELEM,
        &mut elem_attr(map, key.as_ptr(), std::ptr::null()),
    ) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads `key`'s value into `value`; `Ok(false)` if the key is not there.
pub fn lookup(map: BorrowedFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    match bpf(
        BPF_MAP_LOOKUP_ELEM,
        &mut elem_attr(map, key.as_ptr(), value.as_mut_ptr()),
    ) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The key after `key` (the first key for `None`) into `next`; `Ok(false)` at the end.
pub fn next_key(map: BorrowedFd, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let key = key.map_or(std::ptr::null(), |k| k.as_ptr());
    match bpf(
        BPF_MAP_GET_NEXT_KEY,
        &mut elem_attr(map, key, next.as_mut_ptr()),
    ) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

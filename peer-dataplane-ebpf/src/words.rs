//! Addresses and MACs moved as words. The BPF backend does not expand a copy of a byte
//! array whose alignment it cannot see, nor a short run of zero bytes: it calls a
//! `memmove` or `memset` that moves one byte per loop turn (about 80 instructions and a
//! call for an address, on every lookup key built from the packet). Every address this
//! program copies is 4-byte aligned and every MAC 2-byte aligned (the asserts below), so
//! a copy can say so and become four loads and four stores.
//!
//! Keys are also written a whole word at a time where they are read back at once (the
//! kernel hashes a key as words; so does the decision table's slot): a word loaded from
//! two smaller stores still in flight waits for them to complete, about a dozen cycles.

use crate::parse::Packet;
use core::mem::offset_of;
use peer_dataplane_common::{
    acl::AclExactKey, conntrack::CtKey, flowcache::FlowEntry, flowcache::FlowKey, Endpoint,
    EndpointKey, RouteData,
};

// Where addresses and MACs are copied from and to (each struct is at least 4-aligned;
// `RouteData` sits 4 bytes into its LPM key).
const _: () = {
    assert!(offset_of!(Packet, src) % 4 == 0 && offset_of!(Packet, dst) % 4 == 0);
    assert!(offset_of!(EndpointKey, addr) % 4 == 0);
    assert!((4 + offset_of!(RouteData, addr)) % 4 == 0);
    assert!(offset_of!(AclExactKey, value) % 4 == 0);
    assert!(offset_of!(CtKey, src) % 4 == 0 && offset_of!(CtKey, dst) % 4 == 0);
    assert!(offset_of!(FlowKey, src) % 4 == 0 && offset_of!(FlowKey, dst) % 4 == 0);
    assert!(offset_of!(Endpoint, mac) % 2 == 0 && offset_of!(Endpoint, gw_mac) % 2 == 0);
    assert!(offset_of!(FlowEntry, mac) % 2 == 0 && offset_of!(FlowEntry, gw_mac) % 2 == 0);
    // The words `ports` and `bytes` write.
    assert!(
        offset_of!(CtKey, sport) % 4 == 0
            && offset_of!(CtKey, dport) == offset_of!(CtKey, sport) + 2
    );
    assert!(
        offset_of!(CtKey, proto) % 4 == 0
            && offset_of!(CtKey, _pad) == offset_of!(CtKey, proto) + 1
    );
    assert!(
        offset_of!(FlowKey, sport) % 4 == 0
            && offset_of!(FlowKey, dport) == offset_of!(FlowKey, sport) + 2
    );
    assert!(
        offset_of!(FlowKey, proto) % 4 == 0
            && offset_of!(FlowKey, vlan) == offset_of!(FlowKey, proto) + 1
    );
    assert!(offset_of!(FlowKey, _pad) == offset_of!(FlowKey, proto) + 2);
};

/// Writes two adjacent 16-bit fields, the first at `first` (4-byte aligned), as one
/// word: `lo` then `hi`.
///
/// # Safety
/// `first` and the field after it are 4 writable bytes at a 4-aligned address (the
/// asserts above).
#[inline(always)]
pub unsafe fn ports(first: *mut u16, lo: u16, hi: u16) {
    (first as *mut u32).write(lo as u32 | (hi as u32) << 16)
}

/// Writes four adjacent bytes starting at `first` (4-byte aligned) as one word.
///
/// # Safety
/// As for [`ports`].
#[inline(always)]
pub unsafe fn bytes(first: *mut u8, b: [u8; 4]) {
    (first as *mut u32).write(u32::from_ne_bytes(b))
}

/// `a` as four 32-bit words in memory order. `a` must be 4-byte aligned (see above).
#[inline(always)]
pub fn load(a: &[u8; 16]) -> [u32; 4] {
    let w = a.as_ptr() as *const u32;
    // SAFETY: 16 readable bytes, aligned to 4 (the asserts above). Volatile: otherwise
    // the compiler joins the four moves back into a call to its byte-wise memmove.
    unsafe {
        [
            w.read_volatile(),
            w.add(1).read_volatile(),
            w.add(2).read_volatile(),
            w.add(3).read_volatile(),
        ]
    }
}

/// The address whose words are `w`.
#[inline(always)]
pub fn addr(w: [u32; 4]) -> [u8; 16] {
    // SAFETY: same size; every bit pattern is valid for both.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
}

/// A copy of address `a` (4-byte aligned), moved word by word.
#[inline(always)]
pub fn copy(a: &[u8; 16]) -> [u8; 16] {
    addr(load(a))
}

/// A copy of MAC `m` (2-byte aligned), moved as three 16-bit words.
#[inline(always)]
pub fn mac(m: &[u8; 6]) -> [u8; 6] {
    let w = m.as_ptr() as *const u16;
    // SAFETY: 6 readable bytes, aligned to 2 (the asserts above); volatile as in `load`.
    let w = unsafe {
        [
            w.read_volatile(),
            w.add(1).read_volatile(),
            w.add(2).read_volatile(),
        ]
    };
    // SAFETY: same size; every bit pattern is valid for both.
    unsafe { core::mem::transmute::<[u16; 3], [u8; 6]>(w) }
}

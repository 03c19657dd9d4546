//! Connection tracking for the security-group stage (see `peer_dataplane_common::conntrack`).
//!
//! What is tracked: TCP and UDP flows (with ports), ICMP and ICMPv6 echo (by identifier),
//! and other protocols by address pair. ICMP other than echo, and TCP/UDP fragments after
//! the first (no ports), are never tracked: the rules alone decide them.

use crate::maps::{CONNTRACK, CT_SCRATCH};
use crate::parse::{icmp_echo, Packet, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};
use crate::words;
use peer_dataplane_common::conntrack::{expired, CtEntry, CtKey, CT_FIN, CT_REPLIED, CT_RST};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// How a packet relates to the conntrack table. A struct with every field always set
/// rather than an enum with payloads: LLVM may spill an unset payload as an undefined
/// register, which the verifier refuses to read.
pub struct Tracked {
    pub how: How,
    /// The live entry (`Original`, `Reply`), else null.
    entry: *mut CtEntry,
    /// `New`: the key to create the entry under (a per-CPU scratch slot: two keys would
    /// crowd the 512-byte stack), else null.
    key: *mut CtKey,
    /// `New`: whether an allowed packet opens a flow (ICMP echo replies do not).
    opens: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Not trackable: rules decide, nothing is recorded.
    Untrackable,
    /// No live entry: rules decide; an allowed packet that opens creates one.
    New,
    /// Part of a tracked flow, in its original direction or as a reply.
    Original,
    Reply,
}

impl Tracked {
    /// A packet without a live entry whose kind creates one when it is allowed.
    #[inline(always)]
    pub fn opens_flow(&self) -> bool {
        self.how == How::New && self.opens
    }

    pub const UNTRACKABLE: Tracked = Tracked {
        how: How::Untrackable,
        entry: core::ptr::null_mut(),
        key: core::ptr::null_mut(),
        opens: false,
    };

    #[inline(always)]
    fn found(how: How, entry: *mut CtEntry) -> Tracked {
        Tracked {
            how,
            entry,
            key: core::ptr::null_mut(),
            opens: false,
        }
    }
}

/// The ports `p`'s flow is tracked by, and whether an allowed packet of its kind opens a
/// flow; `None` when it is not trackable.
#[inline(always)]
fn tracked_ports(p: &Packet) -> Option<(u16, u16, bool)> {
    Some(match p.proto {
        IPPROTO_TCP | IPPROTO_UDP if p.ports_known => (p.sport, p.dport, true),
        IPPROTO_TCP | IPPROTO_UDP => return None,
        // `sport` holds the echo identifier.
        IPPROTO_ICMP | IPPROTO_ICMPV6 if p.ports_known => match icmp_echo(p) {
            Some(true) => (p.sport, 0, true),
            // Keyed so that its reverse is the request's key; never opens a flow.
            Some(false) => (0, p.sport, false),
            None => return None,
        },
        IPPROTO_ICMP | IPPROTO_ICMPV6 => return None,
        _ => (0, 0, true),
    })
}

/// Finds the flow `p` (from VPC `src_vpc` to VPC `dst_vpc`) belongs to at `now`.
#[inline(always)]
pub fn lookup(src_vpc: u32, dst_vpc: u32, p: &Packet, now: u64) -> Tracked {
    let Some((sport, dport, opens)) = tracked_ports(p) else {
        return Tracked::UNTRACKABLE;
    };
    let (Some(key), Some(rev)) = (CT_SCRATCH.get_ptr_mut(0), CT_SCRATCH.get_ptr_mut(1)) else {
        return Tracked::UNTRACKABLE;
    };
    // SAFETY: this CPU's scratch slots, used by nothing else during this packet.
    let (k, r) = unsafe { (&mut *key, &mut *rev) };
    fill(
        k,
        (src_vpc, &p.src, sport),
        (dst_vpc, &p.dst, dport),
        p.proto,
    );
    if let Some(e) = live(k, now) {
        return Tracked::found(How::Original, e);
    }
    fill(
        r,
        (dst_vpc, &p.dst, dport),
        (src_vpc, &p.src, sport),
        p.proto,
    );
    if let Some(e) = live(r, now) {
        return Tracked::found(How::Reply, e);
    }
    Tracked {
        how: How::New,
        entry: core::ptr::null_mut(),
        key,
        opens,
    }
}

/// The live entry of `p`'s flow when the direction is known (a kept decision says
/// which): one lookup, under `p`'s own key or (`reply`) the reversed one. Nothing live
/// there comes back as `How::New` with nothing to open, and the caller runs the whole
/// stage, which then finds what [`lookup`] finds: the flow may live under the other key
/// by now, opened by another frame of it (one with a VLAN tag, say, whose decision is
/// kept apart) after the entry this decision relied on expired.
#[inline(always)]
pub fn lookup_as(src_vpc: u32, dst_vpc: u32, p: &Packet, now: u64, reply: bool) -> Tracked {
    let Some((sport, dport, _)) = tracked_ports(p) else {
        return Tracked::UNTRACKABLE;
    };
    let Some(key) = CT_SCRATCH.get_ptr_mut(0) else {
        return Tracked::UNTRACKABLE;
    };
    // SAFETY: this CPU's scratch slot, used by nothing else during this packet.
    let k = unsafe { &mut *key };
    let (this, other) = ((src_vpc, &p.src, sport), (dst_vpc, &p.dst, dport));
    let (how, from, to) = if reply {
        (How::Reply, other, this)
    } else {
        (How::Original, this, other)
    };
    fill(k, from, to, p.proto);
    match live(k, now) {
        Some(e) => Tracked::found(how, e),
        None => Tracked {
            how: How::New,
            entry: core::ptr::null_mut(),
            key: core::ptr::null_mut(),
            opens: false,
        },
    }
}

/// Writes the key of a flow from `src` (VPC, address, port) to `dst` in place (the
/// scratch slot), field by field rather than through a stack temporary.
#[inline(always)]
fn fill(k: &mut CtKey, src: (u32, &[u8; 16], u16), dst: (u32, &[u8; 16], u16), proto: u8) {
    k.src_vpc = src.0;
    k.dst_vpc = dst.0;
    k.src = words::copy(src.1);
    k.dst = words::copy(dst.1);
    // SAFETY: the fields `words` asserts for these writes.
    unsafe {
        words::ports(core::ptr::addr_of_mut!(k.sport), src.2, dst.2);
        words::bytes(core::ptr::addr_of_mut!(k.proto), [proto, 0, 0, 0]);
    }
}

#[inline(always)]
fn live(key: &CtKey, now: u64) -> Option<*mut CtEntry> {
    let e = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: a map value; fields are read and written with plain accesses (a torn read
    // of a stamp being refreshed by another CPU only shifts an expiry by one packet).
    let (flags, last) = unsafe { ((*e).flags, (*e).last_seen_ns) };
    if expired(key.proto, flags, last, now) {
        None
    } else {
        Some(e)
    }
}

/// Opens a flow for an allowed packet that found none (if its kind opens flows).
#[inline(always)]
pub fn open(t: &Tracked, p: &Packet, now: u64) {
    if t.how != How::New || !t.opens || t.key.is_null() {
        return;
    }
    let entry = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        packets: [1, 0],
        flags: tcp_bits(p),
        _pad: 0,
    };
    // A full table evicts its least recently used flow; failure leaves the flow
    // untracked, so its replies meet the rules (fail closed).
    // SAFETY: the scratch slot `lookup` filled for this packet.
    let _ = CONNTRACK.insert(unsafe { &*t.key }, &entry, 0);
}

/// Refreshes the flow a packet belongs to.
#[inline(always)]
pub fn refresh(t: &Tracked, p: &Packet, now: u64) {
    if t.entry.is_null() {
        return;
    }
    let tcp = tcp_bits(p);
    // SAFETY: see `live`.
    let e = unsafe { &mut *t.entry };
    e.last_seen_ns = now;
    if t.how == How::Reply {
        e.packets[1] += 1;
        e.flags |= CT_REPLIED | tcp;
    } else {
        // A new SYN on a closed connection's tuple starts it afresh.
        if p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && e.flags & (CT_FIN | CT_RST) != 0 {
            e.flags = 0;
            e.created_ns = now;
        }
        e.packets[0] += 1;
        e.flags |= tcp;
    }
}

#[inline(always)]
fn tcp_bits(p: &Packet) -> u32 {
    if p.proto != IPPROTO_TCP {
        return 0;
    }
    let flags = p.tcp_flags;
    let mut b = 0;
    if flags & TCP_FIN != 0 {
        b |= CT_FIN;
    }
    if flags & TCP_RST != 0 {
        b |= CT_RST;
    }
    b
}

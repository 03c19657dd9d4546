//! Flow decision cache (docs/datapath.md §4.19; the layout is
//! `peer_dataplane_common::flowcache`). A packet from an instance whose flow has a
//! decision of the current epoch goes straight to what the decision needs per packet:
//! its conntrack entry (a tracked flow), the TTL, the redirect, the cap and the rewrite,
//! in the pipeline's order. Anything else runs the whole pipeline, and a forwarded
//! packet leaves its decision behind for the next, from the flow's second miss on (the
//! first only marks the flow seen: see [`keep`]).

use crate::{
    cap, clock,
    conntrack::{self, How},
    counters::{Outcome, Verdict},
    groups,
    maps::{
        ACL_HITS, DEVMAP, ENTRY_SCRATCH, EPOCH, FLOW_CACHE, FLOW_SCRATCH, FLOW_STATS, FLOW_TAGS,
    },
    parse::{icmp_echo, Packet, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
    peering::Crossing,
    rewrite, trace, words,
};
use aya_ebpf::programs::XdpContext;
use peer_dataplane_common::{
    flowcache::{
        seen, slot_of, tag, tag_in_epoch, tag_is_of, FlowCounters, FlowEntry, FlowKey, FlowSlot,
        FLOW_REPLY, FLOW_SLOTS, FLOW_TRACKED, NO_HIT, REPLACE_EVERY, TAG_SEEN,
    },
    trace::NO_FLOW_SLOT,
    DropReason, Endpoint,
};

/// In this CPU's decision slot only while a packet runs: its decision is not to be kept.
const NOT_KEPT: u32 = 1 << 31;
/// Likewise: kept decisions are turned off (`pdp_epoch` slot 1), none is used or kept.
const OFF: u32 = 1 << 30;
/// Likewise: [`forward`] made the flow's key (in `FLOW_SCRATCH`) and its hash (in the
/// entry's `ifindex`, unused until [`keep`] fills the decision), so [`keep`] need not
/// make them again.
const KEYED: u32 = 1 << 29;
/// The scratch flags that only live while a packet runs.
const PACKET_ONLY: u32 = NOT_KEPT | OFF | KEYED;

/// Starts a packet: the installed state's epoch, read before any of the state a decision
/// is made from (a change the agent finishes while the packet runs leaves its decision
/// stale at once), goes into this CPU's decision slot. What a packet's decision needs is
/// gathered there, in memory rather than in registers carried through the pipeline: the
/// verifier would otherwise follow every combination of them through every stage.
#[inline(always)]
pub fn begin() {
    let Some(slot) = ENTRY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, used by nothing else while this packet runs.
    let e = unsafe { &mut *slot };
    e.epoch = EPOCH.get(0).copied().unwrap_or(0);
    e.flags = if EPOCH.get(1).copied().unwrap_or(0) != 0 {
        OFF
    } else {
        0
    };
    e.acl_hits = [NO_HIT; 2];
}

/// Records that the network ACL rule counted in hit slot `slot` decided the packet (the
/// egress ACL's, then the ingress ACL's): a kept decision counts them again for each
/// packet of the flow, as if its ACLs had been read.
#[inline(always)]
pub fn note_acl_hit(slot: u32) {
    let Some(e) = ENTRY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: see `begin`.
    let e = unsafe { &mut *e };
    if e.acl_hits[0] == NO_HIT {
        e.acl_hits[0] = slot;
    } else {
        e.acl_hits[1] = slot;
    }
}

/// The epoch [`begin`] read for this packet; `None` while kept decisions are off.
#[inline(always)]
pub fn epoch() -> Option<u64> {
    let e = ENTRY_SCRATCH.get(0)?;
    (e.flags & OFF == 0).then_some(e.epoch)
}

/// Records how the packet passed the security groups (`groups::NO_GROUPS`, ...): a flow the
/// groups let through on their rules alone, with nothing tracked, has its packets
/// decided by the rules each time, so its decision is not kept.
#[inline(always)]
pub fn note_groups(groups: u32) {
    let Some(slot) = ENTRY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: see `begin`.
    let e = unsafe { &mut *slot };
    e.flags = (e.flags & (OFF | KEYED))
        | match groups {
            groups::TRACKED => FLOW_TRACKED,
            groups::TRACKED_REPLY => FLOW_TRACKED | FLOW_REPLY,
            groups::NO_GROUPS => 0,
            _ => NOT_KEPT,
        };
}

/// The key of `p`'s flow from `ifindex`, in this CPU's scratch slot; `None` for a packet
/// whose decision is not kept (no ports: a later fragment; ICMP other than echo).
#[inline(always)]
fn key(ifindex: u32, p: &Packet) -> Option<&'static FlowKey> {
    if !p.ports_known {
        return None;
    }
    match p.proto {
        IPPROTO_TCP | IPPROTO_UDP => {}
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            icmp_echo(p)?;
        }
        _ => return None,
    }
    let slot = FLOW_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, used by nothing else while this packet runs.
    let k = unsafe { &mut *slot };
    let ports = (p.sport, p.dport);
    put_key(k, ifindex, &p.src, &p.dst, ports, p.proto, p.vlan as u8);
    Some(k)
}

/// Writes flow key `k` in place: addresses, ports, and protocol with the tag byte and
/// padding, each moved as whole words (see `words`: the key is hashed right away, and a
/// plain copy of it would be a call to a byte loop).
#[inline(always)]
fn put_key(
    k: &mut FlowKey,
    ifindex: u32,
    src: &[u8; 16],
    dst: &[u8; 16],
    (sport, dport): (u16, u16),
    proto: u8,
    vlan: u8,
) {
    k.ifindex = ifindex;
    k.src = words::copy(src);
    k.dst = words::copy(dst);
    // SAFETY: the fields `words` asserts for these writes.
    unsafe {
        words::ports(core::ptr::addr_of_mut!(k.sport), sport, dport);
        words::bytes(core::ptr::addr_of_mut!(k.proto), [proto, vlan, 0, 0]);
    }
}

/// For a trace: the flow's key and slot, the epoch and the setting (the CLI reads the
/// slot on every CPU; a trace itself neither uses nor keeps a decision).
#[inline(always)]
pub fn note_for_trace<const T: bool>(ifindex: u32, p: &Packet) {
    if !T {
        return;
    }
    let key = key(ifindex, p);
    trace::note::<T>(|r| {
        r.epoch = EPOCH.get(0).copied().unwrap_or(0);
        r.flow_cache_on = (EPOCH.get(1).copied().unwrap_or(0) == 0) as u32;
        match key {
            Some(k) => {
                r.flow_key = *k;
                r.flow_slot = k.slot();
            }
            None => r.flow_slot = NO_FLOW_SLOT,
        }
    });
}

/// Delivers `p` as its flow's decision of `epoch` (this packet's, see [`epoch`]) says.
/// Returns the outcome
/// packed by [`pack`], or 0 when there is no such decision, or the decision relies on a
/// conntrack entry that is gone: the pipeline decides then.
///
/// Not inlined (a BPF-to-BPF call): its branches then join at the return instead of
/// doubling the verifier's paths through the rest of the pipeline; and a number, not a
/// struct, comes back, so the caller's stack (the deepest chain of calls shares 512
/// bytes) does not grow.
#[inline(never)]
pub fn forward(ctx: &XdpContext, p: &Packet, epoch: u64) -> u64 {
    let Some(key) = key(ctx.ingress_ifindex() as u32, p) else {
        return 0;
    };
    let hash = key.hash();
    let index = slot_of(hash);
    if let Some(e) = ENTRY_SCRATCH.get_ptr_mut(0) {
        // SAFETY: see `begin`.
        let e = unsafe { &mut *e };
        e.flags |= KEYED;
        // The entry's `ifindex` is not set before `keep` copies the decision out.
        e.ifindex = hash;
    }
    // A tag that differs: no decision of this flow and epoch in the slot, known
    // without reading it.
    if slot_tag(index).map(|t| *t) != Some(tag(hash, epoch)) {
        return 0;
    }
    match decided(ctx, p, key, index, epoch) {
        Some(o) => {
            count(|c| c.hits += 1);
            pack(&o)
        }
        None => 0,
    }
}

/// This CPU's tag of slot `index`.
#[inline(always)]
fn slot_tag(index: u32) -> Option<&'static mut u16> {
    let tags = FLOW_TAGS.get_ptr_mut(0)?;
    // SAFETY: this CPU's tags, written only by this CPU between packets' lookups.
    let tags = unsafe { &mut (*tags).tags };
    tags.get_mut((index & (FLOW_SLOTS - 1)) as usize)
}

/// Counts a miss for a frame from a port whose flow [`forward`] looked up and found no
/// decision to use (frames of other interfaces are looked up too, before the port
/// lookup, but are no misses: nothing is ever kept for them).
#[inline(always)]
pub fn count_miss() {
    if let Some(e) = ENTRY_SCRATCH.get(0) {
        if e.flags & KEYED != 0 {
            count(|c| c.misses += 1);
        }
    }
}

/// Adds to this CPU's cache counters.
#[inline(always)]
fn count(f: impl FnOnce(&mut FlowCounters)) {
    if let Some(c) = FLOW_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        f(unsafe { &mut *c });
    }
}

/// An outcome as one non-zero number: verdict + 1, reason, action, peering counter.
#[inline(always)]
fn pack(o: &Outcome) -> u64 {
    (o.verdict as u64 + 1)
        | ((o.reason as u64 & 0xff) << 8)
        | ((o.action as u64 & 0xffff) << 16)
        | ((o.ctr as u64) << 32)
}

/// The outcome [`forward`] packed.
#[inline(always)]
pub fn unpack(v: u64) -> Outcome {
    let verdict = match v & 0xff {
        1 => Verdict::Pass,
        2 => Verdict::Redirect,
        _ => Verdict::Drop,
    };
    Outcome {
        verdict,
        reason: ((v >> 8) & 0xff) as u32,
        action: ((v >> 16) & 0xffff) as u32,
        ctr: (v >> 32) as u32,
    }
}

#[inline(always)]
fn decided(ctx: &XdpContext, p: &Packet, key: &FlowKey, index: u32, epoch: u64) -> Option<Outcome> {
    let slot = FLOW_CACHE.get_ptr(index)?;
    // SAFETY: this CPU's slot: only this CPU writes it, and not while this packet runs.
    let slot: &FlowSlot = unsafe { &*slot };
    let e = &slot.entry;
    if e.epoch != epoch || !slot.key.same(key) {
        return None;
    }
    let ctr = e.ctr;
    if e.flags & FLOW_TRACKED != 0 {
        // The security-group stage, as a tracked flow passes it (the pipeline runs
        // instead, counting nothing here twice, when the flow is no longer tracked).
        let now = clock::now();
        let reply = e.flags & FLOW_REPLY != 0;
        let t = conntrack::lookup_as(e.src_vpc, e.dst_vpc, p, now, reply);
        if t.how != How::Original && t.how != How::Reply {
            return None;
        }
        conntrack::refresh(&t, p, now);
    }
    for slot in e.acl_hits {
        if slot != NO_HIT {
            if let Some(hits) = ACL_HITS.get_ptr_mut(slot) {
                // SAFETY: this CPU's slot.
                unsafe { *hits += 1 };
            }
        }
    }
    Some(deliver(ctx, p, e, ctr).unwrap_or_else(|reason| Outcome::drop(reason, ctr)))
}

#[inline(always)]
fn deliver(ctx: &XdpContext, p: &Packet, e: &FlowEntry, ctr: u32) -> Result<Outcome, DropReason> {
    if p.ttl <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    let action = DEVMAP
        .redirect(e.ifindex, 0)
        .map_err(|_| DropReason::RedirectFailed)?;
    if e.cap.is_capped() {
        let len = (ctx.data_end() - ctx.data()) as u64;
        cap::police(&e.cap, ctr, len)?;
    }
    rewrite::decrement_ttl(ctx, p)?;
    rewrite::macs_and_vlan(ctx, p, &e.mac, &e.gw_mac)?;
    Ok(Outcome::redirect(action, ctr))
}

/// Keeps the decision the pipeline made for this packet's flow (keyed by [`forward`]),
/// if its decisions are kept at all and this is not the flow's first miss (then its
/// slot's tag only marks it seen: `peer_dataplane_common::flowcache::seen`): delivered
/// to local endpoint `ep` over crossing `x` from VPC `src_vpc`, in the epoch and with the
/// groups' verdict the slot holds.
#[inline(always)]
pub fn keep(x: &Crossing, ep: &Endpoint, src_vpc: u32) {
    let Some(slot) = ENTRY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: see `begin`.
    let e = unsafe { &mut *slot };
    // Keyed by `forward` for this packet, or not cacheable (or kept decisions are off).
    if e.flags & (NOT_KEPT | OFF | KEYED) != KEYED {
        return;
    }
    let hash = e.ifindex;
    let index = slot_of(hash);
    let Some(t) = slot_tag(index) else {
        return;
    };
    let was = *t;
    let current = tag_in_epoch(was, e.epoch);
    let mine = tag_is_of(was, hash);
    let seen_only = was & TAG_SEEN != 0;
    if current && !(mine && seen_only) {
        // The slot holds (by its tag, probably) another flow's decision or first miss of
        // this epoch: it is taken on every REPLACE_EVERY-th miss of this CPU only. The
        // others return before touching it, so a flood of new flows leaves the decisions
        // it meets in place.
        let misses = FLOW_STATS.get(0).map(|c| c.misses).unwrap_or(0);
        if misses % REPLACE_EVERY != 0 {
            count(|c| c.declined += 1);
            return;
        }
        if seen_only {
            // Another flow's first miss: this one's replaces it.
            *t = seen(hash, e.epoch);
            count(|c| c.deferred += 1);
            return;
        }
    } else if !mine {
        // The flow's first miss, as far as the slot knows (empty, or another flow's in
        // an earlier epoch): its tag says so, and the decision is kept on its next miss.
        // A flow of one packet never writes a slot, a cold line.
        *t = seen(hash, e.epoch);
        count(|c| c.deferred += 1);
        return;
    }
    let Some(key) = FLOW_SCRATCH.get(0) else {
        return;
    };
    let Some(slot) = FLOW_CACHE.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: this CPU's slot (see `decided`).
    let slot = unsafe { &mut *slot };
    // Whatever flow held the slot gives it up: a direct-mapped table keeps the last. An
    // eviction is told by the tag (a decision of this epoch, another flow's hash bits),
    // not by reading the slot: a load that misses the CPU's caches stalls the packet,
    // where the stores below do not.
    let evicts = current && !seen_only && !mine;
    count(|c| {
        c.kept += 1;
        c.evictions += evicts as u64;
    });
    let ports = (key.sport, key.dport);
    put_key(
        &mut slot.key,
        key.ifindex,
        &key.src,
        &key.dst,
        ports,
        key.proto,
        key.vlan,
    );
    let d = &mut slot.entry;
    d.epoch = e.epoch;
    d.cap = x.cap;
    d.ifindex = ep.ifindex;
    d.ctr = x.ctr;
    d.src_vpc = src_vpc;
    d.dst_vpc = x.peer_vpc;
    d.flags = e.flags & !PACKET_ONLY;
    d.mac = words::mac(&ep.mac);
    d.gw_mac = words::mac(&ep.gw_mac);
    d.acl_hits = e.acl_hits;
    *t = tag(hash, e.epoch);
}

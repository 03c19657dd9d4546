//! The flow decision cache (docs/datapath.md §4.19): what the whole pipeline decided for
//! one flow, kept so that the flow's next packets skip the route, ACL, group and endpoint
//! lookups. Each decision carries the *epoch* it was made in; the agent moves the epoch
//! on after every change it writes to the maps, and a decision of another epoch is never
//! used: the packet runs the pipeline again and the decision is replaced.

use crate::cap::CapConfig;
use core::mem::size_of;

/// Decisions kept per CPU: a direct-mapped table of 2^`FLOW_SLOT_BITS` slots, each
/// holding the last flow whose key hashed there. Per CPU, because a flow's packets stay
/// on one receive queue; direct-mapped, because keeping a decision is then a plain write
/// into the slot (no allocation, no lock) and a flood of new flows costs each of them
/// the same, evicting what it collides with.
pub const FLOW_SLOT_BITS: u32 = 14;
pub const FLOW_SLOTS: u32 = 1 << FLOW_SLOT_BITS;

/// What decides a packet besides the installed state: where it came in, and its flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FlowKey {
    /// Ingress interface.
    pub ifindex: u32,
    /// IPv4 in mapped form.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// TCP/UDP ports; for ICMP echo the identifier in `sport` and type << 8 | code in
    /// `dport`.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// 1 when the frame came tagged (the tag is popped on delivery).
    pub vlan: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 44);

/// The slot of a key whose [`FlowKey::hash`] is `hash`.
#[inline(always)]
pub const fn slot_of(hash: u32) -> u32 {
    hash >> (32 - FLOW_SLOT_BITS)
}

/// A slot's tag: the low byte of the epoch it was written in, a *seen* bit, then 7 bits
/// of the hash of the flow it was written for (bits the slot index does not use). Each
/// CPU keeps its slots' tags in one 32 KiB array ([`FlowTags`]) that stays in the CPU's
/// caches, so that a miss is known without reading the slot (usually a cold line of a
/// 1.75 MiB table): a packet whose [`tag`] differs from its slot's has no decision there.
/// Equal tags prove nothing; the slot is then compared whole (key and 64-bit epoch).
#[inline(always)]
pub const fn tag(hash: u32, epoch: u64) -> u16 {
    ((epoch as u16) << 8) | (hash & TAG_HASH as u32) as u16
}

/// The hash bits of a tag.
pub const TAG_HASH: u16 = 0x7f;

/// Set in the tag of a slot where a flow missed for the first time and nothing was kept:
/// the flow's decision is kept from its next miss on ([`seen`]).
pub const TAG_SEEN: u16 = 0x80;

/// The tag a flow's first miss leaves in its slot instead of its decision. A flow of one
/// packet (a scan, a flood of new flows, a DNS query) then never writes a slot, a cold
/// line; a flow whose next miss finds its hash bits in the slot's tag (seen, or kept in
/// an earlier epoch) has its decision kept then.
#[inline(always)]
pub const fn seen(hash: u32, epoch: u64) -> u16 {
    tag(hash, epoch) | TAG_SEEN
}

/// Whether tag `t` was (probably) written in epoch `epoch`: a decision of this epoch, or
/// a first miss ([`TAG_SEEN`]), may be in the slot. Probably: the tag keeps only the
/// epoch's low byte.
#[inline(always)]
pub const fn tag_in_epoch(t: u16, epoch: u64) -> bool {
    (t >> 8) as u8 == epoch as u8
}

/// Whether tag `t` was (probably) written for the flow whose hash is `hash`, seen or
/// kept, in any epoch.
#[inline(always)]
pub const fn tag_is_of(t: u16, hash: u32) -> bool {
    t & TAG_HASH == (hash & TAG_HASH as u32) as u16
}

/// The tags of one CPU's slots (see [`tag`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FlowTags {
    pub tags: [u16; FLOW_SLOTS as usize],
}
const _: () = assert!(size_of::<FlowTags>() == 32 * 1024);

/// The decision relies on connection tracking: a packet of the flow is forwarded only
/// while its conntrack entry lives (the security groups allowed it as a tracked flow).
pub const FLOW_TRACKED: u32 = 1 << 0;
/// With [`FLOW_TRACKED`]: the flow's packets are replies of the tracked flow, so its entry
/// is found under the reversed key (one lookup instead of the original key first).
pub const FLOW_REPLY: u32 = 1 << 1;

/// A forwarding decision: everything the pipeline computed that the packet's delivery
/// needs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEntry {
    /// The epoch the decision was made in (see the module's text).
    pub epoch: u64,
    /// Bandwidth cap of the peering in this direction.
    pub cap: CapConfig,
    /// Local port the packet is delivered to (its devmap key).
    pub ifindex: u32,
    /// Index of the peering and direction in the per-peering counters and caps.
    pub ctr: u32,
    /// The two VPCs, for the conntrack key of a tracked flow.
    pub src_vpc: u32,
    pub dst_vpc: u32,
    /// `FLOW_*`.
    pub flags: u32,
    /// Destination MAC and source (gateway) MAC written on delivery.
    pub mac: [u8; 6],
    pub gw_mac: [u8; 6],
    /// The network ACL rules that decided the packet (egress, then ingress), as slots
    /// of the per-rule hit counters, counted again for each packet; [`NO_HIT`] where no
    /// rule was counted.
    pub acl_hits: [u32; 2],
}

/// An [`FlowEntry::acl_hits`] slot without a rule.
pub const NO_HIT: u32 = u32::MAX;
const _: () = assert!(size_of::<FlowEntry>() == 64);

/// One slot of the table: the flow and its decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowSlot {
    pub key: FlowKey,
    pub _pad: u32,
    pub entry: FlowEntry,
}
const _: () = assert!(size_of::<FlowSlot>() == 112);

/// What the cache did, per CPU (`pdp_flow_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowCounters {
    /// Packets a kept decision forwarded.
    pub hits: u64,
    /// Packets of a flow the cache could hold that found no decision of the current
    /// epoch (none kept, another flow's, a stale one, or its conntrack entry gone).
    pub misses: u64,
    /// Decisions kept (forwarded packets that ran the whole pipeline and took their slot).
    pub kept: u64,
    /// Decisions of the current epoch a newer flow's decision replaced in their slot, as
    /// the slot's tag tells (its epoch's low byte, another flow's hash bits: the slot
    /// itself is not read for it).
    pub evictions: u64,
    /// Decisions not kept because the slot held another flow's decision or first miss of
    /// this epoch and it was not this miss's turn to replace it ([`REPLACE_EVERY`]).
    pub declined: u64,
    /// Decisions not kept because the miss was the flow's first (its slot's tag showed
    /// neither it nor another flow's decision of this epoch): only the tag is written
    /// ([`seen`]), and the decision is kept on the flow's next miss.
    pub deferred: u64,
}
const _: () = assert!(size_of::<FlowCounters>() == 48);

/// A slot holding another flow's decision of the current epoch is given to a new flow on
/// every this-many-th miss of the CPU only (the others leave it alone). A flood of new
/// flows then writes one slot in this many instead of one per packet, and the decisions
/// it would evict mostly survive it; a flow that meets a taken slot is kept after this
/// many misses on average. Any other slot (empty, stale, or marked by a first miss) is
/// taken on the flow's second miss ([`seen`]).
pub const REPLACE_EVERY: u64 = 8;

impl FlowCounters {
    pub fn add(&mut self, o: &FlowCounters) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.kept += o.kept;
        self.evictions += o.evictions;
        self.declined += o.declined;
        self.deferred += o.deferred;
    }
}

impl FlowSlot {
    /// Holds a decision of epoch `epoch` (a slot never written has ifindex 0: no port
    /// has it).
    #[inline(always)]
    pub fn holds_current(&self, epoch: u64) -> bool {
        self.entry.epoch == epoch && self.key.ifindex != 0
    }
}

impl FlowKey {
    /// No flow (an empty slot's key).
    pub const ZERO: FlowKey = FlowKey {
        ifindex: 0,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        proto: 0,
        vlan: 0,
        _pad: [0; 2],
    };

    /// The key as the eleven words it is made of.
    #[inline(always)]
    pub fn words(&self) -> &[u32; 11] {
        // SAFETY: #[repr(C)], 44 bytes of integers and byte arrays with no padding,
        // aligned to 4: exactly eleven u32.
        unsafe { &*(self as *const FlowKey as *const [u32; 11]) }
    }

    /// The slot this flow's decision lives in: the top bits of [`FlowKey::hash`].
    #[inline(always)]
    pub fn slot(&self) -> u32 {
        slot_of(self.hash())
    }

    /// The key's hash: each word times its own odd constant, summed, then mixed. The
    /// products do not wait on each other (a chain of eleven multiplications would), and
    /// a direct-mapped cache needs spread, not strength.
    #[inline(always)]
    pub fn hash(&self) -> u32 {
        const K: [u32; 11] = [
            0x9e37_79b1,
            0x85eb_ca77,
            0xc2b2_ae3d,
            0x27d4_eb2f,
            0x1656_67b1,
            0xd3a2_646d,
            0xfd70_46c5,
            0xb55a_4f09,
            0x7feb_352d,
            0x846c_a68b,
            0xcc9e_2d51,
        ];
        let w = self.words();
        let mut h: u32 = 0;
        for i in 0..11 {
            h = h.wrapping_add(w[i].wrapping_mul(K[i]));
        }
        h ^= h >> 16;
        h.wrapping_mul(0x9e37_79b1)
    }

    /// Equal keys, word by word.
    #[inline(always)]
    pub fn same(&self, other: &FlowKey) -> bool {
        let (a, b) = (self.words(), other.words());
        let mut diff = 0;
        for i in 0..11 {
            diff |= a[i] ^ b[i];
        }
        diff == 0
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{vec, vec::Vec};

    fn key(sport: u16, dst_low: u8) -> FlowKey {
        let mut k = FlowKey {
            ifindex: 7,
            sport,
            dport: 7000,
            proto: 17,
            ..FlowKey::default()
        };
        k.src[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 2, 10]);
        k.dst[10..].copy_from_slice(&[0xff, 0xff, 172, 16, 2, dst_low]);
        k
    }

    /// Flows that differ in one port, or in the ports and one address byte, spread over
    /// the table as random keys would: 65,536 keys into 16,384 slots leave about
    /// 16,384 × e^-4 ≈ 300 empty, and no slot gets a crowd.
    #[test]
    fn slots_spread_like_random() {
        for keys in [
            (0..=u16::MAX).map(|p| key(p, 20)).collect::<Vec<_>>(),
            (0..256u32)
                .flat_map(|d| (0..256u16).map(move |p| key(1024 + p, d as u8)))
                .collect(),
        ] {
            let mut load = vec![0u32; FLOW_SLOTS as usize];
            for k in &keys {
                load[k.slot() as usize] += 1;
            }
            let empty = load.iter().filter(|&&n| n == 0).count();
            let most = *load.iter().max().unwrap();
            assert!(empty < 600, "{empty} empty slots");
            assert!(most <= 16, "a slot holds {most} keys");
        }
    }

    #[test]
    fn same_is_equality() {
        assert!(key(1, 2).same(&key(1, 2)));
        assert!(!key(1, 2).same(&key(1, 3)));
        assert!(!key(1, 2).same(&key(2, 2)));
    }

    /// A tag moves with the epoch (a decision kept before any change never passes the
    /// filter of the 255 epochs after it), says whether a decision of the epoch was kept
    /// or only its flow seen, and for which flow: the flows that share a slot mostly have
    /// different tags.
    #[test]
    fn tags_follow_the_epoch_and_tell_flows_apart() {
        let h = key(5001, 20).hash();
        for epoch in [0u64, 7, 255, 256, 1 << 40] {
            assert!(tag_in_epoch(tag(h, epoch), epoch) && tag_in_epoch(seen(h, epoch), epoch));
            assert_eq!(tag(h, epoch) & TAG_SEEN, 0);
            assert_ne!(seen(h, epoch), tag(h, epoch));
            assert!(tag_is_of(tag(h, epoch), h) && tag_is_of(seen(h, epoch), h));
            for later in 1..256 {
                assert_ne!(tag(h, epoch), tag(h, epoch + later), "{epoch} +{later}");
                assert!(!tag_in_epoch(tag(h, epoch), epoch + later));
                assert!(!tag_in_epoch(seen(h, epoch), epoch + later));
                // A flow seen or kept in an earlier epoch is still known as itself.
                assert!(tag_is_of(tag(h, epoch), h) && tag_is_of(seen(h, epoch + later), h));
            }
        }
        let slot = key(5001, 20).slot();
        let sharing: Vec<u32> = (0..=u16::MAX)
            .map(|p| key(p, 20))
            .filter(|k| k.slot() == slot)
            .map(|k| k.hash())
            .collect();
        assert!(sharing.len() >= 2, "{} keys share the slot", sharing.len());
        let same_tag = sharing.iter().filter(|&&o| tag(o, 1) == tag(h, 1)).count();
        let known = sharing
            .iter()
            .filter(|&&o| tag_is_of(seen(h, 1), o))
            .count();
        // The key itself, and by chance about one in 128 of the others.
        for n in [same_tag, known] {
            assert!(n <= 1 + sharing.len() / 32, "{n} of {}", sharing.len());
        }
    }
}

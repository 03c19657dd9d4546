//! `peer-dataplane trace` : the `pdp_trace` entry point runs the same pipeline as
//! `pdp_xdp` with its side effects off (no counters, no rule hits, no conntrack writes,
//! the cap checked but not spent) and writes what each stage saw into one
//! [`TraceRecord`] per CPU, which the CLI reads back after its BPF_PROG_RUN.

use crate::cap::CapConfig;
use crate::flowcache::FlowKey;
use core::mem::size_of;

/// Stages, as bits of [`TraceRecord::reached`], in pipeline order.
pub const STAGE_PORT: u32 = 1 << 0;
pub const STAGE_PARSE: u32 = 1 << 1;
pub const STAGE_ROUTE: u32 = 1 << 2;
pub const STAGE_PEERING: u32 = 1 << 3;
pub const STAGE_ORIGIN: u32 = 1 << 4;
pub const STAGE_EGRESS_ACL: u32 = 1 << 5;
pub const STAGE_ENDPOINT: u32 = 1 << 6;
pub const STAGE_RETURN_ROUTE: u32 = 1 << 7;
pub const STAGE_INGRESS_ACL: u32 = 1 << 8;
pub const STAGE_SECURITY_GROUPS: u32 = 1 << 9;
pub const STAGE_TTL: u32 = 1 << 10;
pub const STAGE_DELIVER: u32 = 1 << 11;
pub const STAGE_CAP: u32 = 1 << 12;
pub const STAGE_REWRITE: u32 = 1 << 13;
/// A frame on the uplink was Geneve to this host: the tunnel's checks ran.
pub const STAGE_DECAP: u32 = 1 << 14;
/// The destination lives on another host: the frame was (or would be) encapsulated.
pub const STAGE_ENCAP: u32 = 1 << 15;

/// [`TraceRecord::verdict`].
pub const VERDICT_PASS: u32 = 0;
pub const VERDICT_REDIRECT: u32 = 1;
pub const VERDICT_DROP: u32 = 2;

/// A route lookup that found nothing.
pub const NO_ROUTE: u32 = u32::MAX;

/// What a network ACL check decided, as one word: [`ACL_ABSENT`] (the subnet has no ACL),
/// [`ACL_NO_RULE`] (no rule matched: the implicit deny), or the matching rule's bit with
/// [`ACL_ALLOWS`] set when that rule allows.
pub const ACL_ABSENT: u32 = u32::MAX;
pub const ACL_NO_RULE: u32 = u32::MAX - 1;
pub const ACL_ALLOWS: u32 = 1 << 31;

#[inline(always)]
pub const fn acl_allows(decision: u32) -> bool {
    decision == ACL_ABSENT || (decision != ACL_NO_RULE && decision & ACL_ALLOWS != 0)
}

/// The rule bit of a decision that named a rule.
#[inline(always)]
pub const fn acl_rule_bit(decision: u32) -> Option<u32> {
    if decision == ACL_ABSENT || decision == ACL_NO_RULE {
        None
    } else {
        Some(decision & !ACL_ALLOWS)
    }
}

/// How a packet related to the conntrack table ([`TraceRecord::sg_conntrack`]).
pub const CT_NOT_CHECKED: u32 = 0;
pub const CT_UNTRACKABLE: u32 = 1;
pub const CT_NEW: u32 = 2;
pub const CT_ORIGINAL: u32 = 3;
pub const CT_REPLY: u32 = 4;

/// A port's security-group rules on this packet ([`TraceRecord::sg_egress`], `sg_ingress`).
pub const SG_NOT_CHECKED: u32 = 0;
pub const SG_NO_GROUPS: u32 = 1;
pub const SG_MATCH: u32 = 2;
pub const SG_NO_MATCH: u32 = 3;

/// What the stages saw. Fields of stages not in `reached` are zero (`flow_slot`:
/// [`NO_FLOW_SLOT`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceRecord {
    /// `bpf_ktime_get_ns()` when the trace ran (tells a fresh record from a stale one).
    pub stamp_ns: u64,
    pub reached: u32,
    pub verdict: u32,
    /// The `PassReason` or `DropReason` (0 for a redirect).
    pub reason: u32,
    /// The XDP action the program returned.
    pub action: u32,
    // Port stage.
    pub ingress_ifindex: u32,
    pub port_vpc: u32,
    pub port_route_table: u32,
    pub port_acl: u32,
    pub port_sg: u32,
    // Parse stage.
    pub is_v4: u8,
    pub proto: u8,
    pub ttl: u8,
    pub ports_known: u8,
    pub sport: u16,
    pub dport: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    // Route stage: the kind and target of the route found, or `NO_ROUTE`.
    pub route_kind: u32,
    pub route_target: u32,
    // Peering stage.
    pub peering_slot: u32,
    pub peering_status: u32,
    /// `DIR_*`, or `NO_ROUTE` when the peering does not join the sender's VPC.
    pub peering_dir: u32,
    pub peer_vpc: u32,
    // Network ACLs: decisions as [`acl_allows`] reads them, and the sets checked.
    pub egress_acl_set: u32,
    pub egress_acl: u32,
    pub ingress_acl_set: u32,
    pub ingress_acl: u32,
    // Endpoint stage.
    pub ep_ifindex: u32,
    pub ep_route_table: u32,
    pub ep_sg: u32,
    // Return route: as the route stage.
    pub return_kind: u32,
    pub return_target: u32,
    // Security groups.
    pub sg_conntrack: u32,
    pub sg_egress: u32,
    pub sg_ingress: u32,
    // Cap stage: the bucket as found (not changed by the trace).
    pub cap_index: u32,
    pub cap: CapConfig,
    pub cap_tat_ns: u64,
    pub cap_cost_ns: u64,
    /// 1 if the packet conforms (would be forwarded now).
    pub cap_conforms: u32,
    // Overlay (`STAGE_ENCAP` on the sender, `STAGE_DECAP` on the receiver).
    /// Slot of the other host: where the frame goes, or the tunnel's sender (`NO_ROUTE`
    /// when the outer source is no known host).
    pub overlay_host: u32,
    /// The Geneve VNI (destination VPC).
    pub overlay_vni: u32,
    /// The option's source VNI and tunnel key.
    pub overlay_src_vni: u32,
    pub overlay_key: u32,
    /// The other host's underlay address (mapped IPv4): outer destination or outer source.
    pub overlay_peer: [u8; 16],
    /// Underlay MTU the encapsulated frame was checked against.
    pub overlay_mtu: u32,
    /// `bpf_fib_lookup`'s result on the sender (`BPF_FIB_LKUP_RET_*`).
    pub overlay_fib: u32,
    // Flow decision cache (a trace neither uses nor keeps decisions: the CLI looks the
    // flow's slot up on every CPU).
    /// The flow's slot in each CPU's table, or [`NO_FLOW_SLOT`] for a packet whose
    /// decision is never kept.
    pub flow_slot: u32,
    /// The installed state's epoch when the trace ran.
    pub epoch: u64,
    /// 1 while kept decisions are used.
    pub flow_cache_on: u32,
    pub flow_key: FlowKey,
}
const _: () = assert!(size_of::<TraceRecord>() == 296);

/// [`TraceRecord::flow_slot`] of a packet without a flow key.
pub const NO_FLOW_SLOT: u32 = u32::MAX;

impl TraceRecord {
    pub const ZERO: TraceRecord = TraceRecord {
        stamp_ns: 0,
        reached: 0,
        verdict: 0,
        reason: 0,
        action: 0,
        ingress_ifindex: 0,
        port_vpc: 0,
        port_route_table: 0,
        port_acl: 0,
        port_sg: 0,
        is_v4: 0,
        proto: 0,
        ttl: 0,
        ports_known: 0,
        sport: 0,
        dport: 0,
        src: [0; 16],
        dst: [0; 16],
        route_kind: 0,
        route_target: 0,
        peering_slot: 0,
        peering_status: 0,
        peering_dir: 0,
        peer_vpc: 0,
        egress_acl_set: 0,
        egress_acl: 0,
        ingress_acl_set: 0,
        ingress_acl: 0,
        ep_ifindex: 0,
        ep_route_table: 0,
        ep_sg: 0,
        return_kind: 0,
        return_target: 0,
        sg_conntrack: 0,
        sg_egress: 0,
        sg_ingress: 0,
        cap_index: 0,
        cap: crate::cap::UNCAPPED,
        cap_tat_ns: 0,
        cap_cost_ns: 0,
        cap_conforms: 0,
        overlay_host: 0,
        overlay_vni: 0,
        overlay_src_vni: 0,
        overlay_key: 0,
        overlay_peer: [0; 16],
        overlay_mtu: 0,
        overlay_fib: 0,
        // Not a flow whose decision can be kept, unless the parse stage says so.
        flow_slot: NO_FLOW_SLOT,
        epoch: 0,
        flow_cache_on: 0,
        flow_key: FlowKey::ZERO,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_decisions_read_back() {
        assert!(acl_allows(ACL_ABSENT));
        assert!(!acl_allows(ACL_NO_RULE));
        assert!(acl_allows(3 | ACL_ALLOWS));
        assert!(!acl_allows(3));
        assert_eq!(acl_rule_bit(3 | ACL_ALLOWS), Some(3));
        assert_eq!(acl_rule_bit(0), Some(0));
        assert_eq!(acl_rule_bit(ACL_NO_RULE), None);
        assert_eq!(acl_rule_bit(ACL_ABSENT), None);
    }
}

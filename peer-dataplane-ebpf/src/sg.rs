//! Security-group stage (docs/datapath.md §4.12): stateful, allow-only. A port's groups
//! arrive compiled into one ACL set per direction whose rules all allow, so "some rule of
//! some group matches" is the ACL lookup's "a rule matched".
//!
//! Both ports' groups are checked in one place, once the packet has passed everything
//! else that is policy (routes on both sides, both network ACLs): a packet of a tracked
//! flow skips the rules of both; any other packet needs the sender's egress rules and the
//! receiver's ingress rules, and if it gets both, its flow is tracked from then on.

use crate::{
    acl,
    conntrack::{self, How},
    parse::Packet,
    trace,
};
use peer_dataplane_common::{
    acl::NO_ACL,
    trace::{CT_NEW, CT_ORIGINAL, CT_REPLY, CT_UNTRACKABLE, SG_MATCH, SG_NO_GROUPS, SG_NO_MATCH},
};

pub use crate::groups::{DENIED, NO_GROUPS, RULES_ONLY, TRACKED, TRACKED_REPLY};

/// Returns one of the five above (a plain number: a BPF-to-BPF call has five argument
/// registers and no room to return a `Result` through memory).
///
/// Not inlined (a BPF-to-BPF call): the conntrack outcomes branch many ways, and across a
/// call they meet again at the return instead of multiplying the verifier's paths through
/// every later stage. When tracing (`T`), the conntrack table is only read. Unless
/// tracing, how an allowed packet passed is also noted for the flow cache (whether its
/// decision may be kept, and relies on conntrack).
#[inline(never)]
pub fn check<const T: bool>(
    sender_sg: u32,
    receiver_sg: u32,
    src_vpc: u32,
    dst_vpc: u32,
    p: &Packet,
) -> u32 {
    let groups = decide::<T>(sender_sg, receiver_sg, src_vpc, dst_vpc, p);
    if !T && groups != DENIED {
        crate::flowcache::note_groups(groups);
    }
    groups
}

#[inline(always)]
fn decide<const T: bool>(
    sender_sg: u32,
    receiver_sg: u32,
    src_vpc: u32,
    dst_vpc: u32,
    p: &Packet,
) -> u32 {
    if sender_sg == NO_ACL && receiver_sg == NO_ACL {
        trace::note::<T>(|r| {
            r.sg_egress = SG_NO_GROUPS;
            r.sg_ingress = SG_NO_GROUPS;
        });
        return NO_GROUPS;
    }
    let now = crate::clock::now();
    let t = conntrack::lookup(src_vpc, dst_vpc, p, now);
    trace::note::<T>(|r| {
        r.sg_conntrack = match t.how {
            How::Untrackable => CT_UNTRACKABLE,
            How::New => CT_NEW,
            How::Original => CT_ORIGINAL,
            How::Reply => CT_REPLY,
        }
    });
    if t.how == How::Original || t.how == How::Reply {
        if !T {
            conntrack::refresh(&t, p, now);
        }
        return if t.how == How::Reply {
            TRACKED_REPLY
        } else {
            TRACKED
        };
    }
    let egress_ok = sender_sg == NO_ACL || acl::any_match(sender_sg, &p.dst, p);
    trace::note::<T>(|r| r.sg_egress = rules(sender_sg, egress_ok));
    if !egress_ok {
        return DENIED;
    }
    let ingress_ok = receiver_sg == NO_ACL || acl::any_match(receiver_sg, &p.src, p);
    trace::note::<T>(|r| r.sg_ingress = rules(receiver_sg, ingress_ok));
    if !ingress_ok {
        return DENIED;
    }
    if !T {
        conntrack::open(&t, p, now);
    }
    if t.opens_flow() {
        TRACKED
    } else {
        RULES_ONLY
    }
}

/// A trace's account of one port's groups.
#[inline(always)]
fn rules(set: u32, matched: bool) -> u32 {
    if set == NO_ACL {
        SG_NO_GROUPS
    } else if matched {
        SG_MATCH
    } else {
        SG_NO_MATCH
    }
}

//! Network ACL stage (docs/datapath.md §4.8), and the rule lookup security groups share: stateless, numbered rules, first match decides,
//! implicit final deny. The rules arrive compiled into three lookups whose rule bitmaps
//! are ANDed (see `peer_dataplane_common::acl`), so the cost does not depend on how many
//! rules the ACL holds. Bitmaps are read in place from the maps: at 128 bytes each they
//! would not fit the stack.

use crate::maps::{ACL_ADDR, ACL_EXACT, ACL_HITS, ACL_META, ACL_PORT, ACL_PROTO};
use crate::parse::{Packet, IPPROTO_TCP, IPPROTO_UDP};
use crate::words;
use aya_ebpf::maps::lpm_trie::Key;
use peer_dataplane_common::{
    acl::{
        acl_addr_table, bit_set, first_match, AclBits, AclExactKey, AclMeta, AclPortData,
        AclProtoKey, ACL_WORDS, NO_ACL, NO_HITS,
    },
    trace::{ACL_ABSENT, ACL_ALLOWS, ACL_NO_RULE},
    RouteData, ROUTE_TABLE_BITS,
};

/// Network ACL check of `p` against set `set`: the lowest matching rule decides, and
/// (unless tracing) its hit is counted. Returns the decision as one word (see
/// `peer_dataplane_common::trace::acl_allows`): a register, not a struct in memory.
///
/// Not inlined: a BPF-to-BPF call. Inlined, the verifier would carry each of the sixteen
/// ways `first_match` can end into every later stage, and the four ACL and SG checks would
/// multiply them past its limit; across a call the paths meet again at the return. The
/// lookup keys also live in this function's frame, reused by every call.
#[inline(never)]
pub fn check<const T: bool>(set: u32, addr: &[u8; 16], p: &Packet) -> u32 {
    if set == NO_ACL {
        return ACL_ABSENT;
    }
    let Some((meta, a, b, c)) = bitmaps(set, addr, p) else {
        return ACL_NO_RULE;
    };
    let Some(bit) = first_match(a, b, c) else {
        return ACL_NO_RULE;
    };
    if bit >= meta.rules {
        return ACL_NO_RULE;
    }
    if !T && meta.hit_base != NO_HITS {
        let slot = meta.hit_base + bit;
        if let Some(hits) = ACL_HITS.get_ptr_mut(slot) {
            // SAFETY: this CPU's slot.
            unsafe { *hits += 1 };
        }
        crate::flowcache::note_acl_hit(slot);
    }
    if bit_set(&meta.allow, bit) {
        bit | ACL_ALLOWS
    } else {
        bit
    }
}

/// Whether any rule of allow-only set `set` (a port's security groups) matches `p`. No
/// rule order to respect, so the AND is folded without branches: the verifier walks one
/// path instead of one per bitmap word. Not inlined, as [`check`].
#[inline(never)]
pub fn any_match(set: u32, addr: &[u8; 16], p: &Packet) -> bool {
    let Some((_, a, b, c)) = bitmaps(set, addr, p) else {
        return false;
    };
    let mut any = 0u64;
    for i in 0..ACL_WORDS {
        any |= a.w[i] & b.w[i] & c.w[i];
    }
    any != 0
}

/// The set's metadata and the three rule bitmaps `p` selects, matching `addr` (the remote
/// side: destination for egress, source for ingress). `None` when a lookup finds nothing,
/// which leaves no rule that could match.
#[inline(always)]
fn bitmaps(
    set: u32,
    addr: &[u8; 16],
    p: &Packet,
) -> Option<(
    &'static AclMeta,
    &'static AclBits,
    &'static AclBits,
    &'static AclBits,
)> {
    // A set the agent has not installed fails closed.
    let meta = unsafe { ACL_META.get(&set) }?;
    // IPv4 and IPv6 rules live under different tables, so neither covers the other.
    let table = acl_addr_table(set, !p.is_v4);
    // SAFETY: map values are only ever replaced whole (not preallocated).
    let addr_bits = match unsafe { ACL_EXACT.get(&AclExactKey::host(table, words::copy(addr))) } {
        Some(b) => b,
        None => {
            let addr_key = Key::new(
                ROUTE_TABLE_BITS + 128,
                RouteData {
                    table_be: table.to_be_bytes(),
                    addr: words::copy(addr),
                },
            );
            ACL_ADDR.get(&addr_key)?
        }
    };
    let proto_key = AclProtoKey {
        set,
        protocol: p.proto as u32,
    };
    let proto_bits = unsafe { ACL_PROTO.get(&proto_key) }.unwrap_or(&meta.any_protocol);
    let port_bits = if p.ports_known && (p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP) {
        // SAFETY: as above.
        match unsafe { ACL_EXACT.get(&AclExactKey::port(set, p.dport)) } {
            Some(b) => b,
            None => {
                let port_key = Key::new(
                    ROUTE_TABLE_BITS + 16,
                    AclPortData {
                        set_be: set.to_be_bytes(),
                        port_be: p.dport.to_be_bytes(),
                    },
                );
                ACL_PORT.get(&port_key)?
            }
        }
    } else {
        &meta.portless
    };
    Some((meta, addr_bits, proto_bits, port_bits))
}

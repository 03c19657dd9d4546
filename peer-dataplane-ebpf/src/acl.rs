//! Network ACL stage (SPEC §3.6; issue 4): stateless, numbered rules, first match decides,
//! implicit final deny. The rules arrive compiled into three lookups whose rule bitmaps
//! are ANDed (see `peer_dataplane_common::acl`), so the cost does not depend on how many
//! rules the ACL holds. Bitmaps are read in place from the maps: at 128 bytes each they
//! would not fit the stack.

use crate::maps::{ACL_ADDR, ACL_HITS, ACL_META, ACL_PORT, ACL_PROTO};
use crate::parse::{Packet, IPPROTO_TCP, IPPROTO_UDP};
use aya_ebpf::maps::lpm_trie::Key;
use peer_dataplane_common::{
    acl::{acl_addr_table, bit_set, first_match, AclPortData, AclProtoKey, NO_ACL},
    DropReason, RouteData, ROUTE_TABLE_BITS,
};

/// Checks `p` against ACL set `set`, matching `addr` (the remote side: destination for
/// egress, source for ingress). Counts the deciding rule's hit.
#[inline(always)]
pub fn check(set: u32, addr: &[u8; 16], p: &Packet) -> Result<(), DropReason> {
    if set == NO_ACL {
        return Ok(());
    }
    // A set the agent has not installed fails closed.
    let Some(meta) = (unsafe { ACL_META.get(&set) }) else {
        return Err(DropReason::NaclDeny);
    };
    // IPv4 and IPv6 rules live under different tables, so neither covers the other.
    let table = acl_addr_table(set, !p.is_v4);
    let addr_key = Key::new(
        ROUTE_TABLE_BITS + 128,
        RouteData {
            table_be: table.to_be_bytes(),
            addr: *addr,
        },
    );
    // No entry for the address: no rule covers it, so only the final deny is left.
    let Some(addr_bits) = ACL_ADDR.get(&addr_key) else {
        return Err(DropReason::NaclDeny);
    };
    let proto_key = AclProtoKey {
        set,
        protocol: p.proto as u32,
    };
    let proto_bits = unsafe { ACL_PROTO.get(&proto_key) }.unwrap_or(&meta.any_protocol);
    let port_bits = if p.ports_known && (p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP) {
        let port_key = Key::new(
            ROUTE_TABLE_BITS + 16,
            AclPortData {
                set_be: set.to_be_bytes(),
                port_be: p.dport.to_be_bytes(),
            },
        );
        match ACL_PORT.get(&port_key) {
            Some(b) => b,
            None => return Err(DropReason::NaclDeny),
        }
    } else {
        &meta.portless
    };
    let Some(bit) = first_match(addr_bits, proto_bits, port_bits) else {
        return Err(DropReason::NaclDeny);
    };
    if bit >= meta.rules {
        return Err(DropReason::NaclDeny);
    }
    if let Some(hits) = ACL_HITS.get_ptr_mut(meta.hit_base + bit) {
        // SAFETY: this CPU's slot.
        unsafe { *hits += 1 };
    }
    if bit_set(&meta.allow, bit) {
        Ok(())
    } else {
        Err(DropReason::NaclDeny)
    }
}

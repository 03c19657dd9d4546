//! Facts a trace looks up in the installed state: the route that matched, a route's
//! target, a network ACL's deciding rule, a security-group result.

use crate::maps::MapState;
use crate::views::installed::EGRESS;
use crate::views::Names;
use peer_dataplane_common::{
    acl::{acl_set_id, bit_set, NO_ACL, NO_HITS},
    addr,
    trace::*,
    NAME_ACL, NAME_ACL_RULE, NAME_PEERING, ROUTE_BLACKHOLE, ROUTE_LOCAL, ROUTE_PCX,
    ROUTE_TABLE_BITS,
};
use serde_json::{json, Value};

/// The installed route of table key `table` that covers `a` with the longest prefix.
pub(super) fn matched_route(state: &MapState, table: u32, a: &[u8; 16]) -> Option<String> {
    state
        .routes
        .keys()
        .filter(|k| u32::from_be_bytes(k.data.table_be) == table)
        .filter(|k| addr::mask(a, k.prefix_len - ROUTE_TABLE_BITS) == k.data.addr)
        .max_by_key(|k| k.prefix_len)
        .map(|k| crate::views::installed::route_prefix(&k.data.addr, k.prefix_len))
}

pub(super) fn route_target(state: &MapState, kind: u32, target: u32) -> String {
    match kind {
        ROUTE_PCX => Names(state).get(NAME_PEERING, target),
        ROUTE_LOCAL => "local".into(),
        ROUTE_BLACKHOLE => "blackhole".into(),
        _ => format!("kind {kind}"),
    }
}

/// One network ACL stage: which ACL, which rule decided and how.
pub(super) fn acl_stage(
    state: &MapState,
    set: u32,
    decision: u32,
    direction: &str,
) -> (String, Value) {
    if decision == ACL_ABSENT || set == NO_ACL {
        return (
            format!(
                "the {} subnet has no network ACL",
                if direction == EGRESS {
                    "sender's"
                } else {
                    "receiver's"
                }
            ),
            json!({"acl": null, "direction": direction, "rule": null, "action": "allow"}),
        );
    }
    let acl = Names(state).get(NAME_ACL, acl_set_id(set));
    match acl_rule_bit(decision) {
        None => (
            format!("{acl} {direction}: no rule matches (the implicit deny)"),
            json!({"acl": acl, "direction": direction, "rule": null, "action": "deny"}),
        ),
        Some(bit) => {
            let rule = state
                .acl_meta
                .get(&set)
                .filter(|m| m.hit_base != NO_HITS)
                .and_then(|m| {
                    debug_assert_eq!(bit_set(&m.allow, bit), acl_allows(decision));
                    Names(state)
                        .get(NAME_ACL_RULE, m.hit_base + bit)
                        .parse::<u32>()
                        .ok()
                });
            let action = if acl_allows(decision) {
                "allow"
            } else {
                "deny"
            };
            let rule_text = rule
                .map(|r| r.to_string())
                .unwrap_or_else(|| format!("bit {bit}"));
            (
                format!("{acl} {direction} rule {rule_text}: {action}"),
                json!({"acl": acl, "direction": direction, "rule": rule, "action": action}),
            )
        }
    }
}

pub(super) fn sg_result(r: u32) -> &'static str {
    match r {
        SG_NO_GROUPS => "no groups",
        SG_MATCH => "a rule allows it",
        SG_NO_MATCH => "no rule allows it",
        _ => "not checked",
    }
}

pub(super) fn sg_fact(r: u32) -> &'static str {
    match r {
        SG_NO_GROUPS => "no-groups",
        SG_MATCH => "allow",
        SG_NO_MATCH => "deny",
        _ => "not-checked",
    }
}

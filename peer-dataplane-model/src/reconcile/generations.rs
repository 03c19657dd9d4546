//! Table and ACL generations: which installed objects are rewritten in place and which go
//! to their other generation, so that a packet sees a change whole (docs/datapath.md §3.8).
//! Pure: planned against an in-memory [`MapState`].

use super::plan::plan;
use crate::desired::compile::HitSlots;
use crate::desired::compile::{compile_reusing, IfindexResolver};
use crate::desired::ids::Ids;
use crate::desired::validate::Topology;
use crate::maps::{stored, AclPortKey, MapState, Op, RouteKey};
use anyhow::anyhow;
use anyhow::Result;
use peer_dataplane_common::acl::{
    acl_addr_table, acl_addr_table_set, acl_set, acl_set_generation, acl_set_id, acl_set_is_egress,
    AclBits, AclExactKey, AclMeta, AclPortData, AclProtoKey, ACL_HIT_SLOTS, EXACT_HOST, NO_ACL,
    NO_HITS,
};
use peer_dataplane_common::{
    route_table_generation, route_table_id, route_table_key, NameKey, RouteData, NAME_ACL,
    NAME_ACL_RULE, NAME_PEERING, NAME_ROUTE_TABLE, VPC_TABLE_BASE,
};
use std::collections::{BTreeMap, BTreeSet};

/// The trie key (table id and generation) route table `name` is installed under.
pub fn route_table_key_of(ids: &Ids, installed: &MapState, name: &str) -> Option<u32> {
    let id = ids.get(NAME_ROUTE_TABLE, name)?;
    let generation = current_generations(installed).get(&id).copied()?;
    Some(route_table_key(id, generation))
}

/// The per-CPU hit counter slot of network ACL `acl`'s rule `number` in one direction,
/// as installed for `topo`.
pub fn acl_hit_slot(
    ids: &Ids,
    installed: &MapState,
    topo: &Topology,
    acl: &str,
    egress: bool,
    number: u32,
) -> Option<u32> {
    let a = topo.network_acls.get(acl)?;
    let mut numbers: Vec<u32> = if egress { &a.egress } else { &a.ingress }
        .iter()
        .map(|r| r.number)
        .collect();
    numbers.sort();
    let index = numbers.iter().position(|n| *n == number)? as u32;
    let id = ids.get(NAME_ACL, acl)?;
    let generation = current_acl_generations(installed).get(&id).copied()?;
    let meta = installed.acl_meta.get(&acl_set(id, generation, egress))?;
    Some(meta.hit_base + index)
}

/// The one in-place write that sets route `dest` of table `table` to `target` (`None`:
/// removes it) in the generation the table is installed in: what a change of a single
/// route takes (each write is atomic, so no generation flip is needed). `None` if the
/// table is not installed as `topo` describes it; the caller then installs the whole
/// state instead. Costs a few lookups, whatever the table's size.
pub fn route_write(
    ids: &Ids,
    installed: &MapState,
    topo: &Topology,
    table: &str,
    dest: &ipnet::IpNet,
    target: Option<&crate::desired::validate::Target>,
) -> Option<Op> {
    let id = ids.get(NAME_ROUTE_TABLE, table)?;
    let t = topo.route_tables.get(table)?;
    // Every table holds its VPC's own CIDRs as local routes: the generation that has the
    // first of them is the one installed.
    let own = topo.vpcs.get(&t.vpc)?.cidrs.first()?;
    let generation = [0, 1].into_iter().find(|g| {
        installed
            .routes
            .contains_key(&crate::desired::compile::key_for(
                route_table_key(id, *g),
                own,
            ))
    })?;
    let key = crate::desired::compile::key_for(route_table_key(id, generation), dest);
    Some(match target {
        Some(target) => Op::put::<stored::Routes>(
            key,
            crate::desired::compile::route_value(target, |p| ids.get(NAME_PEERING, p))?,
        ),
        None => Op::del::<stored::Routes>(key),
    })
}

/// What installing `topo` over `installed` takes: the desired map contents, the ids, and
/// the ordered writes. Pure: unit-testable against an in-memory [`MapState`].
pub fn plan_install(
    topo: &Topology,
    ids: &Ids,
    installed: &MapState,
    ifindex: &dyn IfindexResolver,
) -> Result<(MapState, Ids, Vec<Op>)> {
    plan_install_reusing(topo, ids, installed, None, ifindex)
}

/// [`plan_install`] where `installed` was compiled from topology `before` (with `ids`): the
/// route tables `topo` shares with `before` are taken as installed (see
/// `compile_reusing`), so a change that touches no route costs nothing per route.
pub fn plan_install_reusing(
    topo: &Topology,
    ids: &Ids,
    installed: &MapState,
    before: Option<&Topology>,
    ifindex: &dyn IfindexResolver,
) -> Result<(MapState, Ids, Vec<Op>)> {
    let tables = current_generations(installed);
    let acls = current_acl_generations(installed);
    let table_same = |t: u32| tables.get(&t).copied().unwrap_or(0);
    let acl_same = |a: u32| acls.get(&a).copied().unwrap_or(0);
    // Compiled once, every table and ACL in the generation it is installed in; the ones
    // whose change must be seen whole then move to their other generation.
    let (in_place, in_place_ids) = compile_reusing(
        topo,
        ids,
        ifindex,
        &table_same,
        &acl_same,
        installed,
        before,
    )?;
    let flip_tables = tables_with_several_changes(&in_place, installed, &tables);
    // An ACL is a whole: any change to an installed one goes to its other generation.
    let flip_acls: BTreeSet<u32> = acls
        .iter()
        .filter(|(a, g)| acl_view(&in_place, **a, **g) != acl_view(installed, **a, **g))
        .map(|(a, _)| *a)
        .collect();
    let (mut desired, new_ids) = (in_place, in_place_ids);
    if !flip_tables.is_empty() || !flip_acls.is_empty() {
        flip(&mut desired, &flip_tables, &flip_acls, installed)?;
    }
    let new_slots = new_ids.new_since(ids, NAME_PEERING);
    let ops = plan(&desired, installed, &new_slots);
    Ok((desired, new_ids, ops))
}

/// Moves route tables `tables` and ACLs `acls` (ids) of compiled state `s` to their other
/// generation: their entries' keys and every port's and endpoint's reference to them.
/// A network ACL set whose hit counters are the installed set's (same range) gets a range
/// of its own: the installed set keeps counting until it is removed.
fn flip(
    s: &mut MapState,
    tables: &BTreeSet<u32>,
    acls: &BTreeSet<u32>,
    installed: &MapState,
) -> Result<()> {
    let table = |key: u32| match key < VPC_TABLE_BASE && tables.contains(&route_table_id(key)) {
        true => route_table_key(route_table_id(key), 1 - route_table_generation(key)),
        false => key,
    };
    let set = |set: u32| match set != NO_ACL && acls.contains(&acl_set_id(set)) {
        true => acl_set(
            acl_set_id(set),
            1 - acl_set_generation(set),
            acl_set_is_egress(set),
        ),
        false => set,
    };
    let addr_table = |t: u32| acl_addr_table(set(acl_addr_table_set(t)), t & 1 == 1);

    let moved: Vec<u32> = s.routes.table_ids().filter(|t| table(*t) != *t).collect();
    for from in moved {
        let to = table(from);
        let entries = s.routes.table(from).expect("listed").iter();
        let entries = entries
            .map(|(k, v)| {
                let data = RouteData {
                    table_be: to.to_be_bytes(),
                    ..k.data
                };
                (RouteKey { data, ..*k }, *v)
            })
            .collect();
        s.routes.set_table(from, Default::default());
        s.routes.set_table(to, std::sync::Arc::new(entries));
    }
    s.acl_addr = rekey(&s.acl_addr, |k| RouteKey {
        data: RouteData {
            table_be: addr_table(u32::from_be_bytes(k.data.table_be)).to_be_bytes(),
            ..k.data
        },
        ..k
    });
    s.acl_port = rekey(&s.acl_port, |k| AclPortKey {
        data: AclPortData {
            set_be: set(u32::from_be_bytes(k.data.set_be)).to_be_bytes(),
            ..k.data
        },
        ..k
    });
    s.acl_proto = rekey(&s.acl_proto, |k| AclProtoKey {
        set: set(k.set),
        ..k
    });
    s.acl_exact = rekey(&s.acl_exact, |k| AclExactKey {
        table: match k.kind {
            EXACT_HOST => addr_table(k.table),
            _ => set(k.table),
        },
        ..k
    });
    s.acl_meta = rekey(&s.acl_meta, set);
    for p in s.ports.values_mut() {
        (p.route_table, p.acl, p.sg) = (table(p.route_table), set(p.acl), set(p.sg));
    }
    for e in s.endpoints.values_mut() {
        (e.route_table, e.acl, e.sg) = (table(e.route_table), set(e.acl), set(e.sg));
    }
    own_hit_ranges(s, acls, installed)
}

/// Gives each flipped network ACL set whose hit counter range overlaps an installed set's
/// a free range, and moves its rule names (named by counter slot) along.
fn own_hit_ranges(s: &mut MapState, acls: &BTreeSet<u32>, installed: &MapState) -> Result<()> {
    let counts = |m: &AclMeta| m.hit_base != NO_HITS && m.rules > 0;
    let overlaps_installed = |m: &AclMeta| {
        installed
            .acl_meta
            .values()
            .filter(|i| counts(i))
            .any(|i| m.hit_base < i.hit_base + i.rules && i.hit_base < m.hit_base + m.rules)
    };
    // Installed ranges are taken from the start; a range no installed set uses is taken
    // as it is; a flipped set on an installed range moves.
    let mut slots = HitSlots::new(installed);
    let mut moving = Vec::new();
    for (set, m) in s.acl_meta.iter().filter(|(_, m)| counts(m)) {
        if !overlaps_installed(m) {
            slots.take(m.hit_base, m.rules);
        } else if acls.contains(&acl_set_id(*set)) {
            moving.push(*set);
        }
    }
    for set in moving {
        let meta = s.acl_meta.get_mut(&set).expect("listed");
        let (old, rules) = (meta.hit_base, meta.rules);
        let new = slots.assign(set, rules).ok_or_else(|| {
            anyhow!(
                "network acls: no room for {rules} more rule hit counters \
                 ({ACL_HIT_SLOTS} in all, {} in use)",
                slots.in_use()
            )
        })?;
        meta.hit_base = new;
        for i in 0..rules {
            let name = |id| NameKey {
                kind: NAME_ACL_RULE,
                id,
            };
            if let Some(n) = s.names.remove(&name(old + i)) {
                s.names.insert(name(new + i), n);
            }
        }
    }
    Ok(())
}

/// `m` with every key `k` replaced by `f(k)`.
fn rekey<K: Ord + Copy, V: Copy>(m: &BTreeMap<K, V>, f: impl Fn(K) -> K) -> BTreeMap<K, V> {
    m.iter().map(|(k, v)| (f(*k), *v)).collect()
}

/// ACL id -> generation in use, read off the installed sets.
fn current_acl_generations(m: &MapState) -> BTreeMap<u32, u32> {
    m.acl_meta
        .keys()
        .map(|set| (acl_set_id(*set), acl_set_generation(*set)))
        .collect()
}

/// Everything installed for ACL `acl` in generation `generation` (both directions), with
/// hit counter bases left out: they move when other ACLs change size.
type AclView = (
    Vec<(RouteKey, AclBits)>,
    Vec<(AclPortKey, AclBits)>,
    Vec<(AclProtoKey, AclBits)>,
    Vec<(AclExactKey, AclBits)>,
    Vec<(u32, AclBits, AclBits, AclBits, u32)>,
);

fn acl_view(m: &MapState, acl: u32, generation: u32) -> AclView {
    let sets = [
        acl_set(acl, generation, false),
        acl_set(acl, generation, true),
    ];
    let of_set = |be: [u8; 4]| sets.contains(&u32::from_be_bytes(be));
    (
        m.acl_addr
            .iter()
            // Address keys hold the set shifted left by the family bit.
            .filter(|(k, _)| {
                sets.contains(&acl_addr_table_set(u32::from_be_bytes(k.data.table_be)))
            })
            .map(|(k, v)| (*k, *v))
            .collect(),
        m.acl_port
            .iter()
            .filter(|(k, _)| of_set(k.data.set_be))
            .map(|(k, v)| (*k, *v))
            .collect(),
        m.acl_proto
            .iter()
            .filter(|(k, _)| sets.contains(&k.set))
            .map(|(k, v)| (*k, *v))
            .collect(),
        m.acl_exact
            .iter()
            .filter(|(k, _)| match k.kind {
                peer_dataplane_common::acl::EXACT_HOST => {
                    sets.contains(&acl_addr_table_set(k.table))
                }
                _ => sets.contains(&k.table),
            })
            .map(|(k, v)| (*k, *v))
            .collect(),
        m.acl_meta
            .iter()
            .filter(|(k, _)| sets.contains(k))
            .map(|(k, v)| (*k, v.allow, v.any_protocol, v.portless, v.rules))
            .collect(),
    )
}

/// Route table id -> generation in use, read off the installed routes (after a complete
/// apply, all routes of a table live in one generation).
fn current_generations(m: &MapState) -> BTreeMap<u32, u32> {
    m.routes
        .table_ids()
        .filter(|t| *t < VPC_TABLE_BASE)
        .map(|key| (route_table_id(key), route_table_generation(key)))
        .collect()
}

/// Tables (ids) that exist now and whose routes would change in more than one entry.
fn tables_with_several_changes(
    desired: &MapState,
    current: &MapState,
    installed: &BTreeMap<u32, u32>,
) -> BTreeSet<u32> {
    let mut changes: BTreeMap<u32, usize> = BTreeMap::new();
    let (puts, dels) = desired.routes.diff(&current.routes);
    for k in puts.iter().map(|(k, _)| k).chain(dels.iter()) {
        *changes.entry(crate::maps::table_of(k)).or_default() += 1;
    }
    changes
        .into_iter()
        .filter(|(key, n)| {
            *key < VPC_TABLE_BASE && *n > 1 && installed.contains_key(&route_table_id(*key))
        })
        .map(|(key, _)| route_table_id(key))
        .collect()
}

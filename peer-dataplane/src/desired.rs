//! Compiles a validated [`Topology`] into the exact contents every map should have.

use crate::ids::Ids;
use crate::maps::{AclPortKey, MapState, RouteKey};
use crate::validate::{Target, Topology};
use anyhow::{anyhow, Result};
use ipnet::IpNet;
use peer_dataplane_common::acl::{
    acl_addr_table, acl_set, AclBits, AclMeta, AclPortData, AclProtoKey, ACL_HIT_SLOTS, NO_ACL,
};
use peer_dataplane_common::{
    addr, route_key, route_table_key, vpc_table, Endpoint, EndpointKey, Name, NameKey, Peering,
    Port, RouteValue, ENDPOINT_LOCAL, NAME_ACL, NAME_PEERING, NAME_PORT, NAME_ROUTE_TABLE,
    NAME_SUBNET, NAME_VPC, PORT_HAS_IPV4, PORT_HAS_IPV6, ROUTE_BLACKHOLE, ROUTE_LOCAL, ROUTE_PCX,
    ROUTE_TABLE_BITS, ROUTE_VPC_CIDR,
};
use std::collections::{BTreeMap, BTreeSet};

/// Turns an interface name into its ifindex (the kernel's, or a fake one in unit tests).
pub trait IfindexResolver {
    fn ifindex(&self, name: &str) -> Option<u32>;
}

/// The kernel's view, in the agent's network namespace.
pub struct KernelIfindex;

impl IfindexResolver for KernelIfindex {
    fn ifindex(&self, name: &str) -> Option<u32> {
        let c = std::ffi::CString::new(name).ok()?;
        // SAFETY: `c` is a valid NUL-terminated string.
        let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
        (idx != 0).then_some(idx)
    }
}

pub fn net_addr(net: &IpNet) -> ([u8; 16], u32, bool) {
    match net {
        IpNet::V4(n) => (
            addr::from_v4(n.network().octets()),
            n.prefix_len() as u32,
            true,
        ),
        IpNet::V6(n) => (n.network().octets(), n.prefix_len() as u32, false),
    }
}

pub fn key_for(table: u32, net: &IpNet) -> RouteKey {
    let (a, plen, v4) = net_addr(net);
    let (prefix_len, data) = route_key(table, &a, plen, v4);
    RouteKey { prefix_len, data }
}

/// Names each object needs an id for.
fn wanted_names(t: &Topology) -> BTreeMap<u32, BTreeSet<String>> {
    BTreeMap::from([
        (NAME_VPC, t.vpcs.keys().cloned().collect()),
        (NAME_SUBNET, t.subnets.keys().cloned().collect()),
        (NAME_ROUTE_TABLE, t.route_tables.keys().cloned().collect()),
        (NAME_PEERING, t.peerings.keys().cloned().collect()),
        (NAME_ACL, t.network_acls.keys().cloned().collect()),
    ])
}

/// Which generation of each route table (by id) to compile into; see
/// [`peer_dataplane_common::route_table_key`].
pub type Generations<'a> = &'a dyn Fn(u32) -> u32;

/// The full desired map contents for `t`, with ids assigned on top of `ids` and each route
/// table in the generation `generation` picks for it.
pub fn compile(
    t: &Topology,
    ids: &Ids,
    ifindex: &dyn IfindexResolver,
    generation: Generations,
    acl_generation: Generations,
) -> Result<(MapState, Ids)> {
    let ids = ids.assign(&wanted_names(t))?;
    let id = |kind: u32, name: &str| ids.get(kind, name).expect("every validated name has an id");
    let mut s = MapState::default();

    for pcx in t.peerings.values() {
        s.peerings.insert(
            id(NAME_PEERING, &pcx.id),
            Peering {
                status: pcx.status.code(),
                requester_vpc: id(NAME_VPC, &pcx.requester_vpc),
                accepter_vpc: id(NAME_VPC, &pcx.accepter_vpc),
                flags: 0,
            },
        );
    }

    for vpc in t.vpcs.values() {
        let vpc_id = id(NAME_VPC, &vpc.id);
        for cidr in &vpc.cidrs {
            s.routes.insert(
                key_for(vpc_table(vpc_id), cidr),
                RouteValue {
                    kind: ROUTE_VPC_CIDR,
                    target: vpc_id,
                },
            );
        }
    }
    for rt in t.route_tables.values() {
        let table_id = id(NAME_ROUTE_TABLE, &rt.id);
        let table = route_table_key(table_id, generation(table_id));
        for (dest, target) in &rt.routes {
            let value = match target {
                Target::Local => RouteValue {
                    kind: ROUTE_LOCAL,
                    target: 0,
                },
                Target::Blackhole => RouteValue {
                    kind: ROUTE_BLACKHOLE,
                    target: 0,
                },
                Target::Peering(pcx) => RouteValue {
                    kind: ROUTE_PCX,
                    target: id(NAME_PEERING, pcx),
                },
            };
            s.routes.insert(key_for(table, dest), value);
        }
    }

    // Network ACL sets, hit counter slots packed in id order.
    let mut hit_base = 0u32;
    for a in t.network_acls.values() {
        let acl_id = id(NAME_ACL, &a.id);
        let acl_gen = acl_generation(acl_id);
        for (egress, rules) in [(false, &a.ingress), (true, &a.egress)] {
            let c = crate::acl::compile(rules).map_err(|e| anyhow!("network acl {}: {e}", a.id))?;
            let set = acl_set(acl_id, acl_gen, egress);
            let bits = |b: &crate::acl::Bitmap| AclBits { w: *b };
            for (net, b) in &c.addresses {
                let table = acl_addr_table(set, matches!(net, IpNet::V6(_)));
                s.acl_addr.insert(key_for(table, net), bits(b));
            }
            for ((port, len), b) in &c.ports {
                let data = AclPortData {
                    set_be: set.to_be_bytes(),
                    port_be: port.to_be_bytes(),
                };
                s.acl_port.insert(
                    AclPortKey {
                        prefix_len: ROUTE_TABLE_BITS + *len as u32,
                        data,
                    },
                    bits(b),
                );
            }
            for (proto, b) in &c.protocols {
                s.acl_proto.insert(
                    AclProtoKey {
                        set,
                        protocol: *proto as u32,
                    },
                    bits(b),
                );
            }
            let rules = c.numbers.len() as u32;
            if hit_base + rules > ACL_HIT_SLOTS {
                return Err(anyhow!(
                    "network acls: more than {ACL_HIT_SLOTS} rules in all (at network acl {})",
                    a.id
                ));
            }
            s.acl_meta.insert(
                set,
                AclMeta {
                    allow: bits(&c.allow),
                    any_protocol: bits(&c.any_protocol),
                    portless: bits(&c.portless),
                    hit_base,
                    rules,
                },
            );
            hit_base += rules;
        }
    }
    let subnet_acl = |subnet: &str, egress: bool| match &t.subnets[subnet].network_acl {
        Some(a) => {
            let acl_id = id(NAME_ACL, a);
            acl_set(acl_id, acl_generation(acl_id), egress)
        }
        None => NO_ACL,
    };

    for port in t.ports.values() {
        let ifindex = ifindex.ifindex(&port.interface).ok_or_else(|| {
            anyhow!(
                "port {}: interface {} does not exist on this host",
                port.interface,
                port.interface
            )
        })?;
        let subnet = &t.subnets[&port.subnet];
        let vpc = id(NAME_VPC, &subnet.vpc);
        let subnet_id = id(NAME_SUBNET, &subnet.id);
        let table_id = id(NAME_ROUTE_TABLE, &subnet.route_table);
        let route_table = route_table_key(table_id, generation(table_id));
        let mut p = Port {
            vpc,
            subnet: subnet_id,
            route_table,
            mac: port.mac,
            gw_mac: port.gateway_mac,
            acl: subnet_acl(&subnet.id, true),
            ..Port::default()
        };
        let endpoint = Endpoint {
            ifindex,
            route_table,
            subnet: subnet_id,
            flags: ENDPOINT_LOCAL,
            mac: port.mac,
            gw_mac: port.gateway_mac,
            acl: subnet_acl(&subnet.id, false),
        };
        if let Some(a) = port.ipv4 {
            p.flags |= PORT_HAS_IPV4;
            p.ipv4 = addr::from_v4(a.octets());
            s.endpoints
                .insert(EndpointKey { vpc, addr: p.ipv4 }, endpoint);
        }
        if let Some(a) = port.ipv6 {
            p.flags |= PORT_HAS_IPV6;
            p.ipv6 = a.octets();
            s.endpoints
                .insert(EndpointKey { vpc, addr: p.ipv6 }, endpoint);
        }
        if s.ports.insert(ifindex, p).is_some() {
            return Err(anyhow!(
                "port {}: ifindex {ifindex} is used by another port",
                port.interface
            ));
        }
        s.devmap.insert(ifindex, ifindex);
        s.names.insert(
            NameKey {
                kind: NAME_PORT,
                id: ifindex,
            },
            Name::new(&port.interface),
        );
    }
    s.names.extend(ids.names());
    Ok((s, ids))
}

//! Compiles a validated [`Topology`] into the exact contents every map should have.

use crate::desired::ids::Ids;
use crate::desired::validate::{Cap, Target, Topology};
use crate::maps::{MapState, RouteKey};
use anyhow::{anyhow, Result};
use ipnet::IpNet;
use peer_dataplane_common::acl::{acl_set, ACL_HIT_SLOTS, NO_ACL, NO_HITS};
use peer_dataplane_common::cap::{CapConfig, UNCAPPED};
use peer_dataplane_common::overlay::{HostKey, OverlayConfig, OverlayIdKey, OVERLAY_ENABLED};
use peer_dataplane_common::{
    addr, route_key, route_table_key, vpc_table, Endpoint, EndpointKey, Name, NameKey, Peering,
    Port, RouteValue, ENDPOINT_LOCAL, ENDPOINT_REMOTE, NAME_ACL, NAME_ACL_RULE, NAME_HOST,
    NAME_PEERING, NAME_PORT, NAME_ROUTE_TABLE, NAME_SG_SET, NAME_SUBNET, NAME_VPC, PORT_HAS_IPV4,
    PORT_HAS_IPV6, ROUTE_BLACKHOLE, ROUTE_LOCAL, ROUTE_PCX, ROUTE_VPC_CIDR,
};
use std::collections::{BTreeMap, BTreeSet};

mod groups;
mod sets;

pub use groups::{sg_combinations, sg_set_name};
use groups::{sg_members, sg_rules};
use sets::insert_acl_set;
pub use sets::HitSlots;

/// Ports on interfaces that must not carry one (see [`IfindexResolver::refuse_port`]), each
/// named with why. Waiting would not change them: the agent refuses such a state, as it
/// refuses an invalid one, where it retries other failed installs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct PortsRefused(pub Vec<String>);

/// Turns an interface name into its ifindex (the kernel's, or a fake one in unit tests).
pub trait IfindexResolver {
    fn ifindex(&self, name: &str) -> Option<u32>;

    /// The interface's MTU; `None` if unknown (the overlay then assumes 1500).
    fn mtu(&self, _name: &str) -> Option<u32> {
        None
    }

    /// Why interface `name` must not carry an instance's port here (the loopback, a kind
    /// of interface the agent does not expect ports on); `None`: it may.
    fn refuse_port(&self, _name: &str) -> Option<String> {
        None
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
fn wanted_names(t: &Topology) -> BTreeMap<u32, BTreeSet<std::borrow::Cow<'_, str>>> {
    fn names<'a, V>(
        keys: std::collections::btree_map::Keys<'a, String, V>,
    ) -> BTreeSet<std::borrow::Cow<'a, str>> {
        keys.map(|k| std::borrow::Cow::Borrowed(k.as_str()))
            .collect()
    }
    BTreeMap::from([
        (NAME_VPC, names(t.vpcs.keys())),
        (NAME_SUBNET, names(t.subnets.keys())),
        (NAME_ROUTE_TABLE, names(t.route_tables.keys())),
        (NAME_PEERING, names(t.peerings.keys())),
        (NAME_ACL, names(t.network_acls.keys())),
        (
            NAME_SG_SET,
            sg_combinations(t)
                .into_keys()
                .map(std::borrow::Cow::Owned)
                .collect(),
        ),
        (NAME_HOST, names(t.hosts.keys())),
    ])
}

fn cap_config(cap: Option<Cap>) -> CapConfig {
    match cap {
        Some(c) => CapConfig::new(c.bits_per_second, c.burst_bytes),
        None => UNCAPPED,
    }
}

/// Which generation of each route table (by id) to compile into; see
/// [`peer_dataplane_common::route_table_key`].
pub type Generations<'a> = &'a dyn Fn(u32) -> u32;

/// A route's trie value; `None` if it leads to a peering without an id.
pub fn route_value(
    target: &Target,
    peering_id: impl Fn(&str) -> Option<u32>,
) -> Option<RouteValue> {
    let (kind, target) = match target {
        Target::Local => (ROUTE_LOCAL, 0),
        Target::Blackhole => (ROUTE_BLACKHOLE, 0),
        Target::Peering(pcx) => (ROUTE_PCX, peering_id(pcx)?),
    };
    Some(RouteValue { kind, target })
}

/// The full desired map contents for `t`, with ids assigned on top of `ids` and each route
/// table in the generation `generation` picks for it, onto an empty data plane.
pub fn compile(
    t: &Topology,
    ids: &Ids,
    ifindex: &dyn IfindexResolver,
    generation: Generations,
    acl_generation: Generations,
) -> Result<(MapState, Ids)> {
    compile_over(
        t,
        ids,
        ifindex,
        generation,
        acl_generation,
        &MapState::default(),
    )
}

/// [`compile`] for a data plane holding `installed` (which decides where each network
/// ACL's hit counters go, see [`HitSlots`]).
pub fn compile_over(
    t: &Topology,
    ids: &Ids,
    ifindex: &dyn IfindexResolver,
    generation: Generations,
    acl_generation: Generations,
    installed: &MapState,
) -> Result<(MapState, Ids)> {
    compile_reusing(t, ids, ifindex, generation, acl_generation, installed, None)
}

/// [`compile_over`] where `installed` was compiled from topology `before` with ids `ids`:
/// a route table whose validated routes are the very ones `before` has (shared, so
/// unchanged) and whose peerings keep their ids is taken from `installed` as it is,
/// without compiling or copying its routes.
pub fn compile_reusing(
    t: &Topology,
    ids: &Ids,
    ifindex: &dyn IfindexResolver,
    generation: Generations,
    acl_generation: Generations,
    installed: &MapState,
    before: Option<&Topology>,
) -> Result<(MapState, Ids)> {
    let mut c = Compiler {
        t,
        ids: ids.assign(&wanted_names(t))?,
        generation,
        acl_generation,
        s: MapState::default(),
        reuse: before.map(|b| (b, ids, installed)),
    };
    c.peerings();
    c.routes();
    c.network_acls(installed)?;
    c.security_groups()?;
    c.ports(ifindex)?;
    c.fleet(ifindex)?;
    let Compiler { mut s, ids, .. } = c;
    s.names.extend(ids.names());
    Ok((s, ids))
}

/// One compilation: the topology, the ids and generations it is compiled with, and the
/// map contents so far.
struct Compiler<'a> {
    t: &'a Topology,
    ids: Ids,
    generation: Generations<'a>,
    acl_generation: Generations<'a>,
    s: MapState,
    /// What the installed state was compiled from, its ids, and the installed state.
    reuse: Option<(&'a Topology, &'a Ids, &'a MapState)>,
}

impl Compiler<'_> {
    fn id(&self, kind: u32, name: &str) -> u32 {
        self.ids
            .get(kind, name)
            .expect("every validated name has an id")
    }

    /// The VNI of `vpc` (0 on a single host).
    fn vni(&self, vpc: &str) -> u32 {
        self.t.vpcs[vpc].vni.unwrap_or(0)
    }

    fn peerings(&mut self) {
        for pcx in self.t.peerings.values() {
            let peering = Peering {
                status: pcx.status.code(),
                requester_vpc: self.id(NAME_VPC, &pcx.requester_vpc),
                accepter_vpc: self.id(NAME_VPC, &pcx.accepter_vpc),
                flags: 0,
                cap: [cap_config(pcx.caps[0]), cap_config(pcx.caps[1])],
                tunnel_key: pcx.tunnel_key.unwrap_or(0),
                _pad: 0,
            };
            self.s
                .peerings
                .insert(self.id(NAME_PEERING, &pcx.id), peering);
        }
    }

    /// The per-VPC CIDR tables and every route table, in its generation.
    fn routes(&mut self) {
        for vpc in self.t.vpcs.values() {
            let vpc_id = self.id(NAME_VPC, &vpc.id);
            for cidr in &vpc.cidrs {
                let value = RouteValue {
                    kind: ROUTE_VPC_CIDR,
                    target: vpc_id,
                };
                self.s
                    .routes
                    .insert(key_for(vpc_table(vpc_id), cidr), value);
            }
        }
        for rt in self.t.route_tables.values() {
            let table_id = self.id(NAME_ROUTE_TABLE, &rt.id);
            let table = route_table_key(table_id, (self.generation)(table_id));
            if let Some(entries) = self.installed_table(rt, table) {
                self.s.routes.set_table(table, entries);
                continue;
            }
            for (dest, target) in rt.routes.iter() {
                let value = route_value(target, |p| self.ids.get(NAME_PEERING, p))
                    .expect("every validated name has an id");
                self.s.routes.insert(key_for(table, dest), value);
            }
        }
    }

    /// The installed entries of trie table `table`, if they were compiled from exactly
    /// `rt`'s validated routes (shared with the topology they came from) under the same
    /// table id and the same peering ids.
    fn installed_table(
        &self,
        rt: &crate::desired::validate::RouteTable,
        table: u32,
    ) -> Option<std::sync::Arc<crate::maps::TableEntries>> {
        let (before, before_ids, installed) = self.reuse?;
        let old = before.route_tables.get(&rt.id)?;
        let same_ids = before_ids.get(NAME_ROUTE_TABLE, &rt.id)
            == self.ids.get(NAME_ROUTE_TABLE, &rt.id)
            && rt
                .via
                .iter()
                .all(|p| before_ids.get(NAME_PEERING, p) == self.ids.get(NAME_PEERING, p));
        (std::sync::Arc::ptr_eq(&old.routes, &rt.routes) && same_ids)
            .then(|| installed.routes.table(table).cloned())
            .flatten()
    }

    /// Network ACL sets. Each keeps the hit counter range it has while it is installed
    /// unchanged: a change to one ACL never moves (or zeroes) another's counters.
    fn network_acls(&mut self, installed: &MapState) -> Result<()> {
        let mut slots = HitSlots::new(installed);
        for a in self.t.network_acls.values() {
            let acl_id = self.id(NAME_ACL, &a.id);
            let acl_gen = (self.acl_generation)(acl_id);
            for (egress, rules) in [(false, &a.ingress), (true, &a.egress)] {
                let c = crate::desired::acl::compile(rules)
                    .map_err(|e| anyhow!("network acl {}: {e}", a.id))?;
                let set = acl_set(acl_id, acl_gen, egress);
                let rules = c.numbers.len() as u32;
                let hit_base = slots.assign(set, rules).ok_or_else(|| {
                    anyhow!(
                        "network acls: no room for {rules} more rule hit counters at network acl {} \
                         ({ACL_HIT_SLOTS} in all, {} in use)",
                        a.id,
                        slots.in_use()
                    )
                })?;
                insert_acl_set(&mut self.s, set, &c, hit_base);
                for (i, number) in c.numbers.iter().enumerate() {
                    let key = NameKey {
                        kind: NAME_ACL_RULE,
                        id: hit_base + i as u32,
                    };
                    self.s.names.insert(key, Name::new(&number.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Security-group sets, one per distinct combination of groups on ports.
    fn security_groups(&mut self) -> Result<()> {
        let members = sg_members(self.t);
        for (name, groups) in sg_combinations(self.t) {
            let set_id = self.id(NAME_SG_SET, &name);
            let set_gen = (self.acl_generation)(set_id);
            for egress in [false, true] {
                let rules = sg_rules(self.t, &members, &groups, egress);
                let c = crate::desired::acl::compile(&rules).map_err(|e| {
                    anyhow!(
                        "security groups {} ({}): {e}",
                        groups.join(", "),
                        if egress { "egress" } else { "ingress" }
                    )
                })?;
                insert_acl_set(&mut self.s, acl_set(set_id, set_gen, egress), &c, NO_HITS);
            }
        }
        Ok(())
    }

    /// The compiled set of a port's security groups, one direction.
    fn port_sg(&self, groups: &Option<Vec<String>>, egress: bool) -> u32 {
        match groups {
            Some(g) => {
                let set_id = self.id(NAME_SG_SET, &sg_set_name(g));
                acl_set(set_id, (self.acl_generation)(set_id), egress)
            }
            None => NO_ACL,
        }
    }

    /// The network ACL set of a subnet, one direction.
    fn subnet_acl(&self, subnet: &str, egress: bool) -> u32 {
        match &self.t.subnets[subnet].network_acl {
            Some(a) => {
                let acl_id = self.id(NAME_ACL, a);
                acl_set(acl_id, (self.acl_generation)(acl_id), egress)
            }
            None => NO_ACL,
        }
    }

    /// Ports, their endpoints (one per address) and redirect entries.
    fn ports(&mut self, resolver: &dyn IfindexResolver) -> Result<()> {
        // Interfaces that must not carry a port, all named at once, before anything that
        // may only be missing for now (an interface that does not exist yet).
        let refused: Vec<String> = (self.t.ports.values())
            .filter_map(|p| {
                let why = resolver.refuse_port(&p.interface)?;
                Some(format!("port {}: {why}", p.interface))
            })
            .collect();
        if !refused.is_empty() {
            return Err(PortsRefused(refused).into());
        }
        // The uplink by index: a second name of it (an altname) is the uplink too.
        let uplink = self
            .t
            .local()
            .and_then(|h| h.uplink.as_deref())
            .and_then(|u| Some((u, resolver.ifindex(u)?)));
        for port in self.t.ports.values() {
            let ifindex = resolver.ifindex(&port.interface).ok_or_else(|| {
                anyhow!(
                    "port {}: interface {} does not exist on this host",
                    port.interface,
                    port.interface
                )
            })?;
            if let Some((name, _)) = uplink.filter(|(_, i)| *i == ifindex) {
                return Err(anyhow!(
                    "port {}: interface {} is this host's uplink ({name}); a port cannot be on it",
                    port.interface,
                    port.interface
                ));
            }
            let subnet = &self.t.subnets[&port.subnet];
            let vpc = self.id(NAME_VPC, &subnet.vpc);
            let subnet_id = self.id(NAME_SUBNET, &subnet.id);
            let table_id = self.id(NAME_ROUTE_TABLE, &subnet.route_table);
            let route_table = route_table_key(table_id, (self.generation)(table_id));
            let vni = self.vni(&subnet.vpc);
            let mut p = Port {
                vpc,
                vni,
                subnet: subnet_id,
                route_table,
                mac: port.mac,
                gw_mac: port.gateway_mac,
                acl: self.subnet_acl(&subnet.id, true),
                sg: self.port_sg(&port.security_groups, true),
                ..Port::default()
            };
            let endpoint = Endpoint {
                ifindex,
                route_table,
                subnet: subnet_id,
                flags: ENDPOINT_LOCAL,
                mac: port.mac,
                gw_mac: port.gateway_mac,
                acl: self.subnet_acl(&subnet.id, false),
                sg: self.port_sg(&port.security_groups, false),
                vni,
                ..Endpoint::default()
            };
            if let Some(a) = port.ipv4 {
                p.flags |= PORT_HAS_IPV4;
                p.ipv4 = addr::from_v4(a.octets());
                let key = EndpointKey { vpc, addr: p.ipv4 };
                self.s.endpoints.insert(key, endpoint);
            }
            if let Some(a) = port.ipv6 {
                p.flags |= PORT_HAS_IPV6;
                p.ipv6 = a.octets();
                let key = EndpointKey { vpc, addr: p.ipv6 };
                self.s.endpoints.insert(key, endpoint);
            }
            if self.s.ports.insert(ifindex, p).is_some() {
                return Err(anyhow!(
                    "port {}: ifindex {ifindex} is used by another port",
                    port.interface
                ));
            }
            self.s.devmap.insert(ifindex, ifindex);
            let key = NameKey {
                kind: NAME_PORT,
                id: ifindex,
            };
            self.s.names.insert(key, Name::new(&port.interface));
        }
        Ok(())
    }

    /// In a fleet: this host's overlay setting, every host by underlay address, the VNIs and
    /// tunnel keys the decap path resolves, and the instances on other hosts.
    fn fleet(&mut self, ifindex: &dyn IfindexResolver) -> Result<()> {
        let Some(local) = self.t.local() else {
            return Ok(());
        };
        let uplink = local
            .uplink
            .as_deref()
            .expect("validated: the local host has an uplink");
        let uplink_ifindex = ifindex.ifindex(uplink).ok_or_else(|| {
            anyhow!(
                "host {}: uplink {uplink} does not exist on this host",
                local.id
            )
        })?;
        self.s.devmap.insert(uplink_ifindex, uplink_ifindex);
        self.s.overlay.insert(
            0,
            OverlayConfig {
                underlay: local.underlay(),
                host: self.id(NAME_HOST, &local.id),
                uplink: uplink_ifindex,
                mtu: ifindex.mtu(uplink).unwrap_or(1500),
                flags: OVERLAY_ENABLED,
            },
        );
        for h in self.t.hosts.values() {
            let key = HostKey { addr: h.underlay() };
            self.s.hosts.insert(key, self.id(NAME_HOST, &h.id));
        }
        for v in self.t.vpcs.values() {
            if let Some(vni) = v.vni {
                let id = self.id(NAME_VPC, &v.id);
                self.s.overlay_ids.insert(OverlayIdKey::vni(vni), id);
            }
        }
        for p in self.t.peerings.values() {
            if let Some(key) = p.tunnel_key {
                let slot = self.id(NAME_PEERING, &p.id);
                self.s.overlay_ids.insert(OverlayIdKey::peering(key), slot);
            }
        }
        for port in self.t.remote_ports.values() {
            let host = &self.t.hosts[port
                .host
                .as_ref()
                .expect("validated: remote ports name a host")];
            let subnet = &self.t.subnets[&port.subnet];
            let vpc = self.id(NAME_VPC, &subnet.vpc);
            let endpoint = Endpoint {
                flags: ENDPOINT_REMOTE,
                mac: port.mac,
                acl: NO_ACL,
                sg: NO_ACL,
                host: self.id(NAME_HOST, &host.id),
                vni: self.vni(&subnet.vpc),
                underlay: host.underlay(),
                ..Endpoint::default()
            };
            let addrs = [
                port.ipv4.map(|a| addr::from_v4(a.octets())),
                port.ipv6.map(|a| a.octets()),
            ];
            for a in addrs.into_iter().flatten() {
                self.s
                    .endpoints
                    .insert(EndpointKey { vpc, addr: a }, endpoint);
            }
        }
        Ok(())
    }
}

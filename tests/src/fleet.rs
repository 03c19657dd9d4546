//! The seed topology spread over three hosts: A on host 1,
//! B on host 2, C on host 3, and a second B instance (B2) on host 1. Each host's
//! document is what the control plane would send it: its own ports, the instances of
//! peered VPCs on other hosts, and those hosts.

use crate::netns::{veth, Netns};
use crate::seed::{self, Instance, ROUTER_MAC};
use anyhow::Result;
use peer_dataplane::desired::document::{Document, HostDoc, PortDoc};

pub const HOSTS: [&str; 3] = ["host-1", "host-2", "host-3"];
/// Every host's uplink has this name, in its own namespace.
pub const UPLINK: &str = "up0";
/// VNIs of vpc-a, vpc-b, vpc-c, and tunnel keys of pcx-ab, pcx-bc.
pub const VNI: [(&str, u32); 3] = [("vpc-a", 101), ("vpc-b", 102), ("vpc-c", 103)];
pub const TUNNEL_KEY: [(&str, u32); 2] = [("pcx-ab", 1), ("pcx-bc", 2)];

/// A second instance of VPC B, on host 1 next to A.
pub const B2: Instance = Instance {
    name: "b2",
    vpc: "vpc-b",
    port: "pdp-b2",
    mac: [0x02, 0x00, 0xac, 0x10, 0x02, 0x15],
    ipv4: [172, 16, 2, 21],
    ipv6: [0xfd, 0, 0, 0xb, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x21],
    gw4: [172, 16, 2, 1],
    gw6: seed::B.gw6,
};

pub const PLACEMENT: [(Instance, usize); 4] = [(seed::A, 0), (seed::B, 1), (seed::C, 2), (B2, 0)];

/// Underlay address of host `i` (0-based): 192.0.2.(i+1).
pub const fn underlay(i: usize) -> [u8; 4] {
    [192, 0, 2, i as u8 + 1]
}

pub fn vni(vpc: &str) -> u32 {
    VNI.iter().find(|(v, _)| *v == vpc).expect("a seed vpc").1
}

pub fn tunnel_key(pcx: &str) -> u32 {
    TUNNEL_KEY
        .iter()
        .find(|(p, _)| *p == pcx)
        .expect("a seed peering")
        .1
}

fn host_doc(i: usize) -> HostDoc {
    HostDoc {
        id: HOSTS[i].into(),
        underlay_ipv4: seed::v4_str(&underlay(i)),
        uplink: Some(UPLINK.into()),
        ..HostDoc::default()
    }
}

fn port_doc(i: Instance, host: usize) -> PortDoc {
    PortDoc {
        interface: i.port.into(),
        host: Some(HOSTS[host].into()),
        subnet: format!("subnet-{}2", &i.vpc[4..]),
        mac: seed::mac_str(&i.mac),
        ipv4: Some(seed::v4_str(&i.ipv4)),
        ipv6: Some(seed::v6_str(&i.ipv6)),
        ..PortDoc::default()
    }
}

/// The VPC peered with `vpc` over each seed peering.
fn peers(vpc: &str) -> Vec<&'static str> {
    match vpc {
        "vpc-a" => vec!["vpc-b"],
        "vpc-b" => vec!["vpc-a", "vpc-c"],
        _ => vec!["vpc-b"],
    }
}

/// Host `i`'s document (0-based).
pub fn host_document(i: usize) -> Document {
    let mut doc = seed::seed_doc();
    doc.local_host = Some(HOSTS[i].into());
    for v in doc.vpcs.iter_mut() {
        v.vni = Some(vni(&v.id));
    }
    for p in doc.peerings.iter_mut() {
        p.tunnel_key = Some(tunnel_key(&p.id));
    }
    doc.ports = PLACEMENT
        .iter()
        .filter(|(_, h)| *h == i)
        .map(|(inst, h)| port_doc(*inst, *h))
        .collect();
    let here: Vec<&str> = PLACEMENT
        .iter()
        .filter(|(_, h)| *h == i)
        .map(|(inst, _)| inst.vpc)
        .collect();
    let reach: Vec<&str> = here.iter().flat_map(|v| peers(v)).collect();
    doc.remote_ports = PLACEMENT
        .iter()
        .filter(|(inst, h)| *h != i && reach.contains(&inst.vpc))
        .map(|(inst, h)| port_doc(*inst, *h))
        .collect();
    let mut hosts = vec![i];
    for (inst, h) in PLACEMENT {
        if h != i && reach.contains(&inst.vpc) && !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    hosts.sort();
    doc.hosts = hosts.into_iter().map(host_doc).collect();
    doc.router_mac = Some(seed::mac_str(&ROUTER_MAC));
    doc
}

/// MAC of host `i`'s uplink (0-based).
pub const fn uplink_mac(i: usize) -> [u8; 6] {
    [0x02, 0x55, 0, 0, 0, i as u8 + 1]
}

/// Three hosts as namespaces joined by an underlay bridge (its own namespace), each
/// instance in a namespace behind its port on its host.
pub struct FleetNetwork {
    pub underlay: Netns,
    pub hosts: Vec<Netns>,
    pub instances: Vec<(Instance, Netns)>,
}

impl FleetNetwork {
    /// The fleet with every uplink (and the bridge) at `mtu`.
    pub fn create(prefix: &str, mtu: u32) -> Result<FleetNetwork> {
        let fabric = Netns::create(&format!("{prefix}-ul"))?;
        fabric.ip(&["link", "add", "name", "br0", "type", "bridge"])?;
        fabric.ip(&["link", "set", "br0", "up"])?;
        let mut hosts = Vec::new();
        for i in 0..HOSTS.len() {
            let h = Netns::create(&format!("{prefix}-h{}", i + 1))?;
            let port = format!("ul{}", i + 1);
            let mac = seed::mac_str(&uplink_mac(i));
            veth(&h, UPLINK, Some(&mac), &fabric, &port, None)?;
            for (ns, dev) in [(&h, UPLINK), (&fabric, port.as_str())] {
                ns.ip(&["link", "set", dev, "mtu", &mtu.to_string()])?;
            }
            fabric.ip(&["link", "set", &port, "master", "br0"])?;
            // The host's XDP program redirects tunnel frames into its uplink: the peer
            // needs GRO (or an XDP program) to take them.
            fabric.exec("ethtool", &["-K", &port, "gro", "on"])?;
            let cidr = format!("{}/24", seed::v4_str(&underlay(i)));
            h.ip(&["addr", "add", &cidr, "dev", UPLINK])?;
            hosts.push(h);
        }
        let mut instances = Vec::new();
        for (inst, host) in PLACEMENT {
            let ns = seed::instance(&hosts[host], inst, &format!("{prefix}-{}", inst.name))?;
            instances.push((inst, ns));
        }
        Ok(FleetNetwork {
            underlay: fabric,
            hosts,
            instances,
        })
    }

    pub fn ns(&self, i: Instance) -> &Netns {
        &self
            .instances
            .iter()
            .find(|(x, _)| x.name == i.name)
            .expect("an instance of the fleet")
            .1
    }
}

/// The host (0-based) that carries `i`.
pub fn host_of(i: Instance) -> usize {
    PLACEMENT
        .iter()
        .find(|(x, _)| x.name == i.name)
        .expect("an instance of the fleet")
        .1
}

/// Host 1 alone, for BPF_PROG_RUN: a namespace with its two ports (each a veth whose peer
/// stays in the namespace) and its uplink at `mtu`, addressed 192.0.2.1/24, with static
/// neighbours for hosts 2 and 3 (so the FIB answers without an underlay behind it).
pub fn host1_alone(ns_name: &str, mtu: u32) -> Result<Netns> {
    let ns = Netns::create(ns_name)?;
    for (i, h) in PLACEMENT {
        if h == 0 {
            let peer = format!("{}-peer", i.port);
            veth(&ns, i.port, None, &ns, &peer, Some(&seed::mac_str(&i.mac)))?;
        }
    }
    let mac = seed::mac_str(&uplink_mac(0));
    veth(&ns, UPLINK, Some(&mac), &ns, "up0-peer", None)?;
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", UPLINK])?;
    ns.ip(&["link", "set", UPLINK, "mtu", &mtu.to_string()])?;
    for h in 1..HOSTS.len() {
        ns.ip(&[
            "neigh",
            "replace",
            &seed::v4_str(&underlay(h)),
            "lladdr",
            &seed::mac_str(&uplink_mac(h)),
            "nud",
            "permanent",
            "dev",
            UPLINK,
        ])?;
    }
    Ok(ns)
}

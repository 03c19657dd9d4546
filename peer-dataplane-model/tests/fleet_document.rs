//! Host-only tests of a fleet document: hosts, this host, remote ports, VNIs and tunnel
//! keys, validated and compiled into the overlay's maps.

use peer_dataplane_common::overlay::{HostKey, OverlayIdKey, OVERLAY_ENABLED};
use peer_dataplane_common::{addr, EndpointKey, ENDPOINT_LOCAL, ENDPOINT_REMOTE, NAME_HOST};
use peer_dataplane_common::{NAME_PEERING, NAME_VPC};
use peer_dataplane_model::desired::compile;
use peer_dataplane_model::desired::document::{Document, HostDoc};
use peer_dataplane_model::desired::ids::Ids;
use peer_dataplane_model::desired::validate::validate;

mod common;
use common::{seed, FakeIfindex};

/// The seed spread over two hosts: A's port here (host-1), B's on host-2; C stays local.
fn fleet() -> Document {
    let mut doc = seed();
    doc.local_host = Some("host-1".into());
    doc.hosts = vec![
        HostDoc {
            id: "host-1".into(),
            underlay_ipv4: "192.0.2.1".into(),
            uplink: Some("up0".into()),
            ..HostDoc::default()
        },
        HostDoc {
            id: "host-2".into(),
            underlay_ipv4: "192.0.2.2".into(),
            ..HostDoc::default()
        },
    ];
    for (i, v) in doc.vpcs.iter_mut().enumerate() {
        v.vni = Some(100 + i as u32);
    }
    for (i, p) in doc.peerings.iter_mut().enumerate() {
        p.tunnel_key = Some(7 + i as u32);
    }
    let mut b = doc.ports.remove(1);
    b.host = Some("host-2".into());
    doc.remote_ports.push(b);
    doc
}

fn refused(doc: &Document) -> String {
    validate(doc)
        .expect_err("document must be refused")
        .to_string()
}

#[test]
fn a_fleet_document_compiles_into_the_overlay_maps() {
    let topo = validate(&fleet()).unwrap();
    let (s, ids) = compile(&topo, &Ids::default(), &FakeIfindex, &|_| 0, &|_| 0).unwrap();
    let host = |h: &str| ids.get(NAME_HOST, h).unwrap();
    let vpc = |v: &str| ids.get(NAME_VPC, v).unwrap();

    let o = s.overlay[&0];
    assert_eq!(o.flags, OVERLAY_ENABLED);
    assert_eq!(o.uplink, 2);
    assert_eq!(o.mtu, 1600);
    assert_eq!(o.host, host("host-1"));
    assert_eq!(o.underlay, addr::from_v4([192, 0, 2, 1]));
    assert_eq!(
        s.devmap.get(&2),
        Some(&2),
        "the uplink is a redirect target"
    );

    let h2 = HostKey {
        addr: addr::from_v4([192, 0, 2, 2]),
    };
    assert_eq!(s.hosts.get(&h2), Some(&host("host-2")));
    assert_eq!(s.overlay_ids[&OverlayIdKey::vni(101)], vpc("vpc-b"));
    assert_eq!(
        s.overlay_ids[&OverlayIdKey::peering(7)],
        ids.get(NAME_PEERING, "pcx-ab").unwrap()
    );

    // B's instance: remote, toward host-2, in B's VNI; A's: local, with A's VNI.
    let b = s.endpoints[&EndpointKey {
        vpc: vpc("vpc-b"),
        addr: addr::from_v4([172, 16, 2, 20]),
    }];
    assert_eq!(b.flags, ENDPOINT_REMOTE);
    assert_eq!(b.host, host("host-2"));
    assert_eq!(b.underlay, addr::from_v4([192, 0, 2, 2]));
    assert_eq!(b.vni, 101);
    assert_eq!(b.mac, [0x02, 0x00, 0xac, 0x10, 0x02, 0x14]);
    let a = s.endpoints[&EndpointKey {
        vpc: vpc("vpc-a"),
        addr: addr::from_v4([10, 0, 2, 10]),
    }];
    assert_eq!((a.flags, a.vni, a.host), (ENDPOINT_LOCAL, 100, 0));
    assert_eq!(s.ports[&11].vni, 100);
    assert_eq!(s.ports.len(), 2, "remote ports get no port entry");
}

/// A port on another name of the uplink (an altname) passes validation but not the
/// compile, which compares interfaces by index; nor does a port the resolver refuses.
#[test]
fn a_port_on_the_uplink_by_another_name_or_a_refused_interface_does_not_compile() {
    let mut doc = fleet();
    doc.ports[0].interface = "up0-alt".into();
    let topo = validate(&doc).unwrap();
    let e = compile(&topo, &Ids::default(), &FakeIfindex, &|_| 0, &|_| 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("port up0-alt: interface up0-alt is this host's uplink (up0)"),
        "{e}"
    );

    struct NoBridges;
    impl peer_dataplane_model::desired::IfindexResolver for NoBridges {
        fn ifindex(&self, name: &str) -> Option<u32> {
            FakeIfindex.ifindex(name)
        }
        fn refuse_port(&self, name: &str) -> Option<String> {
            (name == "pdp-c").then(|| "interface pdp-c is a bridge".to_string())
        }
    }
    let topo = validate(&fleet()).unwrap();
    let e = compile(&topo, &Ids::default(), &NoBridges, &|_| 0, &|_| 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("port pdp-c: interface pdp-c is a bridge"), "{e}");
}

#[test]
fn a_single_host_document_has_no_overlay() {
    let topo = validate(&seed()).unwrap();
    let (s, _) = compile(&topo, &Ids::default(), &FakeIfindex, &|_| 0, &|_| 0).unwrap();
    assert!(s.overlay.is_empty() && s.hosts.is_empty() && s.overlay_ids.is_empty());
    assert!(s
        .endpoints
        .values()
        .all(|e| e.flags == ENDPOINT_LOCAL && e.vni == 0));
}

/// One mistake made in a good fleet document.
type Change = fn(&mut Document);

#[test]
fn fleet_mistakes_are_refused_by_name() {
    let cases: Vec<(&str, Change)> = vec![
        (
            "remote port host-9/pdp-b: host host-9 does not exist",
            |d| d.remote_ports[0].host = Some("host-9".into()),
        ),
        ("remote port host-1/pdp-b: host host-1 is this host", |d| {
            d.remote_ports[0].host = Some("host-1".into())
        }),
        ("port pdp-a: host host-2 is not this host", |d| {
            d.ports[0].host = Some("host-2".into())
        }),
        ("vpc vpc-c: no vni", |d| d.vpcs[2].vni = None),
        ("vni 100 is also vpc vpc-a's", |d| d.vpcs[1].vni = Some(100)),
        ("vni 16777216 is outside", |d| d.vpcs[1].vni = Some(1 << 24)),
        ("peering pcx-bc: no tunnel_key", |d| {
            d.peerings[1].tunnel_key = None
        }),
        ("underlay address 192.0.2.1 is also host host-1's", |d| {
            d.hosts[1].underlay_ipv4 = "192.0.2.1".into()
        }),
        ("underlay_ipv4 224.0.0.1 is not a unicast address", |d| {
            d.hosts[1].underlay_ipv4 = "224.0.0.1".into()
        }),
        ("local_host: host host-1 has no uplink", |d| {
            d.hosts[0].uplink = None
        }),
        ("local_host: host host-7 does not exist", |d| {
            d.local_host = Some("host-7".into())
        }),
        ("remote ports need local_host", |d| d.local_host = None),
        ("address 10.0.2.10 is already used by port pdp-a", |d| {
            let mut a = d.ports[0].clone();
            a.host = Some("host-2".into());
            a.interface = "pdp-a2".into();
            d.remote_ports.push(a);
        }),
        ("cap_shares [0, 1] must be 1 or more", |d| {
            d.peerings[0].cap_shares = Some([0, 1])
        }),
        ("port up0: interface up0 is host host-1's uplink", |d| {
            d.ports[0].interface = "up0".into()
        }),
        (
            "remote port host-2/eth9: interface eth9 is host host-2's uplink",
            |d| {
                d.hosts[1].uplink = Some("eth9".into());
                d.remote_ports[0].interface = "eth9".into();
            },
        ),
        ("port lo: interface lo is the host's loopback", |d| {
            d.ports[0].interface = "lo".into()
        }),
    ];
    for (want, change) in cases {
        let mut doc = fleet();
        change(&mut doc);
        let got = refused(&doc);
        assert!(got.contains(want), "wanted {want:?} in: {got}");
    }
}

#[test]
fn each_sending_host_polices_its_share_of_a_cap() {
    let mut doc = fleet();
    doc.peerings[0].bandwidth_mbps = Some(30);
    doc.peerings[0].cap_shares = Some([3, 1]);
    let topo = validate(&doc).unwrap();
    let caps = topo.peerings["pcx-ab"].caps;
    assert_eq!(caps[0].unwrap().bits_per_second, 10_000_000);
    assert_eq!(caps[1].unwrap().bits_per_second, 30_000_000);
}

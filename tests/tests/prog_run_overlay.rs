//! BPF_PROG_RUN cases of the overlay, on host 1 of the three-host seed (tests/src/fleet.rs):
//! A and B2 are local, B lives on host 2 and C on host 3. Frames from A's port toward B
//! are checked and encapsulated (every outer field is checked here); Geneve frames on
//! the uplink are checked and decapsulated, or dropped under the reason of the check
//! they fail; everything else on the uplink goes to the kernel untouched. Counter deltas
//! are checked for every case: the one expected reason (and peering) moves, no other.
//!
//! Needs root and BPF. Runs inside a network namespace of its own holding host 1's ports
//! and its uplink, whose neighbours (hosts 2 and 3) are static entries.

use anyhow::{anyhow, Result};
use peer_dataplane::desired::document::Document;
use peer_dataplane::maps::{stored, Op};
use peer_dataplane_common::{
    addr, DropReason, EndpointKey, PassReason, DIR_ACCEPTER_TO_REQUESTER,
    DIR_REQUESTER_TO_ACCEPTER, NAME_VPC,
};
use peer_dataplane_tests::fleet::{self, B2, UPLINK};
use peer_dataplane_tests::harness::{
    action_name, run_table, Counters, TestDataplane, XDP_DROP, XDP_PASS, XDP_REDIRECT,
};
use peer_dataplane_tests::netns;
use peer_dataplane_tests::packets::{self, fold16, geneve4, peering_option, Outer, L2};
use peer_dataplane_tests::seed::{self, Instance, A, B, C, ROUTER_MAC};

const UPLINK_MAC: [u8; 6] = fleet::uplink_mac(0);
/// The neighbour MACs of hosts 2 and 3 on the underlay.
const HOST_MAC: [[u8; 6]; 3] = [UPLINK_MAC, fleet::uplink_mac(1), fleet::uplink_mac(2)];
const UPLINK_MTU: usize = 1500;

const AB: &str = "pcx-ab";
const BC: &str = "pcx-bc";
const RA: u32 = DIR_REQUESTER_TO_ACCEPTER;
const AR: u32 = DIR_ACCEPTER_TO_REQUESTER;

enum Expect {
    /// Encapsulated toward host `host` (0-based): the outer headers as the overlay
    /// defines them, then exactly `inner`.
    Encap {
        host: usize,
        vni: u32,
        src_vni: u32,
        key: u32,
        inner: Vec<u8>,
        pcx: &'static str,
        dir: u32,
    },
    /// Delivered to a local port as exactly `frame`.
    Deliver {
        frame: Vec<u8>,
        pcx: &'static str,
        dir: u32,
    },
    /// Answered with ICMP too-big naming `mtu`, counted as mtu-exceeded.
    TooBig {
        mtu: u32,
        pcx: &'static str,
        dir: u32,
    },
    Pass(PassReason),
    Drop(DropReason, Option<(&'static str, u32)>),
}

/// A change to host 1's document (or raw maps) for one case, undone afterwards.
enum Setup {
    None,
    Doc(fn(&mut Document)),
    Raw(fn(&TestDataplane) -> Vec<Op>),
}

struct Case {
    name: &'static str,
    ingress: &'static str,
    packet: Vec<u8>,
    expect: Expect,
    setup: Setup,
}

fn case(name: &'static str, ingress: &'static str, packet: Vec<u8>, expect: Expect) -> Case {
    Case {
        name,
        ingress,
        packet,
        expect,
        setup: Setup::None,
    }
}

fn from(i: Instance) -> L2 {
    L2 {
        src: i.mac,
        dst: ROUTER_MAC,
        vlan: None,
    }
}

/// What a frame toward `to` looks like inside the tunnel: the destination's MACs.
fn toward(to: Instance) -> L2 {
    L2 {
        src: ROUTER_MAC,
        dst: to.mac,
        vlan: None,
    }
}

fn udp4(l2: L2, s: Instance, d: Instance, ttl: u8, sport: u16) -> Vec<u8> {
    packets::udp4(l2, s.ipv4, d.ipv4, ttl, sport, 7000, b"across hosts")
}

/// Geneve from host `host` (0-based) to host 1 with the peering option.
fn tunnel(host: usize, vni: u32, src_vni: u32, key: u32, inner: &[u8]) -> Vec<u8> {
    geneve4(
        Outer { vni, ..outer(host) },
        &peering_option(src_vni, key),
        inner,
    )
}

fn outer(host: usize) -> Outer {
    Outer::geneve(
        HOST_MAC[host.min(2)],
        UPLINK_MAC,
        fleet::underlay(host),
        fleet::underlay(0),
        fleet::vni("vpc-a"),
    )
}

/// B (on host 2) to A, as host 2 sends it.
fn b_to_a(ttl: u8) -> Vec<u8> {
    udp4(toward(A), B, A, ttl, 40000)
}

fn vni(v: &str) -> u32 {
    fleet::vni(v)
}

fn key(p: &str) -> u32 {
    fleet::tunnel_key(p)
}

fn big_udp4() -> Vec<u8> {
    // An IP packet of exactly the uplink MTU: 62 bytes too big once encapsulated.
    let payload = vec![0x5a; UPLINK_MTU - 28];
    packets::udp4(from(A), A.ipv4, B.ipv4, 64, 40001, 7000, &payload)
}

fn big_udp6() -> Vec<u8> {
    let payload = vec![0x6b; UPLINK_MTU - 48];
    packets::udp6(from(A), A.ipv6, B.ipv6, 64, 40002, 7000, &payload)
}

fn cases() -> Vec<Case> {
    let encap_ab = |inner: Vec<u8>| Expect::Encap {
        host: 1,
        vni: vni("vpc-b"),
        src_vni: vni("vpc-a"),
        key: key(AB),
        inner,
        pcx: AB,
        dir: RA,
    };
    let mut v = vec![
        // --- sender: encapsulation
        case(
            "udp4 a->b (host 2): encapsulated, ttl untouched",
            A.port,
            udp4(from(A), A, B, 64, 40000),
            encap_ab(udp4(toward(B), A, B, 64, 40000)),
        ),
        case(
            "tcp6 a->b: encapsulated",
            A.port,
            packets::tcp6(from(A), A.ipv6, B.ipv6, 64, 1234, 443),
            encap_ab(packets::tcp6(toward(B), A.ipv6, B.ipv6, 64, 1234, 443)),
        ),
        case(
            "vlan-tagged udp4 a->b: the inner frame is untagged",
            A.port,
            packets::udp4(
                L2 {
                    vlan: Some(100),
                    ..from(A)
                },
                A.ipv4,
                B.ipv4,
                64,
                1,
                2,
                b"x",
            ),
            encap_ab(packets::udp4(toward(B), A.ipv4, B.ipv4, 64, 1, 2, b"x")),
        ),
        case(
            "udp4 b2->c (host 3): pcx-bc's key and vpc-c's vni",
            B2.port,
            udp4(from(B2), B2, C, 64, 40000),
            Expect::Encap {
                host: 2,
                vni: vni("vpc-c"),
                src_vni: vni("vpc-b"),
                key: key(BC),
                inner: udp4(toward(C), B2, C, 64, 40000),
                pcx: BC,
                dir: RA,
            },
        ),
        case(
            "udp4 a->b2: both ports here, the direct path (no encapsulation)",
            A.port,
            udp4(from(A), A, B2, 64, 40000),
            Expect::Deliver {
                frame: packets::forwarded(&udp4(from(A), A, B2, 64, 40000), B2.mac, ROUTER_MAC),
                pcx: AB,
                dir: RA,
            },
        ),
        case(
            "a->c across hosts: no route (not transitive)",
            A.port,
            udp4(from(A), A, C, 64, 1),
            Expect::Drop(DropReason::NoRoute, None),
        ),
        case(
            "ttl 1 toward another host: encapsulated as it is (the receiving host expires it)",
            A.port,
            udp4(from(A), A, B, 1, 1),
            encap_ab(udp4(toward(B), A, B, 1, 1)),
        ),
        case(
            "ipv4 of the uplink mtu: fragmentation needed, mtu 1438",
            A.port,
            big_udp4(),
            Expect::TooBig {
                mtu: (UPLINK_MTU - 62) as u32,
                pcx: AB,
                dir: RA,
            },
        ),
        case(
            "ipv6 of the uplink mtu: packet too big, mtu 1438",
            A.port,
            big_udp6(),
            Expect::TooBig {
                mtu: (UPLINK_MTU - 62) as u32,
                pcx: AB,
                dir: RA,
            },
        ),
        // --- receiver: decapsulation
        case(
            "geneve b->a from host 2: delivered, ttl decremented here",
            UPLINK,
            tunnel(1, vni("vpc-a"), vni("vpc-b"), key(AB), &b_to_a(64)),
            Expect::Deliver {
                frame: packets::forwarded(&b_to_a(64), A.mac, ROUTER_MAC),
                pcx: AB,
                dir: AR,
            },
        ),
        case(
            "geneve b->a ipv6",
            UPLINK,
            tunnel(
                1,
                vni("vpc-a"),
                vni("vpc-b"),
                key(AB),
                &packets::tcp6(toward(A), B.ipv6, A.ipv6, 64, 443, 1234),
            ),
            Expect::Deliver {
                frame: packets::forwarded(
                    &packets::tcp6(toward(A), B.ipv6, A.ipv6, 64, 443, 1234),
                    A.mac,
                    ROUTER_MAC,
                ),
                pcx: AB,
                dir: AR,
            },
        ),
        case(
            "geneve c->b2 from host 3",
            UPLINK,
            tunnel(
                2,
                vni("vpc-b"),
                vni("vpc-c"),
                key(BC),
                &udp4(toward(B2), C, B2, 64, 1),
            ),
            Expect::Deliver {
                frame: packets::forwarded(&udp4(toward(B2), C, B2, 64, 1), B2.mac, ROUTER_MAC),
                pcx: BC,
                dir: AR,
            },
        ),
        case(
            "an unknown non-critical option is skipped",
            UPLINK,
            geneve4(
                outer(1),
                &[
                    packets::geneve_option(0x0102, 0x05, &[1, 2, 3, 4]),
                    peering_option(vni("vpc-b"), key(AB)),
                ]
                .concat(),
                &b_to_a(64),
            ),
            Expect::Deliver {
                frame: packets::forwarded(&b_to_a(64), A.mac, ROUTER_MAC),
                pcx: AB,
                dir: AR,
            },
        ),
        case(
            "geneve from an address that is no host",
            UPLINK,
            geneve4(
                Outer {
                    src: [192, 0, 2, 77],
                    ..outer(1)
                },
                &peering_option(vni("vpc-b"), key(AB)),
                &b_to_a(64),
            ),
            Expect::Drop(DropReason::UnknownHost, None),
        ),
        case(
            "host 3 speaking for b (b is on host 2)",
            UPLINK,
            tunnel(2, vni("vpc-a"), vni("vpc-b"), key(AB), &b_to_a(64)),
            Expect::Drop(DropReason::SpoofedSource, None),
        ),
        case(
            "host 2 claiming b's address in vpc-c",
            UPLINK,
            tunnel(1, vni("vpc-a"), vni("vpc-c"), key(AB), &b_to_a(64)),
            Expect::Drop(DropReason::SpoofedSource, None),
        ),
        case(
            "host 2 with an address it carries no instance for",
            UPLINK,
            tunnel(
                1,
                vni("vpc-a"),
                vni("vpc-b"),
                key(AB),
                &packets::udp4(toward(A), [172, 16, 2, 99], A.ipv4, 64, 1, 2, b"x"),
            ),
            Expect::Drop(DropReason::SpoofedSource, None),
        ),
        case(
            "vni of vpc-b for a packet to a (pcx-ab leads to vpc-a)",
            UPLINK,
            tunnel(1, vni("vpc-b"), vni("vpc-b"), key(AB), &b_to_a(64)),
            Expect::Drop(DropReason::VniMismatch, Some((AB, AR))),
        ),
        case(
            "an unknown tunnel key",
            UPLINK,
            tunnel(1, vni("vpc-a"), vni("vpc-b"), 999, &b_to_a(64)),
            Expect::Drop(DropReason::PeeringInactive, None),
        ),
        case(
            "pcx-ab's key for c->b2: the peering does not join vpc-c",
            UPLINK,
            tunnel(
                2,
                vni("vpc-b"),
                vni("vpc-c"),
                key(AB),
                &udp4(toward(B2), C, B2, 64, 1),
            ),
            Expect::Drop(DropReason::PeeringMismatch, None),
        ),
        case(
            "an instance this host does not carry (c lives on host 3)",
            UPLINK,
            tunnel(
                1,
                vni("vpc-c"),
                vni("vpc-b"),
                key(BC),
                &udp4(toward(C), B, C, 64, 1),
            ),
            Expect::Drop(DropReason::NoEndpoint, Some((BC, RA))),
        ),
        case(
            "ttl 1 expires on the receiver",
            UPLINK,
            tunnel(1, vni("vpc-a"), vni("vpc-b"), key(AB), &b_to_a(1)),
            Expect::Drop(DropReason::TtlExceeded, Some((AB, AR))),
        ),
        case(
            "an unknown critical option",
            UPLINK,
            geneve4(
                outer(1),
                &[
                    packets::geneve_option(0x0102, 0x85, &[1, 2, 3, 4]),
                    peering_option(vni("vpc-b"), key(AB)),
                ]
                .concat(),
                &b_to_a(64),
            ),
            Expect::Drop(DropReason::GeneveUnknownOption, None),
        ),
        case(
            "no peering option",
            UPLINK,
            geneve4(outer(1), &[], &b_to_a(64)),
            Expect::Drop(DropReason::GeneveMalformed, None),
        ),
        case(
            "geneve version 1",
            UPLINK,
            geneve4(
                Outer {
                    version: 1,
                    ..outer(1)
                },
                &peering_option(vni("vpc-b"), key(AB)),
                &b_to_a(64),
            ),
            Expect::Drop(DropReason::GeneveMalformed, None),
        ),
        case(
            "an oam frame",
            UPLINK,
            geneve4(
                Outer {
                    flags: 0xc0,
                    ..outer(1)
                },
                &peering_option(vni("vpc-b"), key(AB)),
                &b_to_a(64),
            ),
            Expect::Drop(DropReason::GeneveMalformed, None),
        ),
        case(
            "protocol ipv4 instead of ethernet",
            UPLINK,
            geneve4(
                Outer {
                    protocol: 0x0800,
                    ..outer(1)
                },
                &peering_option(vni("vpc-b"), key(AB)),
                &b_to_a(64),
            ),
            Expect::Drop(DropReason::GeneveMalformed, None),
        ),
        case(
            "options longer than the frame",
            UPLINK,
            truncated_options(),
            Expect::Drop(DropReason::GeneveMalformed, None),
        ),
        case(
            "a fragment of a tunnel packet",
            UPLINK,
            geneve4(
                Outer {
                    frag: 0x2000,
                    ..outer(1)
                },
                &peering_option(vni("vpc-b"), key(AB)),
                &b_to_a(64),
            ),
            Expect::Drop(DropReason::GeneveMalformed, None),
        ),
        case(
            "arp inside the tunnel",
            UPLINK,
            tunnel(1, vni("vpc-a"), vni("vpc-b"), key(AB), &arp_frame()),
            Expect::Drop(DropReason::GeneveMalformed, None),
        ),
        // --- the underlay's own traffic: untouched
        case(
            "geneve to another underlay address",
            UPLINK,
            geneve4(
                Outer {
                    dst: [192, 0, 2, 99],
                    ..outer(1)
                },
                &peering_option(vni("vpc-b"), key(AB)),
                &b_to_a(64),
            ),
            Expect::Pass(PassReason::Underlay),
        ),
        case(
            "udp to another port of this host",
            UPLINK,
            geneve4(
                Outer {
                    udp_dport: 53,
                    ..outer(1)
                },
                &[],
                &[0; 20],
            ),
            Expect::Pass(PassReason::Underlay),
        ),
        case(
            "arp on the uplink",
            UPLINK,
            arp_frame(),
            Expect::Pass(PassReason::Underlay),
        ),
    ];

    let mut c = case(
        "host 2's underlay unreachable",
        A.port,
        udp4(from(A), A, B, 64, 40000),
        Expect::Drop(DropReason::UnderlayUnreachable, Some((AB, RA))),
    );
    // B's host at an address the uplink has no route to.
    c.setup = Setup::Raw(|dp| {
        let k = EndpointKey {
            vpc: dp.installed.ids.get(NAME_VPC, "vpc-b").unwrap(),
            addr: addr::from_v4(B.ipv4),
        };
        let mut ep = dp.installed.mirror.endpoints[&k];
        ep.underlay = addr::from_v4([198, 51, 100, 2]);
        vec![Op::put::<stored::Endpoints>(k, ep)]
    });
    v.push(c);

    let mut c = case(
        "pcx-ab deleted on this host: tunnel traffic dropped here too",
        UPLINK,
        tunnel(1, vni("vpc-a"), vni("vpc-b"), key(AB), &b_to_a(64)),
        Expect::Drop(DropReason::PeeringInactive, Some((AB, AR))),
    );
    c.setup = Setup::Doc(|d| set_status(d, AB, "deleted"));
    v.push(c);

    let mut c = case(
        "a's subnet denies b on ingress",
        UPLINK,
        tunnel(1, vni("vpc-a"), vni("vpc-b"), key(AB), &b_to_a(64)),
        Expect::Drop(DropReason::NaclDeny, Some((AB, AR))),
    );
    c.setup = Setup::Doc(deny_all_into_a);
    v.push(c);
    v
}

fn set_status(d: &mut Document, pcx: &str, status: &str) {
    let p = d.peerings.iter_mut().find(|p| p.id == pcx).unwrap();
    p.status = peer_dataplane::desired::validate::PeeringStatus::parse(status).expect("a status");
}

/// A network ACL on A's subnet that allows everything out and nothing in.
fn deny_all_into_a(d: &mut Document) {
    use peer_dataplane::desired::document::{AclRuleDoc, NetworkAclDoc};
    d.network_acls.push(NetworkAclDoc {
        id: "acl-a2".into(),
        vpc: "vpc-a".into(),
        rules: vec![AclRuleDoc {
            number: 100,
            direction: "egress".into(),
            protocol: "all".into(),
            cidr: "0.0.0.0/0".into(),
            action: "allow".into(),
            ..AclRuleDoc::default()
        }],
    });
    let s = d.subnets.iter_mut().find(|s| s.id == "subnet-a2").unwrap();
    s.network_acl = Some("acl-a2".into());
}

fn arp_frame() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&HOST_MAC[1]);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0; 20]);
    f
}

/// A Geneve header announcing 16 bytes of options, followed by only 12 (the peering
/// option) and the end of the frame.
fn truncated_options() -> Vec<u8> {
    let mut f = geneve4(outer(1), &peering_option(vni("vpc-b"), key(AB)), &[]);
    let g = 14 + 20 + 8;
    f[g] = 4;
    f
}

// ---------------------------------------------------------------------------------------
// the runner

fn install_host1(dp: &mut TestDataplane, f: Option<fn(&mut Document)>) -> Result<()> {
    let mut d = fleet::host_document(0);
    if let Some(f) = f {
        f(&mut d);
    }
    dp.install(&d)?;
    Ok(())
}

fn run_case(dp: &mut TestDataplane, c: &Case) -> Result<()> {
    match &c.setup {
        Setup::None => {}
        Setup::Doc(f) => install_host1(dp, Some(*f))?,
        Setup::Raw(f) => {
            for op in f(dp) {
                peer_dataplane::maps::DataplaneMaps::write(&mut dp.installed.maps, &op)?;
            }
            dp.installed.maps.bump_epoch()?;
        }
    }
    let before = dp.counters(&[AB, BC])?;
    let out = dp.run(netns::ifindex(c.ingress), &c.packet)?;
    let after = dp.counters(&[AB, BC])?;
    let mut problems = counter_problems(c, &before, &after);
    problems.extend(output_problems(c, out.action, &out.data));
    match &c.setup {
        Setup::None => {}
        Setup::Doc(_) => install_host1(dp, None)?,
        Setup::Raw(_) => {
            dp.installed.mirror = dp.installed.maps.read_state()?;
            install_host1(dp, None)?;
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(problems.join("\n    ")))
    }
}

fn counter_problems(c: &Case, before: &Counters, after: &Counters) -> Vec<String> {
    let (g0, g1) = (&before.0, &after.0);
    let mut problems = Vec::new();
    let mut check = |what: &str, got: u64, want: u64| {
        if got != want {
            problems.push(format!("{what}: delta {got}, expected {want}"));
        }
    };
    let (redirect, pass, drop, hit) = match &c.expect {
        Expect::Encap { pcx, dir, .. } | Expect::Deliver { pcx, dir, .. } => {
            (1, None, None, Some((*pcx, *dir)))
        }
        Expect::TooBig { pcx, dir, .. } => {
            (0, None, Some(DropReason::MtuExceeded), Some((*pcx, *dir)))
        }
        Expect::Pass(r) => (0, Some(*r), None, None),
        Expect::Drop(r, p) => (0, None, Some(*r), *p),
    };
    check("rx_packets", g1.rx_packets - g0.rx_packets, 1);
    check(
        "redirected_packets",
        g1.redirected_packets - g0.redirected_packets,
        redirect,
    );
    for r in PassReason::ALL {
        let d = g1.pass[r as usize] - g0.pass[r as usize];
        check(
            &format!("pass[{}]", r.as_str()),
            d,
            (pass == Some(r)) as u64,
        );
    }
    for r in DropReason::ALL {
        let d = g1.drop[r as usize] - g0.drop[r as usize];
        check(
            &format!("drop[{}]", r.as_str()),
            d,
            (drop == Some(r)) as u64,
        );
    }
    for ((pcx, dir, p0), (_, _, p1)) in before.1.iter().zip(after.1.iter()) {
        let here = hit == Some((*pcx, *dir));
        check(
            &format!("{pcx} dir {dir} packets"),
            p1.packets - p0.packets,
            (here && redirect == 1) as u64,
        );
        for r in DropReason::ALL {
            let d = p1.drop[r as usize] - p0.drop[r as usize];
            let want = (here && drop == Some(r)) as u64;
            check(&format!("{pcx} dir {dir} drop[{}]", r.as_str()), d, want);
        }
    }
    problems
}

fn output_problems(c: &Case, action: u32, out: &[u8]) -> Vec<String> {
    let mut p = Vec::new();
    let want_action = match &c.expect {
        Expect::Encap { .. } | Expect::Deliver { .. } => XDP_REDIRECT,
        // Redirected back to the port it came by.
        Expect::TooBig { .. } => XDP_REDIRECT,
        Expect::Pass(_) => XDP_PASS,
        Expect::Drop(..) => XDP_DROP,
    };
    if action != want_action {
        p.push(format!(
            "verdict {}, expected {}",
            action_name(action),
            action_name(want_action)
        ));
    }
    match &c.expect {
        Expect::Encap {
            host,
            vni,
            src_vni,
            key,
            inner,
            ..
        } => p.extend(encap_problems(out, *host, *vni, *src_vni, *key, inner)),
        Expect::Deliver { frame, .. } => {
            if out != frame.as_slice() {
                p.push(format!(
                    "delivered bytes differ:\n      got  {out:02x?}\n      want {frame:02x?}"
                ));
            }
        }
        Expect::TooBig { mtu, .. } => p.extend(too_big_problems(&c.packet, out, *mtu)),
        Expect::Pass(_) => {
            if out != c.packet.as_slice() {
                p.push("a frame passed to the kernel was changed".into());
            }
        }
        // A tunnel frame may be dropped after its outer headers came off.
        Expect::Drop(..) => {
            if out != c.packet.as_slice() && !(c.ingress == UPLINK && c.packet.ends_with(out)) {
                p.push("a dropped frame was rewritten".into());
            }
        }
    }
    p
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Every outer field of an encapsulated frame.
fn encap_problems(
    out: &[u8],
    host: usize,
    vni: u32,
    src_vni: u32,
    key: u32,
    inner: &[u8],
) -> Vec<String> {
    let mut p = Vec::new();
    let mut want = |what: &str, ok: bool| {
        if !ok {
            p.push(format!("outer {what} wrong"));
        }
    };
    if out.len() != 62 + inner.len() {
        return vec![format!(
            "encapsulated length {}, expected 62 + {}",
            out.len(),
            inner.len()
        )];
    }
    want(
        "destination mac (host's neighbour)",
        out[0..6] == HOST_MAC[host],
    );
    want("source mac (the uplink's)", out[6..12] == UPLINK_MAC);
    want("ethertype", be16(&out[12..]) == 0x0800);
    let ip = &out[14..34];
    want("ip version/ihl", ip[0] == 0x45);
    want("ip total length", be16(&ip[2..]) as usize == out.len() - 14);
    want("ip DF, no fragment", be16(&ip[6..]) == 0x4000);
    want("ip ttl", ip[8] == 64);
    want("ip protocol", ip[9] == 17);
    want("ip header checksum", fold16(ip) == 0xffff);
    want("ip source (this host)", ip[12..16] == fleet::underlay(0));
    want(
        "ip destination (the host)",
        ip[16..20] == fleet::underlay(host),
    );
    let udp = &out[34..42];
    want("udp source port (dynamic range)", be16(udp) >= 49152);
    want("udp destination port", be16(&udp[2..]) == 6081);
    want("udp length", be16(&udp[4..]) as usize == out.len() - 34);
    want("udp checksum zero", be16(&udp[6..]) == 0);
    let g = &out[42..50];
    want("geneve version/option length", g[0] == 3);
    want("geneve flags (C only)", g[1] == 0x40);
    want("geneve protocol", be16(&g[2..]) == 0x6558);
    want("vni", g[4..8] == (vni << 8).to_be_bytes());
    want(
        "peering option",
        out[50..62] == peering_option(src_vni, key)[..],
    );
    if &out[62..] != inner {
        p.push(format!(
            "inner frame differs:\n      got  {:02x?}\n      want {inner:02x?}",
            &out[62..]
        ));
    }
    p
}

/// The ICMP answer: to the sender, from the destination, checksums valid, the MTU, and
/// the head of the original packet quoted.
fn too_big_problems(sent: &[u8], out: &[u8], mtu: u32) -> Vec<String> {
    let mut p = Vec::new();
    let mut want = |what: &str, ok: bool| {
        if !ok {
            p.push(format!("icmp answer: {what} wrong"));
        }
    };
    if out.len() < 14 + 48 + 64 {
        return vec![format!("icmp answer of {} bytes", out.len())];
    }
    want("destination mac", out[0..6] == sent[6..12]);
    want("source mac", out[6..12] == sent[0..6]);
    let v4 = be16(&out[12..]) == 0x0800;
    if v4 {
        let ip = &out[14..34];
        want("ip header checksum", fold16(ip) == 0xffff);
        want("ip protocol", ip[9] == 1);
        want(
            "ip source (original destination)",
            ip[12..16] == sent[30..34],
        );
        want(
            "ip destination (original source)",
            ip[16..20] == sent[26..30],
        );
        want("ip total length", be16(&ip[2..]) as usize == out.len() - 14);
        let icmp = &out[34..];
        want("type 3 code 4", icmp[0] == 3 && icmp[1] == 4);
        want("icmp checksum", fold16(icmp) == 0xffff);
        want("next-hop mtu", be16(&icmp[6..]) as u32 == mtu);
        want("quote", icmp[8..] == sent[14..14 + icmp.len() - 8]);
    } else {
        let ip = &out[14..54];
        let icmp = &out[54..];
        want("next header", ip[6] == 58);
        want(
            "ip source (original destination)",
            ip[8..24] == sent[38..54],
        );
        want(
            "ip destination (original source)",
            ip[24..40] == sent[22..38],
        );
        want("payload length", be16(&ip[4..]) as usize == icmp.len());
        let mut pseudo = ip[8..40].to_vec();
        pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(icmp);
        want("type 2 code 0", icmp[0] == 2 && icmp[1] == 0);
        want("icmpv6 checksum", fold16(&pseudo) == 0xffff);
        want(
            "mtu",
            u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]) == mtu,
        );
        want("quote", icmp[8..] == sent[14..14 + icmp.len() - 8]);
    }
    p
}

#[test]
fn overlay_prog_run_table() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let ns = fleet::host1_alone(&peer_dataplane_tests::unique("ovl"), UPLINK_MTU as u32)?;
    netns::enter(&ns.path())?;
    let mut dp = TestDataplane::load()?;
    install_host1(&mut dp, None)?;

    let cases = cases();
    run_table("cases", &cases, |c| c.name, |c| run_case(&mut dp, c));
    eprintln!("{} overlay BPF_PROG_RUN cases passed", cases.len());
    Ok(())
}

/// An uplink MTU lowered below what the overlay needs after the first install refuses
/// the next install (the state stays as it was), with the fix in the error; raised again,
/// installs go in.
#[test]
fn an_uplink_mtu_lowered_below_the_overlays_minimum_refuses_the_next_install() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let ns = fleet::host1_alone(&peer_dataplane_tests::unique("ovl"), UPLINK_MTU as u32)?;
    netns::enter(&ns.path())?;
    let mut dp = TestDataplane::load()?;
    install_host1(&mut dp, None)?;
    ns.ip(&["link", "set", fleet::UPLINK, "mtu", "1000"])?;
    let e = format!("{:#}", install_host1(&mut dp, None).unwrap_err());
    assert!(
        e.contains("uplink up0 has MTU 1000; the overlay needs at least 1342")
            && e.contains("ip link set up0 mtu 1562"),
        "{e}"
    );
    ns.ip(&["link", "set", fleet::UPLINK, "mtu", "1342"])?;
    install_host1(&mut dp, None)?;
    Ok(())
}

/// Different flows leave with different outer source ports (underlay ECMP entropy, and
/// the receiving NIC's RSS); one flow always with the same.
#[test]
fn outer_source_ports_follow_the_flow() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let ns = fleet::host1_alone(&peer_dataplane_tests::unique("ovl"), UPLINK_MTU as u32)?;
    netns::enter(&ns.path())?;
    let mut dp = TestDataplane::load()?;
    install_host1(&mut dp, None)?;
    let port_of = |sport: u16| -> Result<u16> {
        let out = dp.run(netns::ifindex(A.port), &udp4(from(A), A, B, 64, sport))?;
        anyhow::ensure!(out.action == XDP_REDIRECT, "not forwarded");
        Ok(be16(&out.data[34..]))
    };
    let first = port_of(40000)?;
    assert_eq!(port_of(40000)?, first, "one flow, one outer port");
    let mut distinct = std::collections::BTreeSet::new();
    for sport in 40000..40064 {
        distinct.insert(port_of(sport)?);
    }
    assert!(
        distinct.len() >= 56,
        "64 flows used only {} outer ports",
        distinct.len()
    );
    // The destination port is part of the flow too (a receiving NIC's RSS hashes the
    // outer ports, so tunnel traffic spreads over its queues as the inner flows do).
    let mut by_dport = std::collections::BTreeSet::new();
    for dport in 7000..7064 {
        let frame = packets::udp4(from(A), A.ipv4, B.ipv4, 64, 40000, dport, b"across hosts");
        let out = dp.run(netns::ifindex(A.port), &frame)?;
        anyhow::ensure!(out.action == XDP_REDIRECT, "not forwarded");
        by_dport.insert(be16(&out.data[34..]));
    }
    assert!(
        by_dport.len() >= 56,
        "64 destination ports used only {} outer ports",
        by_dport.len()
    );
    Ok(())
}

#[test]
fn every_overlay_reason_is_covered_by_the_table() {
    let cases = cases();
    for r in peer_dataplane_common::reason::FLEET_DROPS {
        assert!(
            cases.iter().any(|c| match c.expect {
                Expect::Drop(d, _) => d == r,
                Expect::TooBig { .. } => r == DropReason::MtuExceeded,
                _ => false,
            }),
            "no overlay case drops with {}",
            r.as_str()
        );
    }
    assert!(cases
        .iter()
        .any(|c| matches!(c.expect, Expect::Pass(PassReason::Underlay))));
}

/// `trace` on host 1: the encapsulation toward B's host, and, for a tunnel frame described
/// as host 2 would send it, the receiving host's checks of the tunnel.
#[test]
fn trace_shows_the_encapsulation_and_the_tunnel_checks() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let ns = fleet::host1_alone(&peer_dataplane_tests::unique("ovl"), UPLINK_MTU as u32)?;
    netns::enter(&ns.path())?;
    let mut dp = TestDataplane::load()?;
    install_host1(&mut dp, None)?;
    let trace = |args: &[&str]| -> Result<String> {
        let out = peer_dataplane_tests::cli(&dp.pin_dir, &[&["trace"], args].concat())?;
        anyhow::ensure!(
            out.status.success(),
            "trace {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (a, b, c, b2) = (
        seed::v4_str(&A.ipv4),
        seed::v4_str(&B.ipv4),
        seed::v4_str(&C.ipv4),
        seed::v4_str(&B2.ipv4),
    );

    let t = trace(&["--src", &a, "--dst", &b])?;
    for want in [
        "is an instance on host-2 (192.0.2.2)",
        "Geneve to host-2 (192.0.2.2), VNI 102 (vpc-b), from VNI 101 (vpc-a), tunnel key 1 (pcx-ab)",
        "verdict: forward to the uplink (encapsulated)",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }

    let t = trace(&["--from-host", "host-2", "--src", &b, "--dst", &a])?;
    for want in [
        "uplink (ifindex",
        "Geneve from 192.0.2.2 (host-2): VNI 101 (vpc-a), from VNI 102 (vpc-b) over tunnel key 1",
        "return-route",
        "verdict: forward to pdp-a",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    let t = trace(&["--from-host", "host-3", "--src", &c, "--dst", &b2])?;
    assert!(t.contains("verdict: forward to pdp-b2"), "{t}");

    // `port list`: this host's ports, then the instances of other hosts it may reach.
    let out = peer_dataplane_tests::cli(&dp.pin_dir, &["port", "list"])?;
    let list = String::from_utf8_lossy(&out.stdout);
    let line = |needle: &str| list.lines().find(|l| l.contains(needle)).unwrap_or("");
    assert!(line("pdp-a ").contains("host-1"), "{list}");
    assert!(line("172.16.2.20").contains("host-2 (remote)"), "{list}");
    assert!(line("192.168.2.30").contains("host-3 (remote)"), "{list}");

    // A host that does not carry the source: the CLI says so instead of guessing.
    let out = peer_dataplane_tests::cli(
        &dp.pin_dir,
        &["trace", "--from-host", "host-3", "--src", &b, "--dst", &a],
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("172.16.2.20 is not an instance on host-3"),
        "{err}"
    );
    Ok(())
}

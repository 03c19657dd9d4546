//! BPF_PROG_RUN table: the real XDP program, loaded into the kernel, fed one packet per
//! case on the seed topology (examples/seed.toml). Each case checks the verdict, the
//! output bytes and the counter deltas: global outcome counters and the counters of every
//! peering in both directions (the expected one moves by exactly one, no other moves).
//!
//! Needs root and BPF. Runs inside a network namespace of its own (the ports must be real
//! interfaces for BPF_PROG_RUN's ingress_ifindex and for the devmap).

use anyhow::{anyhow, ensure, Result};
use peer_dataplane::desired::document::{Document, RouteDoc};
use peer_dataplane::desired::validate::validate;
use peer_dataplane::desired::validate::PeeringStatus;
use peer_dataplane::maps::{stored, Entry, Key, Op, RouteKey};
use peer_dataplane_common::acl::acl_set_id;
use peer_dataplane_common::{
    addr, route_key, DropReason, PassReason, RouteValue, DIR_ACCEPTER_TO_REQUESTER,
    DIR_REQUESTER_TO_ACCEPTER, NAME_PEERING, ROUTE_PCX,
};
use peer_dataplane_tests::harness::{
    action_name, run_table, Counters, TestDataplane, XDP_DROP, XDP_PASS, XDP_REDIRECT,
};
use peer_dataplane_tests::netns::{self, Netns};
use peer_dataplane_tests::packets::{self, L2};
use peer_dataplane_tests::seed::{self, Instance, A, B, C, ROUTER_MAC};

enum Expect {
    /// Forwarded to `to`, over peering `pcx` in direction `dir`.
    Redirect {
        to: Instance,
        pcx: &'static str,
        dir: u32,
    },
    Pass(PassReason),
    /// Dropped; counted under the peering too when one is given.
    Drop(DropReason, Option<(&'static str, u32)>),
}

/// A change to the installed state for one case, undone afterwards.
enum Setup {
    None,
    Doc(fn(&mut Document)),
    /// Raw map writes that no valid document can produce (defence in depth).
    Raw(fn(&TestDataplane) -> Vec<Op>),
}

struct Case {
    name: &'static str,
    ingress: &'static str,
    packet: Vec<u8>,
    expect: Expect,
    setup: Setup,
    fragment: bool,
    ipv4_options: bool,
}

fn case(name: &'static str, from: Instance, packet: Vec<u8>, expect: Expect) -> Case {
    Case {
        name,
        ingress: from.port,
        packet,
        expect,
        setup: Setup::None,
        fragment: false,
        ipv4_options: false,
    }
}

fn l2(from: Instance) -> L2 {
    L2 {
        src: from.mac,
        dst: ROUTER_MAC,
        vlan: None,
    }
}

fn udp4(from: Instance, to: [u8; 4]) -> Vec<u8> {
    packets::udp4(
        l2(from),
        from.ipv4,
        to,
        64,
        40000,
        7000,
        b"hello over the peering",
    )
}

const AB: &str = "pcx-ab";
const BC: &str = "pcx-bc";
const RA: u32 = DIR_REQUESTER_TO_ACCEPTER;
const AR: u32 = DIR_ACCEPTER_TO_REQUESTER;

fn fwd(to: Instance, pcx: &'static str, dir: u32) -> Expect {
    Expect::Redirect { to, pcx, dir }
}

fn truncate(mut p: Vec<u8>, len: usize) -> Vec<u8> {
    p.truncate(len);
    p
}

fn cases() -> Vec<Case> {
    let vlan = L2 {
        vlan: Some(100),
        ..l2(A)
    };
    let mut v = vec![
        // --- forwarding, both families, both directions, every transport
        case("udp4 a->b", A, udp4(A, B.ipv4), fwd(B, AB, RA)),
        case(
            "udp4 b->a (reply direction)",
            B,
            udp4(B, A.ipv4),
            fwd(A, AB, AR),
        ),
        case(
            "tcp4 syn a->b",
            A,
            packets::tcp4(l2(A), A.ipv4, B.ipv4, 64, 40000, 443),
            fwd(B, AB, RA),
        ),
        case(
            "icmp4 echo a->b",
            A,
            packets::icmp4_echo(l2(A), A.ipv4, B.ipv4, 64),
            fwd(B, AB, RA),
        ),
        case("udp4 b->c", B, udp4(B, C.ipv4), fwd(C, BC, RA)),
        case(
            "udp6 a->b",
            A,
            packets::udp6(l2(A), A.ipv6, B.ipv6, 64, 5353, 53, b"q"),
            fwd(B, AB, RA),
        ),
        case(
            "tcp6 b->c",
            B,
            packets::tcp6(l2(B), B.ipv6, C.ipv6, 64, 1234, 22),
            fwd(C, BC, RA),
        ),
        case(
            "icmp6 echo c->b",
            C,
            packets::icmp6_echo(l2(C), C.ipv6, B.ipv6, 64),
            fwd(B, BC, AR),
        ),
        case(
            "vlan-tagged udp4 a->b: tag popped",
            A,
            packets::udp4(vlan, A.ipv4, B.ipv4, 64, 1, 2, b"x"),
            fwd(B, AB, RA),
        ),
        case(
            "ttl 2 is forwarded with ttl 1",
            A,
            packets::udp4(l2(A), A.ipv4, B.ipv4, 2, 1, 2, b"x"),
            fwd(B, AB, RA),
        ),
        case(
            "source inside own vpc but not the port's address (instance routing for its vpc)",
            A,
            packets::udp4(l2(A), [10, 0, 9, 9], B.ipv4, 64, 1, 2, b"x"),
            fwd(B, AB, RA),
        ),
        // --- drops
        case(
            "ttl 1 expires",
            A,
            packets::udp4(l2(A), A.ipv4, B.ipv4, 1, 1, 2, b"x"),
            Expect::Drop(DropReason::TtlExceeded, Some((AB, RA))),
        ),
        case(
            "hop limit 1 expires",
            B,
            packets::udp6(l2(B), B.ipv6, C.ipv6, 1, 1, 2, b"x"),
            Expect::Drop(DropReason::TtlExceeded, Some((BC, RA))),
        ),
        case(
            "a->c: no route (peering is not transitive)",
            A,
            udp4(A, C.ipv4),
            Expect::Drop(DropReason::NoRoute, None),
        ),
        case(
            "a->c ipv6: no route",
            A,
            packets::udp6(l2(A), A.ipv6, C.ipv6, 64, 1, 2, b"x"),
            Expect::Drop(DropReason::NoRoute, None),
        ),
        case(
            "b relays a's packet to c: transitive",
            B,
            packets::udp4(l2(B), A.ipv4, C.ipv4, 64, 1, 2, b"relayed"),
            Expect::Drop(DropReason::Transitive, Some((BC, RA))),
        ),
        case(
            "b relays a's ipv6 packet to c: transitive",
            B,
            packets::udp6(l2(B), A.ipv6, C.ipv6, 64, 1, 2, b"relayed"),
            Expect::Drop(DropReason::Transitive, Some((BC, RA))),
        ),
        case(
            "no instance at 172.16.2.99",
            A,
            udp4(A, [172, 16, 2, 99]),
            Expect::Drop(DropReason::NoEndpoint, Some((AB, RA))),
        ),
        // --- parse errors and encapsulations
        case(
            "frame of 14 bytes claiming ipv4",
            A,
            truncate(udp4(A, B.ipv4), 14),
            Expect::Drop(DropReason::ParseError, None),
        ),
        case(
            "ipv4 header cut at 10 bytes",
            A,
            truncate(udp4(A, B.ipv4), 24),
            Expect::Drop(DropReason::ParseError, None),
        ),
        case(
            "ipv4 total length past the frame",
            A,
            truncate(udp4(A, B.ipv4), 40),
            Expect::Drop(DropReason::ParseError, None),
        ),
        case(
            "ipv4 ihl 4",
            A,
            patched(udp4(A, B.ipv4), 14, 0x44),
            Expect::Drop(DropReason::ParseError, None),
        ),
        case(
            "version 6 in an ipv4 ethertype",
            A,
            patched(udp4(A, B.ipv4), 14, 0x65),
            Expect::Drop(DropReason::ParseError, None),
        ),
        case(
            "udp header cut by ipv4 total length",
            A,
            short_udp(),
            Expect::Drop(DropReason::ParseError, None),
        ),
        case(
            "ipv6 header cut at 30 bytes",
            A,
            truncate(packets::udp6(l2(A), A.ipv6, B.ipv6, 64, 1, 2, b"x"), 44),
            Expect::Drop(DropReason::ParseError, None),
        ),
        case(
            "tcp header cut (tcp6, payload length says 10)",
            A,
            tcp6_cut(),
            Expect::Drop(DropReason::ParseError, None),
        ),
        case(
            "802.1ad outer tag",
            A,
            ethertype(udp4(A, B.ipv4), 0x88a8),
            Expect::Drop(DropReason::UnsupportedEncap, None),
        ),
        case(
            "two stacked 802.1Q tags",
            A,
            qinq(),
            Expect::Drop(DropReason::UnsupportedEncap, None),
        ),
        // --- handed to the kernel untouched
        case("arp", A, arp(), Expect::Pass(PassReason::NotIp)),
        case(
            "intra-vpc destination (local route)",
            A,
            udp4(A, [10, 0, 3, 5]),
            Expect::Pass(PassReason::LocalRoute),
        ),
        case(
            "dhcp broadcast",
            A,
            packets::udp4(l2(A), [0, 0, 0, 0], [255, 255, 255, 255], 64, 68, 67, b"d"),
            Expect::Pass(PassReason::NotRoutable),
        ),
        case(
            "ipv6 link-local destination",
            A,
            link_local6(),
            Expect::Pass(PassReason::NotRoutable),
        ),
    ];

    let mut c = case(
        "frame from an interface that is not a port",
        A,
        udp4(A, B.ipv4),
        Expect::Pass(PassReason::UnknownPort),
    );
    c.ingress = "pdp-a-peer";
    v.push(c);

    let mut c = case(
        "ipv4 options are forwarded",
        A,
        packets::with_ipv4_options(&udp4(A, B.ipv4), &[1, 1, 1, 0]),
        fwd(B, AB, RA),
    );
    c.ipv4_options = true;
    v.push(c);
    let mut c = case(
        "ipv4 first fragment",
        A,
        packets::as_ipv4_fragment(&udp4(A, B.ipv4), 0, true),
        fwd(B, AB, RA),
    );
    c.fragment = true;
    v.push(c);
    let mut c = case(
        "ipv4 later fragment (no transport header)",
        A,
        packets::as_ipv4_fragment(&udp4(A, B.ipv4), 185, false),
        fwd(B, AB, RA),
    );
    c.fragment = true;
    v.push(c);
    let mut c = case(
        "ipv6 with fragment extension header",
        A,
        ipv6_fragment(),
        fwd(B, AB, RA),
    );
    c.fragment = true;
    v.push(c);
    let mut c = case(
        "ipv6 later fragment: its payload is not walked as extension headers",
        A,
        ipv6_later_fragment(),
        fwd(B, AB, RA),
    );
    c.fragment = true;
    v.push(c);
    let mut c = case(
        "tiny first fragment with a cut udp header",
        A,
        packets::as_ipv4_fragment(&short_udp(), 0, true),
        Expect::Drop(DropReason::ParseError, None),
    );
    c.fragment = false; // the parse error comes before the fragment is noted
    v.push(c);

    // --- state-dependent cases
    let mut c = case(
        "peering deleted: blackhole",
        A,
        udp4(A, B.ipv4),
        Expect::Drop(DropReason::PeeringInactive, Some((AB, RA))),
    );
    c.setup = Setup::Doc(|d| set_status(d, AB, "deleted"));
    v.push(c);
    let mut c = case(
        "peering pending acceptance",
        B,
        udp4(B, A.ipv4),
        Expect::Drop(DropReason::PeeringInactive, Some((AB, AR))),
    );
    c.setup = Setup::Doc(|d| set_status(d, AB, "pending-acceptance"));
    v.push(c);
    let mut c = case(
        "peering rejected (ipv6)",
        A,
        packets::udp6(l2(A), A.ipv6, B.ipv6, 64, 1, 2, b"x"),
        Expect::Drop(DropReason::PeeringInactive, Some((AB, RA))),
    );
    c.setup = Setup::Doc(|d| set_status(d, AB, "rejected"));
    v.push(c);
    let mut c = case(
        "receiver has no return route",
        A,
        udp4(A, B.ipv4),
        Expect::Drop(DropReason::NoReturnRoute, Some((AB, RA))),
    );
    c.setup = Setup::Doc(|d| remove_route(d, "rtb-b", "10.0.0.0/16"));
    v.push(c);
    let mut c = case(
        "blackhole route",
        A,
        udp4(A, B.ipv4),
        Expect::Drop(DropReason::Blackhole, None),
    );
    c.setup = Setup::Doc(|d| add_route(d, "rtb-a", "172.16.2.0/24", "blackhole"));
    v.push(c);
    let mut c = case(
        "more specific route to the peering still forwards",
        A,
        udp4(A, B.ipv4),
        fwd(B, AB, RA),
    );
    c.setup = Setup::Doc(|d| add_route(d, "rtb-a", "172.16.2.16/28", "pcx-ab"));
    v.push(c);
    let mut c = case(
        "route to the peering outside the peer vpc",
        A,
        udp4(A, C.ipv4),
        Expect::Drop(DropReason::OutsidePeer, Some((AB, RA))),
    );
    c.setup = Setup::Raw(|dp| vec![raw_route(dp, "rtb-a", [192, 168, 0, 0], 16, AB)]);
    v.push(c);
    let mut c = case(
        "route to a peering that does not join the sender",
        A,
        udp4(A, C.ipv4),
        Expect::Drop(DropReason::PeeringMismatch, None),
    );
    c.setup = Setup::Raw(|dp| vec![raw_route(dp, "rtb-a", [192, 168, 0, 0], 16, BC)]);
    v.push(c);
    let mut c = case(
        "route to a peering with no entry",
        A,
        udp4(A, B.ipv4),
        Expect::Drop(DropReason::PeeringInactive, None),
    );
    c.setup = Setup::Raw(|dp| vec![Op::del::<stored::Peerings>(slot(dp, AB))]);
    v.push(c);
    // --- network ACLs (stateless; lowest rule number first; implicit final deny)
    let deny_then_allow: fn(&mut Document) = |d| {
        acl(
            d,
            "subnet-a2",
            &[
                (
                    100,
                    "egress",
                    "udp",
                    Some((7000, 7000)),
                    "172.16.0.0/16",
                    "deny",
                ),
                (200, "egress", "all", None, "0.0.0.0/0", "allow"),
            ],
        )
    };
    let mut c = case(
        "nacl egress: deny rule 100 before allow 200",
        A,
        udp4(A, B.ipv4),
        Expect::Drop(DropReason::NaclDeny, Some((AB, RA))),
    );
    c.setup = Setup::Doc(deny_then_allow);
    v.push(c);
    let mut c = case(
        "nacl egress: other port falls through to allow 200",
        A,
        packets::udp4(l2(A), A.ipv4, B.ipv4, 64, 40000, 7001, b"x"),
        fwd(B, AB, RA),
    );
    c.setup = Setup::Doc(deny_then_allow);
    v.push(c);
    let mut c = case(
        "nacl: allow 100 wins over a later deny",
        A,
        udp4(A, B.ipv4),
        fwd(B, AB, RA),
    );
    c.setup = Setup::Doc(|d| {
        acl(
            d,
            "subnet-a2",
            &[
                (100, "egress", "all", None, "0.0.0.0/0", "allow"),
                (200, "egress", "udp", None, "172.16.2.20/32", "deny"),
            ],
        )
    });
    v.push(c);
    let mut c = case(
        "nacl: implicit deny (only tcp allowed)",
        A,
        udp4(A, B.ipv4),
        Expect::Drop(DropReason::NaclDeny, Some((AB, RA))),
    );
    c.setup = Setup::Doc(|d| {
        acl(
            d,
            "subnet-a2",
            &[(100, "egress", "tcp", None, "0.0.0.0/0", "allow")],
        )
    });
    v.push(c);
    let port_range: fn(&mut Document) = |d| {
        acl(
            d,
            "subnet-a2",
            &[(
                100,
                "egress",
                "tcp",
                Some((1000, 2000)),
                "0.0.0.0/0",
                "allow",
            )],
        )
    };
    let mut c = case(
        "nacl: tcp port inside the allowed range",
        A,
        packets::tcp4(l2(A), A.ipv4, B.ipv4, 64, 40000, 1500),
        fwd(B, AB, RA),
    );
    c.setup = Setup::Doc(port_range);
    v.push(c);
    let mut c = case(
        "nacl: tcp port outside the allowed range",
        A,
        packets::tcp4(l2(A), A.ipv4, B.ipv4, 64, 40000, 443),
        Expect::Drop(DropReason::NaclDeny, Some((AB, RA))),
    );
    c.setup = Setup::Doc(port_range);
    v.push(c);
    let mut c = case(
        "nacl: icmp allowed",
        A,
        packets::icmp4_echo(l2(A), A.ipv4, B.ipv4, 64),
        fwd(B, AB, RA),
    );
    c.setup = Setup::Doc(|d| {
        acl(
            d,
            "subnet-a2",
            &[(100, "egress", "icmp", None, "172.16.0.0/16", "allow")],
        )
    });
    v.push(c);
    let mut c = case(
        "nacl: ipv6 destination denied",
        A,
        packets::udp6(l2(A), A.ipv6, B.ipv6, 64, 1, 2, b"x"),
        Expect::Drop(DropReason::NaclDeny, Some((AB, RA))),
    );
    c.setup = Setup::Doc(|d| {
        acl(
            d,
            "subnet-a2",
            &[
                (100, "egress", "all", None, "fd00:b::/48", "deny"),
                (200, "egress", "all", None, "::/0", "allow"),
            ],
        )
    });
    v.push(c);
    let mut c = case(
        "nacl ingress at the receiver's subnet",
        A,
        udp4(A, B.ipv4),
        Expect::Drop(DropReason::NaclDeny, Some((AB, RA))),
    );
    c.setup = Setup::Doc(|d| {
        acl(
            d,
            "subnet-b2",
            &[
                (100, "ingress", "all", None, "10.0.0.0/16", "deny"),
                (200, "ingress", "all", None, "0.0.0.0/0", "allow"),
                (100, "egress", "all", None, "0.0.0.0/0", "allow"),
            ],
        )
    });
    v.push(c);
    let mut c = case(
        "nacl: an ipv6 ::/0 rule does not cover ipv4",
        A,
        udp4(A, B.ipv4),
        Expect::Drop(DropReason::NaclDeny, Some((AB, RA))),
    );
    c.setup = Setup::Doc(|d| {
        acl(
            d,
            "subnet-a2",
            &[(100, "egress", "all", None, "::/0", "allow")],
        )
    });
    v.push(c);
    let mut c = case(
        "nacl: a later fragment has no port, so port rules do not match it",
        A,
        packets::as_ipv4_fragment(&udp4(A, B.ipv4), 185, false),
        Expect::Drop(DropReason::NaclDeny, Some((AB, RA))),
    );
    c.setup = Setup::Doc(|d| {
        acl(
            d,
            "subnet-a2",
            &[(
                100,
                "egress",
                "udp",
                Some((7000, 7000)),
                "0.0.0.0/0",
                "allow",
            )],
        )
    });
    c.fragment = true;
    v.push(c);

    let mut c = case(
        "destination port missing from the devmap",
        A,
        udp4(A, B.ipv4),
        Expect::Drop(DropReason::RedirectFailed, Some((AB, RA))),
    );
    c.setup = Setup::Raw(|_| vec![Op::del::<stored::Devmap>(netns::ifindex(B.port))]);
    v.push(c);
    v
}

// ---------------------------------------------------------------------------------------
// packet variants

fn patched(mut p: Vec<u8>, off: usize, byte: u8) -> Vec<u8> {
    p[off] = byte;
    packets::fix_ipv4_checksum(&mut p);
    p
}

fn ethertype(mut p: Vec<u8>, t: u16) -> Vec<u8> {
    p[12..14].copy_from_slice(&t.to_be_bytes());
    p
}

fn qinq() -> Vec<u8> {
    let inner = packets::udp4(
        L2 {
            vlan: Some(7),
            ..l2(A)
        },
        A.ipv4,
        B.ipv4,
        64,
        1,
        2,
        b"x",
    );
    let mut out = inner[..12].to_vec();
    out.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    out.extend_from_slice(&inner[12..]);
    out
}

/// UDP whose IPv4 total length leaves only 4 bytes for the 8-byte UDP header.
fn short_udp() -> Vec<u8> {
    let mut p = udp4(A, B.ipv4);
    p[16..18].copy_from_slice(&24u16.to_be_bytes());
    packets::fix_ipv4_checksum(&mut p);
    p
}

fn tcp6_cut() -> Vec<u8> {
    let mut p = packets::tcp6(l2(A), A.ipv6, B.ipv6, 64, 1, 2);
    p[18..20].copy_from_slice(&10u16.to_be_bytes());
    p
}

fn ipv6_fragment() -> Vec<u8> {
    let p = packets::udp6(l2(A), A.ipv6, B.ipv6, 64, 1, 2, b"fragmented");
    let mut out = p[..54].to_vec();
    out[20] = 44; // next header: fragment
    let plen = u16::from_be_bytes([p[18], p[19]]) + 8;
    out[18..20].copy_from_slice(&plen.to_be_bytes());
    out.extend_from_slice(&[17, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef]); // udp, offset 0, M=1
    out.extend_from_slice(&p[54..]);
    out
}

/// A later IPv6 fragment (offset 64) of a packet whose fragmentable part starts with a
/// destination-options header. Its own payload starts with bytes that, read as such a
/// header, would claim 2,048 bytes: a parser that walked them would call it a parse error.
fn ipv6_later_fragment() -> Vec<u8> {
    let p = packets::udp6(l2(A), A.ipv6, B.ipv6, 64, 1, 2, b"0123456789abcdef");
    let payload = [&[60u8, 255, 17, 0][..], &p[54..]].concat();
    let mut out = p[..54].to_vec(); // Ethernet and IPv6 headers
    out[20] = 44; // next header: fragment
    let plen = (8 + payload.len()) as u16;
    out[18..20].copy_from_slice(&plen.to_be_bytes());
    let offset_units: u16 = 8; // 64 bytes
    let frag = (offset_units << 3).to_be_bytes();
    out.extend_from_slice(&[60, 0, frag[0], frag[1], 0xde, 0xad, 0xbe, 0xef]); // M=0
    out.extend_from_slice(&payload);
    out
}

fn arp() -> Vec<u8> {
    let mut p = vec![0xff; 6];
    p.extend_from_slice(&A.mac);
    p.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    p.extend_from_slice(&A.mac);
    p.extend_from_slice(&A.ipv4);
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&A.gw4);
    p
}

fn link_local6() -> Vec<u8> {
    let mut ll = [0u8; 16];
    ll[0] = 0xfe;
    ll[1] = 0x80;
    ll[15] = 1;
    packets::icmp6_echo(l2(A), A.ipv6, ll, 64)
}

// ---------------------------------------------------------------------------------------
// state helpers

fn set_status(d: &mut Document, pcx: &str, status: &str) {
    d.peerings.iter_mut().find(|p| p.id == pcx).unwrap().status =
        PeeringStatus::parse(status).expect("a status name");
}

type AclRule<'a> = (u32, &'a str, &'a str, Option<(u16, u16)>, &'a str, &'a str);

/// Gives `subnet` a network ACL with `rules` (number, direction, protocol, ports, cidr,
/// action).
fn acl(d: &mut Document, subnet: &str, rules: &[AclRule]) {
    let vpc = d
        .subnets
        .iter()
        .find(|s| s.id == subnet)
        .unwrap()
        .vpc
        .clone();
    let id = format!("acl-{subnet}");
    d.network_acls
        .push(peer_dataplane::desired::document::NetworkAclDoc {
            id: id.clone(),
            vpc,
            rules: rules
                .iter()
                .map(|(number, direction, protocol, ports, cidr, action)| {
                    peer_dataplane::desired::document::AclRuleDoc {
                        number: *number,
                        direction: direction.to_string(),
                        protocol: protocol.to_string(),
                        port_from: ports.map(|p| p.0),
                        port_to: ports.map(|p| p.1),
                        cidr: cidr.to_string(),
                        action: action.to_string(),
                    }
                })
                .collect(),
        });
    d.subnets
        .iter_mut()
        .find(|s| s.id == subnet)
        .unwrap()
        .network_acl = Some(id);
}

fn remove_route(d: &mut Document, rtb: &str, dest: &str) {
    d.route_tables
        .iter_mut()
        .find(|t| t.id == rtb)
        .unwrap()
        .routes
        .retain(|r| r.destination != dest);
}

fn add_route(d: &mut Document, rtb: &str, dest: &str, target: &str) {
    let t = d.route_tables.iter_mut().find(|t| t.id == rtb).unwrap();
    t.routes.push(RouteDoc::new(dest, target));
}

fn slot(dp: &TestDataplane, pcx: &str) -> u32 {
    dp.installed.ids.get(NAME_PEERING, pcx).unwrap()
}

fn raw_route(dp: &TestDataplane, rtb: &str, net: [u8; 4], plen: u32, pcx: &str) -> Op {
    let table = dp.installed.route_table_key(rtb).unwrap();
    let (prefix_len, data) = route_key(table, &addr::from_v4(net), plen, true);
    Op::put::<stored::Routes>(
        RouteKey { prefix_len, data },
        RouteValue {
            kind: ROUTE_PCX,
            target: slot(dp, pcx),
        },
    )
}

// ---------------------------------------------------------------------------------------
// the runner

fn run_case(dp: &mut TestDataplane, c: &Case) -> Result<()> {
    apply_setup(dp, c)?;
    let before = dp.counters(&[AB, BC])?;
    let out = dp.run(netns::ifindex(c.ingress), &c.packet)?;
    let after = dp.counters(&[AB, BC])?;
    let mut problems = counter_problems(c, &before, &after);
    problems.extend(output_problems(c, &out));
    undo_setup(dp, c)?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(problems.join("\n    ")))
    }
}

/// The case's own state change, before its packet.
fn apply_setup(dp: &mut TestDataplane, c: &Case) -> Result<()> {
    match &c.setup {
        Setup::None => {}
        Setup::Doc(f) => {
            let mut d = seed::seed_doc();
            f(&mut d);
            dp.install(&d)?;
        }
        Setup::Raw(f) => {
            for op in f(dp) {
                peer_dataplane::maps::DataplaneMaps::write(&mut dp.installed.maps, &op)?;
            }
            dp.installed.maps.bump_epoch()?;
        }
    }
    Ok(())
}

/// Undoes the case's state change.
fn undo_setup(dp: &mut TestDataplane, c: &Case) -> Result<()> {
    match &c.setup {
        Setup::None => {}
        Setup::Doc(_) => {
            dp.install(&seed::seed_doc())?;
        }
        Setup::Raw(_) => {
            dp.installed.mirror = dp.installed.maps.read_state()?;
            dp.install(&seed::seed_doc())?;
        }
    }
    Ok(())
}

/// The XDP action a case expects.
fn expected_action(c: &Case) -> u32 {
    match &c.expect {
        Expect::Redirect { .. } => XDP_REDIRECT,
        Expect::Pass(_) => XDP_PASS,
        Expect::Drop(..) => XDP_DROP,
    }
}

/// Every counter delta that is not what the case expects (one packet, counted once).
fn counter_problems(c: &Case, before: &Counters, after: &Counters) -> Vec<String> {
    let len = c.packet.len() as u64;
    let (g0, g1) = (&before.0, &after.0);
    let mut problems = Vec::new();
    let mut check = |what: &str, got: u64, want: u64| {
        if got != want {
            problems.push(format!("{what}: delta {got}, expected {want}"));
        }
    };
    check("rx_packets", g1.rx_packets - g0.rx_packets, 1);
    check("rx_bytes", g1.rx_bytes - g0.rx_bytes, len);
    check("fragments", g1.fragments - g0.fragments, c.fragment as u64);
    check(
        "ipv4_options",
        g1.ipv4_options - g0.ipv4_options,
        c.ipv4_options as u64,
    );

    let (redirect, pass, drop, pcx_hit) = match &c.expect {
        Expect::Redirect { pcx, dir, .. } => (1, None, None, Some((*pcx, *dir))),
        Expect::Pass(r) => (0, Some(*r), None, None),
        Expect::Drop(r, p) => (0, None, Some(*r), *p),
    };
    check(
        "redirected_packets",
        g1.redirected_packets - g0.redirected_packets,
        redirect,
    );
    check(
        "passed_packets",
        g1.passed_packets - g0.passed_packets,
        pass.is_some() as u64,
    );
    check(
        "dropped_packets",
        g1.dropped_packets - g0.dropped_packets,
        drop.is_some() as u64,
    );
    for r in PassReason::ALL {
        check(
            &format!("pass[{}]", r.as_str()),
            g1.pass[r as usize] - g0.pass[r as usize],
            (pass == Some(r)) as u64,
        );
    }
    for r in DropReason::ALL {
        check(
            &format!("drop[{}]", r.as_str()),
            g1.drop[r as usize] - g0.drop[r as usize],
            (drop == Some(r)) as u64,
        );
    }
    for ((pcx, dir, p0), (_, _, p1)) in before.1.iter().zip(after.1.iter()) {
        let hit = pcx_hit == Some((*pcx, *dir));
        let tag = format!("{pcx} dir {dir}");
        check(
            &format!("{tag} packets"),
            p1.packets - p0.packets,
            (hit && redirect == 1) as u64,
        );
        check(
            &format!("{tag} bytes"),
            p1.bytes - p0.bytes,
            if hit && redirect == 1 { len } else { 0 },
        );
        for r in DropReason::ALL {
            let want = (hit && drop == Some(r)) as u64;
            check(
                &format!("{tag} drop[{}]", r.as_str()),
                p1.drop[r as usize] - p0.drop[r as usize],
                want,
            );
        }
    }

    problems
}

/// The verdict and the output frame, against the case.
fn output_problems(c: &Case, out: &peer_dataplane_tests::harness::RunOutput) -> Vec<String> {
    let mut problems = Vec::new();
    let want_action = expected_action(c);
    if out.action != want_action {
        problems.push(format!(
            "verdict {}, expected {}",
            action_name(out.action),
            action_name(want_action)
        ));
    }
    let want_bytes = match &c.expect {
        Expect::Redirect { to, .. } => packets::forwarded(&c.packet, to.mac, ROUTER_MAC),
        _ => c.packet.clone(),
    };
    if out.data != want_bytes {
        problems.push(format!(
            "output bytes differ:\n      got  {:02x?}\n      want {:02x?}",
            out.data, want_bytes
        ));
    }
    if matches!(c.expect, Expect::Redirect { .. })
        && out.data[14] >> 4 == 4
        && !packets::ipv4_checksum_ok(&out.data)
    {
        problems.push("forwarded IPv4 header checksum does not verify".into());
    }

    problems
}

#[test]
fn prog_run_table() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let ns: Netns = seed::ports_only(&peer_dataplane_tests::unique("prog"))?;
    netns::enter(&ns.path())?;
    let mut dp = TestDataplane::load()?;
    dp.install(&seed::seed_doc())?;

    let cases = cases();
    assert!(cases.len() >= 30, "the table must keep at least 30 cases");
    run_table("cases", &cases, |c| c.name, |c| run_case(&mut dp, c));
    eprintln!("{} BPF_PROG_RUN cases passed", cases.len());
    Ok(())
}

#[test]
fn every_drop_reason_of_this_stage_is_covered_by_the_table() {
    // sg-deny and rate-limited depend on state one packet leaves for the next: the
    // scenarios of prog_run_policy.rs cover them. The overlay's reasons need a host of a
    // fleet: prog_run_overlay.rs covers them (and checks that it does).
    let mut future = vec![DropReason::SgDeny, DropReason::RateLimited];
    future.extend(peer_dataplane_common::reason::FLEET_DROPS);
    let covered: Vec<DropReason> = cases()
        .iter()
        .filter_map(|c| match c.expect {
            Expect::Drop(r, _) => Some(r),
            _ => None,
        })
        .collect();
    for r in DropReason::ALL {
        if !future.contains(&r) {
            assert!(
                covered.contains(&r),
                "no BPF_PROG_RUN case drops with {}",
                r.as_str()
            );
        }
    }
    for r in PassReason::ALL
        .into_iter()
        .filter(|r| *r != PassReason::Underlay)
    {
        assert!(
            cases()
                .iter()
                .any(|c| matches!(c.expect, Expect::Pass(p) if p == r)),
            "no case passes with {}",
            r.as_str()
        );
    }
}

/// Changing one network ACL (here: growing it, which used to shift every later ACL's
/// counter range) leaves every other ACL's installed entries untouched: the plan writes
/// nothing of theirs, their per-rule hit counters keep counting from where they were,
/// and packets they decide go on being decided the same way.
#[test]
fn an_acl_change_leaves_other_acls_and_their_hit_counters_alone() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let ns: Netns = seed::ports_only(&peer_dataplane_tests::unique("acliso"))?;
    netns::enter(&ns.path())?;
    let mut dp = TestDataplane::load()?;
    // acl-subnet-a2 sorts before acl-subnet-b2: growing it is what used to move b2's range.
    let doc = |a_rules: usize| {
        let mut d = seed::seed_doc();
        let mut rules: Vec<AclRule> = vec![(100, "egress", "all", None, "0.0.0.0/0", "allow")];
        for i in 0..a_rules {
            rules.push((
                200 + i as u32,
                "egress",
                "tcp",
                Some((22, 22)),
                "0.0.0.0/0",
                "deny",
            ));
        }
        acl(&mut d, "subnet-a2", &rules);
        acl(
            &mut d,
            "subnet-b2",
            &[
                (
                    100,
                    "ingress",
                    "udp",
                    Some((7000, 7000)),
                    "10.0.0.0/16",
                    "allow",
                ),
                (200, "ingress", "all", None, "0.0.0.0/0", "deny"),
            ],
        );
        d
    };
    dp.install(&doc(1))?;
    let hits_of_b = |dp: &TestDataplane| -> Result<Vec<(u32, u64)>> {
        Ok(peer_dataplane::views::installed::acl_hits(
            &dp.installed.maps.snapshot()?,
            Some("acl-subnet-b2"),
        )?
        .iter()
        .filter(|h| h.direction == "ingress")
        .map(|h| (h.rule, h.hits))
        .collect())
    };
    let a_to_b = |dp: &TestDataplane, n: usize| -> Result<()> {
        for _ in 0..n {
            let out = dp.run(netns::ifindex(A.port), &udp4(A, B.ipv4))?;
            ensure!(out.action == XDP_REDIRECT, "a -> b udp 7000 not forwarded");
        }
        Ok(())
    };
    a_to_b(&dp, 3)?;
    assert_eq!(hits_of_b(&dp)?, vec![(100, 3), (200, 0)]);
    let b = dp
        .installed
        .ids
        .get(peer_dataplane_common::NAME_ACL, "acl-subnet-b2")
        .unwrap();
    let b_sets = |m: &peer_dataplane::maps::MapState| -> Vec<_> {
        m.acl_meta
            .iter()
            .filter(|(set, _)| acl_set_id(**set) == b)
            .map(|(k, v)| (*k, *v))
            .collect()
    };
    let before = b_sets(&dp.installed.maps.read_state()?);

    // Grow acl-subnet-a2 by 40 rules.
    let topo = validate(&doc(41)).map_err(|e| anyhow!("{e}"))?;
    let (_, _, ops) = peer_dataplane::reconcile::plan_install(
        &topo,
        &dp.installed.ids,
        &dp.installed.mirror,
        &peer_dataplane::bpf::KernelIfindex::default(),
    )?;
    let touching_b: Vec<String> = ops
        .iter()
        .filter(|op| match op {
            Op::Put(Entry::AclMeta(set, _)) | Op::Del(Key::AclMeta(set)) => acl_set_id(*set) == b,
            Op::ResetAclHits(base, n) => before
                .iter()
                .any(|(_, m)| *base < m.hit_base + m.rules && m.hit_base < base + n),
            _ => false,
        })
        .map(|op| format!("{op:?}"))
        .collect();
    assert!(
        touching_b.is_empty(),
        "growing acl-subnet-a2 writes acl-subnet-b2's entries: {touching_b:?}"
    );
    dp.install(&doc(41))?;
    assert_eq!(
        b_sets(&dp.installed.maps.read_state()?),
        before,
        "acl-subnet-b2's sets were rewritten"
    );
    assert_eq!(
        hits_of_b(&dp)?,
        vec![(100, 3), (200, 0)],
        "acl-subnet-b2's hits were reset or moved"
    );
    a_to_b(&dp, 2)?;
    assert_eq!(hits_of_b(&dp)?, vec![(100, 5), (200, 0)]);
    Ok(())
}

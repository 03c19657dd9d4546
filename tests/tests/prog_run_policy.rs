//! BPF_PROG_RUN scenarios for the stateful policy stages: security groups with connection
//! tracking (return traffic, ICMP echo, IPv6, peer-group references, rule changes, expiry,
//! flush) and bandwidth caps (burst, tokens, refill, per direction). Unlike the stateless
//! table in `prog_run.rs`, each scenario is a sequence: what one packet leaves in the maps
//! decides the next one's fate. Every step checks the verdict, the output bytes and the
//! global and per-peering counters.
//!
//! Needs root and BPF; runs in a network namespace of its own.

use anyhow::{anyhow, Result};
use peer_dataplane::desired::document::{Document, SecurityGroupDoc, SgRuleDoc};
use peer_dataplane::maps::{stored, DataplaneMaps, Op};
use peer_dataplane_common::{
    cap::CapConfig,
    conntrack::{
        CT_OTHER_NS, CT_TCP_CLOSING_NS, CT_TCP_ESTABLISHED_NS, CT_TCP_OPENING_NS, CT_TCP_RESET_NS,
        CT_UDP_NS,
    },
    DropReason, DIR_ACCEPTER_TO_REQUESTER, DIR_REQUESTER_TO_ACCEPTER, NAME_PEERING,
};
use peer_dataplane_tests::harness::{
    action_name, run_table, TestDataplane, TEST_EPOCH_NS, XDP_DROP, XDP_REDIRECT,
};
use peer_dataplane_tests::netns::{self, Netns};
use peer_dataplane_tests::packets::{self, ACK, FIN_ACK, L2, RST, SYN, SYN_ACK};
use peer_dataplane_tests::seed::{self, Instance, A, B, C, ROUTER_MAC};
use std::time::Duration;

const AB: &str = "pcx-ab";
const BC: &str = "pcx-bc";
const RA: u32 = DIR_REQUESTER_TO_ACCEPTER;
const AR: u32 = DIR_ACCEPTER_TO_REQUESTER;

#[derive(Clone, Copy)]
enum Expect {
    /// Forwarded to `to` over `pcx` in direction `dir`.
    Fwd(Instance, &'static str, u32),
    /// Dropped, counted under `pcx` and `dir`.
    Drop(DropReason, &'static str, u32),
}

#[allow(clippy::large_enum_variant)] // a few dozen test steps
enum Action {
    Send(&'static str, Instance, Vec<u8>, Expect),
    /// Installs the seed document changed by the function (on top of the scenario's).
    Install(fn(&mut Document)),
    /// Moves the program's (frozen) clock forward this many seconds.
    Wait(u64),
    /// `peer-dataplane conntrack flush`, through the same code.
    Flush,
    /// Moves the program's (frozen) clock forward by exactly this much.
    WaitExactly(Duration),
    /// Sets a cap on `pcx` in direction `dir` directly in the peering entry, with a full
    /// bucket (rates far below what a document can express make the timing of a test
    /// irrelevant).
    Cap(&'static str, u32, CapConfig),
    /// The bucket of `pcx`/`dir` holds exactly `n` packets of `len` bytes of debt.
    Debt(&'static str, u32, u64, u64),
    /// The flow cache holds exactly this many decisions of the current epoch.
    Kept(usize),
    /// Turns kept decisions on or off.
    Cache(bool),
}

struct Scenario {
    name: &'static str,
    doc: fn(&mut Document),
    actions: Vec<Action>,
}

fn l2(from: Instance) -> L2 {
    L2 {
        src: from.mac,
        dst: ROUTER_MAC,
        vlan: None,
    }
}

fn udp(from: Instance, to: Instance, sport: u16, dport: u16) -> Vec<u8> {
    packets::udp4(l2(from), from.ipv4, to.ipv4, 64, sport, dport, b"stateful")
}

fn tcp(from: Instance, to: Instance, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    packets::tcp4_flags(l2(from), from.ipv4, to.ipv4, sport, dport, flags)
}

fn send(what: &'static str, from: Instance, packet: Vec<u8>, expect: Expect) -> Action {
    Action::Send(what, from, packet, expect)
}

// ---------------------------------------------------------------------------------------
// documents

/// (direction, protocol, ports, cidr or `sg-…`)
type Rule = (&'static str, &'static str, Option<(u16, u16)>, &'static str);

fn group(d: &mut Document, id: &str, vpc: &str, rules: &[Rule]) {
    d.security_groups.retain(|g| g.id != id);
    d.security_groups.push(SecurityGroupDoc {
        id: id.into(),
        vpc: vpc.into(),
        rules: rules
            .iter()
            .map(|(direction, protocol, ports, remote)| SgRuleDoc {
                direction: direction.to_string(),
                protocol: protocol.to_string(),
                port_from: ports.map(|p| p.0),
                port_to: ports.map(|p| p.1),
                cidr: (!remote.starts_with("sg-")).then(|| remote.to_string()),
                peer_security_group: remote.starts_with("sg-").then(|| remote.to_string()),
            })
            .collect(),
    });
}

fn attach(d: &mut Document, who: Instance, groups: &[&str]) {
    d.ports
        .iter_mut()
        .find(|p| p.interface == who.port)
        .unwrap()
        .security_groups = Some(groups.iter().map(|g| g.to_string()).collect());
}

/// A may send UDP 7000 and TCP 443 to VPC B, and ICMP anywhere; B accepts UDP 7000 and
/// TCP 443 from VPC A and ICMP from anywhere, and may send nothing on its own.
fn web(d: &mut Document) {
    group(
        d,
        "sg-a",
        "vpc-a",
        &[
            ("egress", "udp", Some((7000, 7000)), "172.16.0.0/16"),
            ("egress", "tcp", Some((443, 443)), "172.16.0.0/16"),
            ("egress", "icmp", None, "0.0.0.0/0"),
            ("egress", "icmpv6", None, "::/0"),
            ("egress", "udp", Some((53, 53)), "fd00:b::/48"),
        ],
    );
    group(
        d,
        "sg-b",
        "vpc-b",
        &[
            ("ingress", "udp", Some((7000, 7000)), "10.0.0.0/16"),
            ("ingress", "tcp", Some((443, 443)), "10.0.0.0/16"),
            ("ingress", "icmp", None, "0.0.0.0/0"),
            ("ingress", "icmpv6", None, "::/0"),
            ("ingress", "udp", Some((53, 53)), "fd00:a::/48"),
        ],
    );
    attach(d, A, &["sg-a"]);
    attach(d, B, &["sg-b"]);
}

fn web_without_b_udp(d: &mut Document) {
    web(d);
    let g = d
        .security_groups
        .iter_mut()
        .find(|g| g.id == "sg-b")
        .unwrap();
    g.rules.retain(|r| r.protocol != "udp");
}

/// B accepts anything from members of A's group only; C sends anything.
fn by_peer_group(d: &mut Document) {
    group(d, "sg-a", "vpc-a", &[("egress", "all", None, "0.0.0.0/0")]);
    group(d, "sg-b", "vpc-b", &[("ingress", "all", None, "sg-a")]);
    group(d, "sg-c", "vpc-c", &[("egress", "all", None, "0.0.0.0/0")]);
    attach(d, A, &["sg-a"]);
    attach(d, B, &["sg-b"]);
    attach(d, C, &["sg-c"]);
}

/// B allows everything in; A has an empty list of groups: nothing leaves A.
fn a_locked(d: &mut Document) {
    group(d, "sg-b", "vpc-b", &[("ingress", "all", None, "0.0.0.0/0")]);
    attach(d, A, &[]);
    attach(d, B, &["sg-b"]);
}

fn plain(_: &mut Document) {}

// ---------------------------------------------------------------------------------------
// scenarios

/// A flow `open`ed by A toward B, then B's `probe` after exactly `timeout_ns` of silence
/// (forwarded: still tracked) and again after `timeout_ns` + 1 ns (refused: forgotten).
fn crossing(
    name: &'static str,
    open: Vec<Action>,
    timeout_ns: u64,
    probe: (&'static str, Vec<u8>),
) -> Scenario {
    let (what, packet) = probe;
    let mut actions = open;
    actions.extend([
        Action::WaitExactly(Duration::from_nanos(timeout_ns)),
        send(what, B, packet.clone(), Expect::Fwd(A, AB, AR)),
        Action::WaitExactly(Duration::from_nanos(timeout_ns + 1)),
        send(what, B, packet, Expect::Drop(DropReason::SgDeny, AB, AR)),
    ]);
    Scenario {
        name,
        doc: web,
        actions,
    }
}

/// `actions`, then `last`.
fn then(mut actions: Vec<Action>, last: Action) -> Vec<Action> {
    actions.push(last);
    actions
}

/// A's TCP handshake to B's port 443 from `sport`, every step forwarded.
fn handshake(sport: u16) -> Vec<Action> {
    vec![
        send("syn", A, tcp(A, B, sport, 443, SYN), Expect::Fwd(B, AB, RA)),
        send(
            "syn-ack",
            B,
            tcp(B, A, 443, sport, SYN_ACK),
            Expect::Fwd(A, AB, AR),
        ),
        send("ack", A, tcp(A, B, sport, 443, ACK), Expect::Fwd(B, AB, RA)),
    ]
}

// ---------------------------------------------------------------------------------------
// flow cache: each kind of change makes a kept decision stale

fn no_route_to_b(d: &mut Document) {
    let t = d.route_tables.iter_mut().find(|t| t.id == "rtb-a").unwrap();
    t.routes.retain(|r| !r.destination.starts_with("172.16."));
}

fn peering_pending(d: &mut Document) {
    let p = d.peerings.iter_mut().find(|p| p.id == AB).unwrap();
    p.status = peer_dataplane::desired::validate::PeeringStatus::PendingAcceptance;
}

fn acl_denies_udp_7000(d: &mut Document) {
    d.network_acls
        .push(peer_dataplane::desired::document::NetworkAclDoc {
            id: "acl-a".into(),
            vpc: "vpc-a".into(),
            rules: vec![
                acl_rule(10, "egress", "udp", Some((7000, 7000)), "deny"),
                acl_rule(20, "egress", "-1", None, "allow"),
                acl_rule(20, "ingress", "-1", None, "allow"),
            ],
        });
    for s in d.subnets.iter_mut().filter(|s| s.vpc == "vpc-a") {
        s.network_acl = Some("acl-a".into());
    }
}

fn acl_rule(
    number: u32,
    direction: &str,
    protocol: &str,
    ports: Option<(u16, u16)>,
    action: &str,
) -> peer_dataplane::desired::document::AclRuleDoc {
    peer_dataplane::desired::document::AclRuleDoc {
        number,
        direction: direction.into(),
        protocol: protocol.into(),
        port_from: ports.map(|p| p.0),
        port_to: ports.map(|p| p.1),
        cidr: "0.0.0.0/0".into(),
        action: action.into(),
    }
}

fn a_in_a_group_without_udp(d: &mut Document) {
    group(
        d,
        "sg-a",
        "vpc-a",
        &[("egress", "tcp", Some((443, 443)), "0.0.0.0/0")],
    );
    attach(d, A, &["sg-a"]);
}

fn b_port_gone(d: &mut Document) {
    d.ports.retain(|p| p.interface != B.port);
}

/// A flow forwarded three times (its decision kept by the second packet at the latest,
/// the first may only mark the flow seen; then used), a change of one kind, and the
/// flow's next packets decided by the new state; the change leaves no decision of the
/// current epoch behind.
fn flow_cache_scenarios(slow: CapConfig, udp_len: u64) -> Vec<Scenario> {
    let flow = || udp(A, B, 40000, 7000);
    let kept = || {
        vec![
            send("first packet", A, flow(), Expect::Fwd(B, AB, RA)),
            send("second packet", A, flow(), Expect::Fwd(B, AB, RA)),
            Action::Kept(1),
            send(
                "third packet (kept decision)",
                A,
                flow(),
                Expect::Fwd(B, AB, RA),
            ),
            Action::Kept(1),
        ]
    };
    let after = |change: Action, expect: Expect| {
        let mut v = kept();
        v.extend([
            change,
            Action::Kept(0),
            send("after the change", A, flow(), expect),
            send("and again", A, flow(), expect),
        ]);
        v
    };
    let dropped = |r: DropReason| Expect::Drop(r, AB, RA);
    vec![
        Scenario {
            name: "flow cache: turned off, no decision is kept or used; on again, kept",
            doc: |_| {},
            actions: {
                let mut v = kept();
                v.extend([
                    Action::Cache(false),
                    Action::Kept(0),
                    send("off", A, flow(), Expect::Fwd(B, AB, RA)),
                    send("off, again", A, flow(), Expect::Fwd(B, AB, RA)),
                    Action::Kept(0),
                    Action::Cache(true),
                    // Its slot's tag still names the flow (kept in an earlier epoch): a
                    // known flow's decision is kept on its first miss.
                    send("on", A, flow(), Expect::Fwd(B, AB, RA)),
                    Action::Kept(1),
                ]);
                v
            },
        },
        Scenario {
            name: "flow cache: a route removed",
            doc: |_| {},
            actions: after(
                Action::Install(no_route_to_b),
                Expect::Drop(DropReason::NoRoute, "", RA),
            ),
        },
        Scenario {
            name: "flow cache: the peering no longer active",
            doc: |_| {},
            actions: after(
                Action::Install(peering_pending),
                dropped(DropReason::PeeringInactive),
            ),
        },
        Scenario {
            name: "flow cache: a network ACL that denies the flow",
            doc: |_| {},
            actions: after(
                Action::Install(acl_denies_udp_7000),
                dropped(DropReason::NaclDeny),
            ),
        },
        Scenario {
            name: "flow cache: a security group that does not allow the flow",
            doc: |_| {},
            actions: after(
                Action::Install(a_in_a_group_without_udp),
                dropped(DropReason::SgDeny),
            ),
        },
        Scenario {
            name: "flow cache: the receiver's port removed",
            doc: |_| {},
            actions: after(
                Action::Install(b_port_gone),
                dropped(DropReason::NoEndpoint),
            ),
        },
        Scenario {
            name: "flow cache: a cap set on the peering",
            doc: |_| {},
            actions: {
                let mut v = kept();
                v.extend([
                    Action::Cap(
                        AB,
                        RA,
                        CapConfig {
                            burst_ns: slow.cost_ns(udp_len),
                            ..slow
                        },
                    ),
                    Action::Kept(0),
                    send("the burst", A, flow(), Expect::Fwd(B, AB, RA)),
                    Action::Kept(1),
                    send(
                        "past the cap (kept decision)",
                        A,
                        flow(),
                        dropped(DropReason::RateLimited),
                    ),
                ]);
                v
            },
        },
    ]
}

fn scenarios() -> Vec<Scenario> {
    let slow = CapConfig {
        // 1 ms per byte: a ~60-byte frame costs ~60 ms of tokens.
        ps_per_byte: 1_000_000_000,
        burst_ns: 0,
    };
    let udp_len = udp(A, B, 40000, 7000).len() as u64;
    let mut all = flow_cache_scenarios(slow, udp_len);
    all.extend(vec![
        Scenario {
            name: "sg: an allowed flow's replies pass without a rule",
            doc: web,
            actions: vec![
                send(
                    "a->b udp 7000",
                    A,
                    udp(A, B, 40000, 7000),
                    Expect::Fwd(B, AB, RA),
                ),
                send(
                    "b->a reply",
                    B,
                    udp(B, A, 7000, 40000),
                    Expect::Fwd(A, AB, AR),
                ),
                send(
                    "a->b again",
                    A,
                    udp(A, B, 40000, 7000),
                    Expect::Fwd(B, AB, RA),
                ),
                send(
                    "b->a from another port: not a reply, b sends nothing",
                    B,
                    udp(B, A, 7001, 40000),
                    Expect::Drop(DropReason::SgDeny, AB, AR),
                ),
                send(
                    "a->b udp 7001: not in a's egress rules",
                    A,
                    udp(A, B, 40000, 7001),
                    Expect::Drop(DropReason::SgDeny, AB, RA),
                ),
            ],
        },
        Scenario {
            name: "sg: tcp handshake and teardown",
            doc: web,
            actions: vec![
                send("syn", A, tcp(A, B, 41000, 443, SYN), Expect::Fwd(B, AB, RA)),
                send(
                    "syn-ack",
                    B,
                    tcp(B, A, 443, 41000, SYN_ACK),
                    Expect::Fwd(A, AB, AR),
                ),
                send("ack", A, tcp(A, B, 41000, 443, ACK), Expect::Fwd(B, AB, RA)),
                // Established: an hour of silence is nothing (5 days).
                Action::Wait(3600),
                send(
                    "ack after an hour",
                    B,
                    tcp(B, A, 443, 41000, ACK),
                    Expect::Fwd(A, AB, AR),
                ),
                send(
                    "fin",
                    A,
                    tcp(A, B, 41000, 443, FIN_ACK),
                    Expect::Fwd(B, AB, RA),
                ),
                send("rst", B, tcp(B, A, 443, 41000, RST), Expect::Fwd(A, AB, AR)),
                // Reset: 10 s.
                Action::Wait(11),
                send(
                    "after the reset expired",
                    B,
                    tcp(B, A, 443, 41000, ACK),
                    Expect::Drop(DropReason::SgDeny, AB, AR),
                ),
                send(
                    "tcp 22 is not allowed",
                    A,
                    tcp(A, B, 41001, 22, SYN),
                    Expect::Drop(DropReason::SgDeny, AB, RA),
                ),
            ],
        },
        Scenario {
            name: "sg: icmp echo is tracked by identifier",
            doc: web,
            actions: vec![
                send(
                    "echo a->b",
                    A,
                    packets::icmp4_echo(l2(A), A.ipv4, B.ipv4, 64),
                    Expect::Fwd(B, AB, RA),
                ),
                send(
                    "echo reply b->a",
                    B,
                    packets::icmp4_echo_reply(l2(B), B.ipv4, A.ipv4, 64, 0x1234),
                    Expect::Fwd(A, AB, AR),
                ),
                send(
                    "echo reply with another id: unsolicited",
                    B,
                    packets::icmp4_echo_reply(l2(B), B.ipv4, A.ipv4, 64, 0x9999),
                    Expect::Drop(DropReason::SgDeny, AB, AR),
                ),
                send(
                    "echo6 a->b",
                    A,
                    packets::icmp6_echo(l2(A), A.ipv6, B.ipv6, 64),
                    Expect::Fwd(B, AB, RA),
                ),
                send(
                    "echo6 reply b->a",
                    B,
                    packets::icmp6_echo_reply(l2(B), B.ipv6, A.ipv6, 64, 0x4321),
                    Expect::Fwd(A, AB, AR),
                ),
                // Others: 600 s.
                Action::Wait(601),
                send(
                    "echo reply after 601 s",
                    B,
                    packets::icmp4_echo_reply(l2(B), B.ipv4, A.ipv4, 64, 0x1234),
                    Expect::Drop(DropReason::SgDeny, AB, AR),
                ),
            ],
        },
        Scenario {
            name: "sg: ipv6 udp, reply, and udp's 30 s timeout",
            doc: web,
            actions: vec![
                send(
                    "a->b udp6 53",
                    A,
                    packets::udp6(l2(A), A.ipv6, B.ipv6, 64, 5353, 53, b"q"),
                    Expect::Fwd(B, AB, RA),
                ),
                Action::Wait(29),
                send(
                    "reply after 29 s",
                    B,
                    packets::udp6(l2(B), B.ipv6, A.ipv6, 64, 53, 5353, b"a"),
                    Expect::Fwd(A, AB, AR),
                ),
                Action::Wait(31),
                send(
                    "reply after 31 s of silence",
                    B,
                    packets::udp6(l2(B), B.ipv6, A.ipv6, 64, 53, 5353, b"a"),
                    Expect::Drop(DropReason::SgDeny, AB, AR),
                ),
                send(
                    "a->b udp6 54: outside the port range",
                    A,
                    packets::udp6(l2(A), A.ipv6, B.ipv6, 64, 5353, 54, b"q"),
                    Expect::Drop(DropReason::SgDeny, AB, RA),
                ),
            ],
        },
        // Every idle timeout, crossed both ways on a clock the test holds: a flow idle for
        // exactly its timeout is alive, one idle a nanosecond longer is gone.
        crossing(
            "conntrack: udp lives exactly 30 s idle",
            vec![send(
                "a->b udp",
                A,
                udp(A, B, 40100, 7000),
                Expect::Fwd(B, AB, RA),
            )],
            CT_UDP_NS,
            ("reply", udp(B, A, 7000, 40100)),
        ),
        Scenario {
            name: "conntrack: an unanswered tcp syn lives exactly 60 s",
            doc: web,
            actions: vec![
                send(
                    "syn 1",
                    A,
                    tcp(A, B, 41100, 443, SYN),
                    Expect::Fwd(B, AB, RA),
                ),
                Action::WaitExactly(Duration::from_nanos(CT_TCP_OPENING_NS)),
                send(
                    "syn-ack after exactly 60 s",
                    B,
                    tcp(B, A, 443, 41100, SYN_ACK),
                    Expect::Fwd(A, AB, AR),
                ),
                send(
                    "syn 2",
                    A,
                    tcp(A, B, 41101, 443, SYN),
                    Expect::Fwd(B, AB, RA),
                ),
                Action::WaitExactly(Duration::from_nanos(CT_TCP_OPENING_NS + 1)),
                send(
                    "syn-ack after 60 s + 1 ns",
                    B,
                    tcp(B, A, 443, 41101, SYN_ACK),
                    Expect::Drop(DropReason::SgDeny, AB, AR),
                ),
            ],
        },
        crossing(
            "conntrack: an established tcp connection lives exactly 5 days idle",
            handshake(41200),
            CT_TCP_ESTABLISHED_NS,
            ("ack", tcp(B, A, 443, 41200, ACK)),
        ),
        crossing(
            "conntrack: after a fin, tcp lives exactly 120 s idle",
            then(
                handshake(41300),
                send(
                    "fin",
                    A,
                    tcp(A, B, 41300, 443, FIN_ACK),
                    Expect::Fwd(B, AB, RA),
                ),
            ),
            CT_TCP_CLOSING_NS,
            ("ack", tcp(B, A, 443, 41300, ACK)),
        ),
        crossing(
            "conntrack: after a rst, tcp lives exactly 10 s idle",
            then(
                handshake(41400),
                send("rst", B, tcp(B, A, 443, 41400, RST), Expect::Fwd(A, AB, AR)),
            ),
            CT_TCP_RESET_NS,
            ("ack", tcp(B, A, 443, 41400, ACK)),
        ),
        crossing(
            "conntrack: icmp echo (other protocols) lives exactly 600 s idle",
            vec![send(
                "echo a->b",
                A,
                packets::icmp4_echo(l2(A), A.ipv4, B.ipv4, 64),
                Expect::Fwd(B, AB, RA),
            )],
            CT_OTHER_NS,
            (
                "echo reply",
                packets::icmp4_echo_reply(l2(B), B.ipv4, A.ipv4, 64, 0x1234),
            ),
        ),
        Scenario {
            name: "sg: tightening a group keeps tracked flows, refuses new ones",
            doc: web,
            actions: vec![
                send(
                    "a->b udp",
                    A,
                    udp(A, B, 40000, 7000),
                    Expect::Fwd(B, AB, RA),
                ),
                Action::Install(web_without_b_udp),
                send(
                    "reply still passes",
                    B,
                    udp(B, A, 7000, 40000),
                    Expect::Fwd(A, AB, AR),
                ),
                send(
                    "the flow goes on",
                    A,
                    udp(A, B, 40000, 7000),
                    Expect::Fwd(B, AB, RA),
                ),
                send(
                    "a new flow meets the new rules",
                    A,
                    udp(A, B, 40001, 7000),
                    Expect::Drop(DropReason::SgDeny, AB, RA),
                ),
            ],
        },
        Scenario {
            name: "sg: flushing conntrack forgets flows",
            doc: web,
            actions: vec![
                send(
                    "a->b udp",
                    A,
                    udp(A, B, 40000, 7000),
                    Expect::Fwd(B, AB, RA),
                ),
                Action::Flush,
                send(
                    "the reply is no longer a reply",
                    B,
                    udp(B, A, 7000, 40000),
                    Expect::Drop(DropReason::SgDeny, AB, AR),
                ),
            ],
        },
        Scenario {
            name: "sg: peer group reference, and an empty group list",
            doc: by_peer_group,
            actions: vec![
                send(
                    "a (member) -> b",
                    A,
                    udp(A, B, 1, 2),
                    Expect::Fwd(B, AB, RA),
                ),
                send(
                    "c (not a member) -> b",
                    C,
                    udp(C, B, 1, 2),
                    Expect::Drop(DropReason::SgDeny, BC, AR),
                ),
                Action::Install(a_locked),
                send(
                    "a with no groups sends nothing new",
                    A,
                    udp(A, B, 3, 4),
                    Expect::Drop(DropReason::SgDeny, AB, RA),
                ),
            ],
        },
        Scenario {
            name: "cap: the burst passes, then tokens run out, then refill",
            doc: plain,
            actions: vec![
                Action::Cap(
                    AB,
                    RA,
                    CapConfig {
                        burst_ns: 3 * slow.cost_ns(udp_len),
                        ..slow
                    },
                ),
                send("1 of burst 3", A, udp(A, B, 1, 2), Expect::Fwd(B, AB, RA)),
                send("2 of burst 3", A, udp(A, B, 1, 2), Expect::Fwd(B, AB, RA)),
                send("3 of burst 3", A, udp(A, B, 1, 2), Expect::Fwd(B, AB, RA)),
                Action::Debt(AB, RA, 3, udp_len),
                send(
                    "4: no tokens left",
                    A,
                    udp(A, B, 1, 2),
                    Expect::Drop(DropReason::RateLimited, AB, RA),
                ),
                // A dropped packet spends nothing.
                Action::Debt(AB, RA, 3, udp_len),
                send(
                    "the other direction is not capped",
                    B,
                    udp(B, A, 2, 1),
                    Expect::Fwd(A, AB, AR),
                ),
                // 2.5 packets' worth of time refills two packets, not three.
                Action::WaitExactly(Duration::from_nanos(slow.cost_ns(udp_len) * 5 / 2)),
                send("refilled 1", A, udp(A, B, 1, 2), Expect::Fwd(B, AB, RA)),
                send("refilled 2", A, udp(A, B, 1, 2), Expect::Fwd(B, AB, RA)),
                send(
                    "then empty again",
                    A,
                    udp(A, B, 1, 2),
                    Expect::Drop(DropReason::RateLimited, AB, RA),
                ),
            ],
        },
        Scenario {
            name: "cap: a frame larger than the whole burst never conforms",
            doc: plain,
            actions: vec![
                Action::Cap(
                    AB,
                    RA,
                    CapConfig {
                        burst_ns: slow.cost_ns(udp_len) - 1,
                        ..slow
                    },
                ),
                send(
                    "over the burst",
                    A,
                    udp(A, B, 1, 2),
                    Expect::Drop(DropReason::RateLimited, AB, RA),
                ),
                Action::Debt(AB, RA, 0, udp_len),
            ],
        },
    ]);
    all
}

// ---------------------------------------------------------------------------------------
// the runner

fn slot(dp: &TestDataplane, pcx: &str) -> u32 {
    dp.installed.ids.get(NAME_PEERING, pcx).unwrap()
}

fn send_and_check(dp: &TestDataplane, from: Instance, packet: &[u8], expect: Expect) -> Result<()> {
    let before = dp.counters(&[AB, BC])?;
    let out = dp.run(netns::ifindex(from.port), packet)?;
    let after = dp.counters(&[AB, BC])?;
    let mut problems = Vec::new();
    let (want_action, want_bytes, reason, hit) = match expect {
        Expect::Fwd(to, pcx, dir) => (
            XDP_REDIRECT,
            packets::forwarded(packet, to.mac, ROUTER_MAC),
            None,
            (pcx, dir),
        ),
        Expect::Drop(r, pcx, dir) => (XDP_DROP, packet.to_vec(), Some(r), (pcx, dir)),
    };
    if out.action != want_action {
        problems.push(format!(
            "verdict {}, expected {}",
            action_name(out.action),
            action_name(want_action)
        ));
    }
    if out.data != want_bytes {
        problems.push("output bytes differ".to_string());
    }
    let (g0, g1) = (&before.0, &after.0);
    let fwd = reason.is_none() as u64;
    for (what, got, want) in [
        ("rx_packets", g1.rx_packets - g0.rx_packets, 1),
        (
            "redirected_packets",
            g1.redirected_packets - g0.redirected_packets,
            fwd,
        ),
        (
            "dropped_packets",
            g1.dropped_packets - g0.dropped_packets,
            1 - fwd,
        ),
    ] {
        if got != want {
            problems.push(format!("{what}: delta {got}, expected {want}"));
        }
    }
    for r in DropReason::ALL {
        let got = g1.drop[r as usize] - g0.drop[r as usize];
        let want = (reason == Some(r)) as u64;
        if got != want {
            problems.push(format!(
                "drop[{}]: delta {got}, expected {want}",
                r.as_str()
            ));
        }
    }
    for ((pcx, dir, p0), (_, _, p1)) in before.1.iter().zip(after.1.iter()) {
        let here = (*pcx, *dir) == hit;
        let got = p1.packets - p0.packets;
        if got != (here && reason.is_none()) as u64 {
            problems.push(format!("{pcx} dir {dir} packets: delta {got}"));
        }
        for r in DropReason::ALL {
            let got = p1.drop[r as usize] - p0.drop[r as usize];
            if got != (here && reason == Some(r)) as u64 {
                problems.push(format!("{pcx} dir {dir} drop[{}]: delta {got}", r.as_str()));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(problems.join("; ")))
    }
}

fn run_scenario(dp: &mut TestDataplane, s: &Scenario) -> Result<()> {
    dp.installed.maps.conntrack_flush(|_, _| true)?;
    // Kept decisions on, whatever a scenario before left.
    dp.installed.maps.set_flow_cache(true)?;
    // Every scenario starts at the same instant of a clock that moves only when it says.
    dp.freeze_clock(TEST_EPOCH_NS)?;
    let mut doc = seed::seed_doc();
    (s.doc)(&mut doc);
    dp.install(&doc)?;
    for (i, a) in s.actions.iter().enumerate() {
        let step = |e: anyhow::Error, what: &str| anyhow!("step {} ({what}): {e}", i + 1);
        match a {
            Action::Send(what, from, packet, expect) => {
                send_and_check(dp, *from, packet, *expect).map_err(|e| step(e, what))?
            }
            Action::Install(f) => {
                let mut d = seed::seed_doc();
                f(&mut d);
                dp.install(&d).map_err(|e| step(e, "install"))?;
            }
            Action::Wait(secs) => {
                dp.advance_clock(Duration::from_secs(*secs))?;
            }
            Action::Flush => {
                let n = dp.installed.maps.conntrack_flush(|_, _| true)?;
                if n == 0 {
                    return Err(step(anyhow!("nothing to flush"), "flush"));
                }
            }
            Action::WaitExactly(d) => {
                dp.advance_clock(*d)?;
            }
            Action::Cap(pcx, dir, cap) => {
                let s = slot(dp, pcx);
                let mut p = dp.installed.mirror.peerings[&s];
                p.cap[*dir as usize] = *cap;
                dp.installed
                    .maps
                    .write(&Op::put::<stored::Peerings>(s, p))?;
                // A fresh (full) bucket, as for a newly installed peering.
                dp.installed.maps.write(&Op::ResetPeeringCounters(s))?;
                dp.installed.maps.bump_epoch()?;
                dp.installed.mirror.peerings.insert(s, p);
            }
            Action::Cache(on) => dp.installed.maps.set_flow_cache(*on)?,
            Action::Kept(n) => {
                let kept = dp.installed.maps.flow_decisions()?.len();
                if kept != *n {
                    return Err(step(
                        anyhow!("{kept} flow decisions of the current epoch, expected {n}"),
                        "flow cache",
                    ));
                }
            }
            Action::Debt(pcx, dir, n, len) => {
                let cap = dp.installed.mirror.peerings[&slot(dp, pcx)].cap[*dir as usize];
                let tat = dp.installed.maps.cap_state(slot(dp, pcx), *dir)?;
                let debt = tat.saturating_sub(dp.now()?);
                let want = n * cap.cost_ns(*len);
                if debt != want {
                    return Err(step(
                        anyhow!("bucket debt {debt} ns, expected {want} ns ({n} packets)"),
                        "bucket",
                    ));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn prog_run_policy_scenarios() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let ns: Netns = seed::ports_only(&peer_dataplane_tests::unique("policy"))?;
    netns::enter(&ns.path())?;
    // Kept decisions are per CPU: every packet on this one, so that a flow's second
    // packet finds what its first left.
    peer_dataplane::bpf::progrun::stay_on_this_cpu()?;
    let mut dp = TestDataplane::load()?;
    let all = scenarios();
    let mut steps = 0;
    run_table(
        "scenarios",
        &all,
        |s| s.name,
        |s| {
            steps += s.actions.len();
            run_scenario(&mut dp, s)
        },
    );
    eprintln!("{} policy scenarios ({steps} steps) passed", all.len());
    Ok(())
}

#[test]
fn every_policy_drop_reason_is_exercised() {
    let reasons: Vec<DropReason> = scenarios()
        .iter()
        .flat_map(|s| s.actions.iter())
        .filter_map(|a| match a {
            Action::Send(_, _, _, Expect::Drop(r, ..)) => Some(*r),
            _ => None,
        })
        .collect();
    for r in [DropReason::SgDeny, DropReason::RateLimited] {
        assert!(
            reasons.contains(&r),
            "no scenario drops with {}",
            r.as_str()
        );
    }
}

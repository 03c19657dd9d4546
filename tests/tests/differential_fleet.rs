//! Differential test across two hosts: random states (`random::topology`, security groups
//! included: each host checks and tracks its own ports' groups) whose VPCs are placed on host 1 or host 2, each host a network namespace with
//! its own loaded program, pins, ports and uplink. Every random frame goes through the
//! program of the host whose port received it; a frame it encapsulates goes on through the
//! other host's program, on its uplink. The final verdict, reason and (when forwarded)
//! bytes must be the reference model's two-host pipeline (`oracle::World` with a `Fleet`):
//! the single-host verdict plus the underlay's own checks (§7). Now and then the tunnel
//! frame is altered on the way (another outer source, a malformed or unknown-critical
//! Geneve header, a foreign source VNI, an unknown tunnel key or VNI, a port that is not
//! Geneve's) and must be dropped (or passed) for exactly that reason; now and then a host's
//! underlay neighbour is missing (`underlay-unreachable`); each state has its own uplink
//! MTU, often one that near-full frames exceed once encapsulated: those are answered with
//! ICMP "too big" out of the port they came by (`mtu-exceeded`; the answer's bytes must be
//! the model's). The XDP action of the host that
//! decided must be the model's too. Now and then the state changes between two frames
//! (`changes`: a route, a peering's status or cap, an ACL rule, a port removed), installed
//! on both hosts while their kept decisions stay. At the end every overlay reason must
//! have been reached at least 100 times.
//!
//! Size: `PDP_DIFF_FLEET_STATES` (default 200) states of `PDP_DIFF_FLEET_PACKETS` (default
//! 400) frames, from seed `PDP_DIFF_SEED`. Needs root and BPF.

use anyhow::{anyhow, bail, Context, Result};
use peer_dataplane::desired::compile::key_for;
use peer_dataplane::desired::document::{Document, HostDoc, PortDoc};
use peer_dataplane::desired::validate::validate;
use peer_dataplane::maps::{stored, DataplaneMaps, Op};
use peer_dataplane_common::{DropReason, PassReason, RouteValue, NAME_PEERING, ROUTE_PCX};
use peer_dataplane_common::{DIR_ACCEPTER_TO_REQUESTER, DIR_REQUESTER_TO_ACCEPTER};
use peer_dataplane_tests::changes;
use peer_dataplane_tests::fleet::uplink_mac;
use peer_dataplane_tests::harness::{
    action_name, TestDataplane, TEST_EPOCH_NS, XDP_DROP, XDP_PASS, XDP_REDIRECT,
};
use peer_dataplane_tests::netns::{self, Netns};
use peer_dataplane_tests::oracle::{
    describe, program_verdict, Counters, Fleet, Outcome, State, Verdict, World,
};
use peer_dataplane_tests::random::{self, Frames, Rng, IFACES};
use std::collections::{BTreeMap, BTreeSet};

const HOSTS: [&str; 2] = ["host-1", "host-2"];
const UPLINK: &str = "ul0";
/// The uplinks' MTU when a state does not choose a smaller one.
const UPLINK_MTU: u32 = 9000;

/// A state's uplink MTU: roomy, or (more often) at or just over the least the overlay
/// accepts (1,342: a 1,280-byte IPv6 packet encapsulated), so that the larger frames are
/// answered "too big".
fn state_mtu(rng: &mut Rng) -> u32 {
    if rng.chance(20) {
        UPLINK_MTU
    } else {
        1342 + rng.below(40) as u32
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn underlay(h: usize) -> String {
    format!("192.0.2.{}", h + 1)
}

/// Host `h`'s namespace: the random states' interfaces (same ifindexes on both hosts:
/// created in the same order in fresh namespaces) and the uplink.
fn host_net(h: usize) -> Result<(Netns, BTreeMap<String, u32>)> {
    let ns = Netns::create(&peer_dataplane_tests::unique(&format!("dfl{h}")))?;
    for i in 0..IFACES {
        let name = random::iface(i);
        netns::veth(&ns, &name, None, &ns, &format!("{name}-p"), None)?;
    }
    let mac = random::mac_str(&uplink_mac(h));
    netns::veth(&ns, UPLINK, Some(&mac), &ns, "ul0-p", None)?;
    ns.ip(&["link", "set", UPLINK, "mtu", &UPLINK_MTU.to_string()])?;
    ns.ip(&["addr", "add", &format!("{}/24", underlay(h)), "dev", UPLINK])?;
    netns::enter(&ns.path())?;
    let mut ifindex = BTreeMap::new();
    for name in (0..IFACES)
        .map(random::iface)
        .chain([UPLINK.to_string(), "lo".into()])
    {
        let x = netns::ifindex(&name);
        if x == 0 {
            bail!("interface {name} has no ifindex");
        }
        ifindex.insert(name, x);
    }
    Ok((ns, ifindex))
}

/// Whether host `h` resolves its next hop toward the other host (a static neighbour).
fn set_reachable(ns: &Netns, h: usize, yes: bool) -> Result<()> {
    let other = underlay(1 - h);
    let _ = ns.ip(&["neigh", "del", &other, "dev", UPLINK]);
    if yes {
        let mac = random::mac_str(&uplink_mac(1 - h));
        ns.ip(&[
            "neigh",
            "replace",
            &other,
            "lladdr",
            &mac,
            "nud",
            "permanent",
            "dev",
            UPLINK,
        ])?;
    }
    Ok(())
}

/// Host `h`'s document: its ports, the other host's ports in VPCs peered with a VPC it
/// carries (the control plane's rule), VNIs and tunnel keys.
fn host_document(doc: &Document, vpc_host: &BTreeMap<String, usize>, h: usize) -> Document {
    let vpc_of_subnet: BTreeMap<&str, &str> = doc
        .subnets
        .iter()
        .map(|s| (s.id.as_str(), s.vpc.as_str()))
        .collect();
    let host_of = |p: &PortDoc| vpc_host[vpc_of_subnet[p.subnet.as_str()]];
    let here: BTreeSet<&str> = doc
        .ports
        .iter()
        .filter(|p| host_of(p) == h)
        .map(|p| vpc_of_subnet[p.subnet.as_str()])
        .collect();
    let reach: BTreeSet<&str> = doc
        .peerings
        .iter()
        .flat_map(|p| {
            let a = here
                .contains(p.requester_vpc.as_str())
                .then_some(p.accepter_vpc.as_str());
            let b = here
                .contains(p.accepter_vpc.as_str())
                .then_some(p.requester_vpc.as_str());
            [a, b]
        })
        .flatten()
        .collect();
    let mut d = doc.clone();
    d.local_host = Some(HOSTS[h].into());
    d.hosts = (0..2)
        .map(|i| HostDoc {
            id: HOSTS[i].into(),
            underlay_ipv4: underlay(i),
            uplink: Some(UPLINK.into()),
            ..HostDoc::default()
        })
        .collect();
    for (i, v) in d.vpcs.iter_mut().enumerate() {
        v.vni = Some(i as u32 + 1);
    }
    for (i, p) in d.peerings.iter_mut().enumerate() {
        p.tunnel_key = Some(i as u32 + 1);
    }
    d.ports = doc
        .ports
        .iter()
        .filter(|p| host_of(p) == h)
        .cloned()
        .collect();
    d.remote_ports = doc
        .ports
        .iter()
        .filter(|p| host_of(p) != h && reach.contains(vpc_of_subnet[p.subnet.as_str()]))
        .map(|p| PortDoc {
            host: Some(HOSTS[1 - h].into()),
            ..p.clone()
        })
        .collect();
    d
}

/// One way to alter a tunnel frame on the underlay, and where its check stands in the
/// receiver's order (§7.3): a later check never decides a frame an earlier one drops.
#[derive(Clone, Copy, Debug)]
enum Mutation {
    OuterSource,
    Version,
    Oam,
    Protocol,
    CriticalOption,
    NotGeneve,
    SourceVni,
    TunnelKey,
    Vni,
}

const MUTATIONS: [Mutation; 9] = [
    Mutation::OuterSource,
    Mutation::Version,
    Mutation::Oam,
    Mutation::Protocol,
    Mutation::CriticalOption,
    Mutation::NotGeneve,
    Mutation::SourceVni,
    Mutation::TunnelKey,
    Mutation::Vni,
];

impl Mutation {
    /// Applies it to a frame of outer Ethernet (14), IPv4 (20), UDP (8), Geneve (8), the
    /// peering option (12).
    fn apply(self, f: &mut [u8]) {
        match self {
            Mutation::OuterSource => f[26..30].copy_from_slice(&[192, 0, 2, 77]),
            Mutation::Version => f[42] |= 0x40,
            Mutation::Oam => f[43] |= 0x80,
            Mutation::Protocol => f[44..46].copy_from_slice(&[0x08, 0x00]),
            Mutation::CriticalOption => f[52] = 0x85,
            Mutation::NotGeneve => f[36..38].copy_from_slice(&6082u16.to_be_bytes()),
            Mutation::SourceVni => f[54..58].copy_from_slice(&0x00ff_fff0u32.to_be_bytes()),
            Mutation::TunnelKey => f[58..62].copy_from_slice(&0x00ff_ffffu32.to_be_bytes()),
            Mutation::Vni => f[46..49].copy_from_slice(&[0xff, 0xff, 0xf0]),
        }
    }

    /// How the receiver counts the altered frame: its verdict, whether it parsed the
    /// inner header, whether it resolved the peering.
    fn outcome(self) -> (Verdict, bool, bool) {
        use DropReason::*;
        match self {
            Mutation::NotGeneve => (Verdict::Pass(PassReason::Underlay), false, false),
            Mutation::OuterSource => (Verdict::Drop(UnknownHost), false, false),
            Mutation::Version | Mutation::Oam | Mutation::Protocol => {
                (Verdict::Drop(GeneveMalformed), false, false)
            }
            Mutation::CriticalOption => (Verdict::Drop(GeneveUnknownOption), false, false),
            Mutation::SourceVni => (Verdict::Drop(SpoofedSource), true, false),
            // An unknown tunnel key: no peering to count under.
            Mutation::TunnelKey => (Verdict::Drop(PeeringInactive), true, false),
            Mutation::Vni => (Verdict::Drop(VniMismatch), true, true),
        }
    }

    /// Checked after the inner source (a spoofed source is dropped as that first).
    fn after_source(self) -> bool {
        matches!(self, Mutation::TunnelKey | Mutation::Vni)
    }

    /// The verdict of the altered frame, given the unaltered one's.
    fn verdict(self, unaltered: &str) -> String {
        let spoofed = format!("drop {}", DropReason::SpoofedSource.as_str());
        let reason = match self {
            Mutation::NotGeneve => return format!("pass {}", PassReason::Underlay.as_str()),
            Mutation::OuterSource => DropReason::UnknownHost,
            Mutation::Version | Mutation::Oam | Mutation::Protocol => DropReason::GeneveMalformed,
            Mutation::CriticalOption => DropReason::GeneveUnknownOption,
            Mutation::SourceVni => DropReason::SpoofedSource,
            // Checked after the source: a spoofed source is dropped as that first.
            Mutation::TunnelKey if unaltered == spoofed => return spoofed,
            Mutation::Vni if unaltered == spoofed => return spoofed,
            Mutation::TunnelKey => DropReason::PeeringInactive,
            Mutation::Vni => DropReason::VniMismatch,
        };
        format!("drop {}", reason.as_str())
    }
}

/// What a receiving host leaves of a tunnel frame it drops with `verdict`: the frame as
/// it came when the outer headers were refused, else the inner frame they carried.
fn dropped_by_receiver(tunnel: &[u8], verdict: &str) -> Vec<u8> {
    let refused_outside = [
        DropReason::UnknownHost,
        DropReason::GeneveMalformed,
        DropReason::GeneveUnknownOption,
    ]
    .iter()
    .any(|r| verdict == format!("drop {}", r.as_str()));
    if refused_outside {
        tunnel.to_vec()
    } else {
        tunnel[peer_dataplane_common::overlay::UNDERLAY_OVERHEAD..].to_vec()
    }
}

/// A frame the sender encapsulated toward the other host (outer IPv4, UDP to 6081).
fn is_tunnel(f: &[u8]) -> bool {
    f.len() >= 62 && f[12..14] == [0x08, 0x00] && f[23] == 17 && f[36..38] == 6081u16.to_be_bytes()
}

struct Host {
    ns: Netns,
    dp: TestDataplane,
}

impl Host {
    fn enter(&self) -> Result<()> {
        netns::enter(&self.ns.path())
    }
}

/// Writes the state's raw route changes on both hosts (their tables are the same) and its
/// missing redirect targets on the host of each port.
fn tamper(
    hosts: &mut [Host; 2],
    topo: &random::Topo,
    ifindex: &BTreeMap<String, u32>,
    port_host: &BTreeMap<String, usize>,
) -> Result<()> {
    for (h, host) in hosts.iter_mut().enumerate() {
        host.enter()?;
        let dp = &mut host.dp;
        for (table, dest, pcx) in &topo.tampering.routes {
            let key = dp
                .installed
                .route_table_key(table)
                .ok_or_else(|| anyhow!("table {table} is not installed"))?;
            let slot = dp
                .installed
                .ids
                .get(NAME_PEERING, pcx)
                .unwrap_or(peer_dataplane_common::MAX_PEERINGS - 1);
            dp.installed.maps.write(&Op::put::<stored::Routes>(
                key_for(key, dest),
                RouteValue {
                    kind: ROUTE_PCX,
                    target: slot,
                },
            ))?;
        }
        for port in &topo.tampering.no_redirect {
            if port_host.get(port) == Some(&h) {
                dp.installed
                    .maps
                    .write(&Op::del::<stored::Devmap>(ifindex[port]))?;
            }
        }
        // Written behind the agent's back: decisions kept before are stale.
        dp.installed.maps.bump_epoch()?;
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    /// The latest time any frame ran at: the next state starts an hour later, so that the
    /// programs' clocks never go back (their next-hop caches expire on that clock).
    last_now: u64,
    frames: u64,
    tunnels: u64,
    altered: u64,
    verdicts: BTreeMap<String, u64>,
    /// Changes installed between two frames, by kind.
    changes: BTreeMap<changes::Kind, u64>,
}

/// Per mille of frames before which the state changes (states without raw map changes).
const CHANGE_PER_MILLE: u64 = 8;

#[test]
fn two_hosts_agree_with_the_model() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let (ns0, ifindex) = host_net(0)?;
    let dp0 = TestDataplane::load()?;
    let (ns1, ifindex1) = host_net(1)?;
    let dp1 = TestDataplane::load()?;
    if ifindex != ifindex1 {
        bail!("the two hosts' interfaces have different ifindexes: {ifindex:?} vs {ifindex1:?}");
    }
    let mut hosts = [Host { ns: ns0, dp: dp0 }, Host { ns: ns1, dp: dp1 }];
    let states = env("PDP_DIFF_FLEET_STATES", 200);
    let packets = env("PDP_DIFF_FLEET_PACKETS", 400);
    let seed = env("PDP_DIFF_SEED", 0x5eed_2026) ^ 0xf1ee7;
    let mut rng = Rng::new(seed);
    let mut totals = Totals::default();
    let mut tampered_before = false;
    let started = std::time::Instant::now();
    for state_no in 0..states {
        run_state(
            &mut hosts,
            &mut rng,
            seed,
            state_no,
            packets,
            &ifindex,
            &mut totals,
            &mut tampered_before,
        )?;
        if state_no % 25 == 24 {
            eprintln!(
                "  {} of {states} states, {} frames, {:.0} s",
                state_no + 1,
                totals.frames,
                started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!(
        "{states} two-host states x {packets} frames = {} frames ({} through a tunnel, {} of those altered), 0 divergences (seed {seed:#x}, {:.1} s)",
        totals.frames,
        totals.tunnels,
        totals.altered,
        started.elapsed().as_secs_f64()
    );
    for (kind, n) in &totals.changes {
        eprintln!("  changes between frames, {:<24} {n:>6}", kind.as_str());
    }
    let unchanged: Vec<&str> = changes::Kind::ALL
        .iter()
        .filter(|k| !totals.changes.contains_key(k))
        .map(|k| k.as_str())
        .collect();
    assert!(
        unchanged.is_empty(),
        "no change between frames of kinds {unchanged:?}"
    );
    let mut wanted: Vec<String> = [
        DropReason::UnderlayUnreachable,
        DropReason::GeneveMalformed,
        DropReason::GeneveUnknownOption,
        DropReason::UnknownHost,
        DropReason::SpoofedSource,
        DropReason::VniMismatch,
        DropReason::NoReturnRoute,
        DropReason::TtlExceeded,
        DropReason::MtuExceeded,
    ]
    .iter()
    .map(|r| format!("drop {}", r.as_str()))
    .collect();
    wanted.push(format!("pass {}", PassReason::Underlay.as_str()));
    wanted.push("forwarded across hosts".into());
    wanted.push("answered too big (ICMP)".into());
    eprintln!("{:<32} {:>8}", "OUTCOME", "FRAMES");
    for (k, n) in &totals.verdicts {
        eprintln!(
            "{k:<32} {n:>8}{}",
            if wanted.contains(k) && *n < 100 {
                "   < 100"
            } else {
                ""
            }
        );
    }
    let thin: Vec<&String> = wanted
        .iter()
        .filter(|k| totals.verdicts.get(*k).copied().unwrap_or(0) < 100)
        .collect();
    assert!(
        thin.is_empty(),
        "outcomes reached fewer than 100 times: {thin:?}"
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_state(
    hosts: &mut [Host; 2],
    rng: &mut Rng,
    seed: u64,
    state_no: u64,
    packets: u64,
    ifindex: &BTreeMap<String, u32>,
    totals: &mut Totals,
    tampered_before: &mut bool,
) -> Result<()> {
    let topo = random::topology(rng);
    let vpc_host: BTreeMap<String, usize> = topo
        .doc
        .vpcs
        .iter()
        .map(|v| (v.id.clone(), rng.below(2) as usize))
        .collect();
    let subnet_vpc: BTreeMap<&str, &str> = topo
        .doc
        .subnets
        .iter()
        .map(|s| (s.id.as_str(), s.vpc.as_str()))
        .collect();
    let port_host: BTreeMap<String, usize> = topo
        .doc
        .ports
        .iter()
        .map(|p| (p.interface.clone(), vpc_host[subnet_vpc[p.subnet.as_str()]]))
        .collect();
    let reachable = [!rng.chance(10), !rng.chance(10)];
    let mtu = state_mtu(rng);
    let placed = |doc: &Document| -> BTreeMap<u32, usize> {
        let subnet_vpc: BTreeMap<&str, &str> = doc
            .subnets
            .iter()
            .map(|s| (s.id.as_str(), s.vpc.as_str()))
            .collect();
        doc.ports
            .iter()
            .map(|p| {
                (
                    ifindex[&p.interface],
                    vpc_host[subnet_vpc[p.subnet.as_str()]],
                )
            })
            .collect()
    };
    let now0 = (TEST_EPOCH_NS + state_no * 3600 * 1_000_000_000)
        .max(totals.last_now + 3600 * 1_000_000_000);
    let mut host_docs = [
        host_document(&topo.doc, &vpc_host, 0),
        host_document(&topo.doc, &vpc_host, 1),
    ];
    for (h, host) in hosts.iter_mut().enumerate() {
        host.enter()?;
        set_reachable(&host.ns, h, reachable[h])?;
        // Read by the install (the overlay's MTU is the uplink's).
        host.ns
            .ip(&["link", "set", UPLINK, "mtu", &mtu.to_string()])?;
        if *tampered_before {
            host.dp.installed.mirror = host.dp.installed.maps.read_state()?;
        }
        let doc = &host_docs[h];
        host.dp.install(doc).with_context(|| {
            format!(
                "state {state_no}: installing host {}\n{}",
                h + 1,
                doc.to_toml()
            )
        })?;
        host.dp.installed.maps.conntrack_flush(|_, _| true)?;
        for pcx in &doc.peerings {
            let slot = host.dp.installed.ids.get(NAME_PEERING, &pcx.id).unwrap();
            for dir in [0, 1] {
                host.dp.installed.maps.set_cap_state(slot, dir, 0)?;
            }
        }
        host.dp.freeze_clock(now0)?;
    }
    tamper(hosts, &topo, ifindex, &port_host)?;
    *tampered_before = !topo.tampering.routes.is_empty() || !topo.tampering.no_redirect.is_empty();
    let mut world = World::new(&topo.doc, ifindex, &topo.tampering);
    world.fleet = Some(Fleet {
        host_of: placed(&topo.doc),
        reachable,
        mtu: [mtu; 2],
        cut: false,
    });
    // Raw map changes stay only until the next install: no changes in such a state.
    let changing = topo.tampering.routes.is_empty() && topo.tampering.no_redirect.is_empty();
    let mut doc = topo.doc.clone();
    // Each host's counters from here on are the model's (read once, at the state's start).
    let mut expected = [
        host_counters(&hosts[0], &host_docs[0])?,
        host_counters(&hosts[1], &host_docs[1])?,
    ];
    let uplink = ifindex[UPLINK];
    let mut model = State::default();
    let mut now = now0;
    let busy = rng.chance(50);
    let mut frames = Frames::new(&topo, !busy);
    for n in 0..packets {
        if changing && n > 0 && rng.below(1000) < CHANGE_PER_MILLE {
            if let Some((next, kind)) = changes::change(rng, &doc) {
                let slots = |hosts: &[Host; 2]| -> Vec<Option<u32>> {
                    hosts
                        .iter()
                        .flat_map(|h| {
                            next.peerings
                                .iter()
                                .map(|p| h.dp.installed.ids.get(NAME_PEERING, &p.id))
                        })
                        .collect()
                };
                let before = slots(hosts);
                check_counters(
                    hosts,
                    &host_docs,
                    &expected,
                    &format!("in state {state_no} before a change"),
                )?;
                let next_docs = [
                    host_document(&next, &vpc_host, 0),
                    host_document(&next, &vpc_host, 1),
                ];
                for (h, host) in hosts.iter_mut().enumerate() {
                    host.enter()?;
                    let d = &next_docs[h];
                    host.dp.install(d).with_context(|| {
                        format!(
                            "state {state_no}: installing a {} change on host {}\n{}",
                            kind.as_str(),
                            h + 1,
                            d.to_toml()
                        )
                    })?;
                }
                if slots(hosts) != before {
                    for p in &next.peerings {
                        model.refill(&p.id);
                    }
                }
                world = World::new(&next, ifindex, &topo.tampering);
                world.fleet = Some(Fleet {
                    host_of: placed(&next),
                    reachable,
                    mtu: [mtu; 2],
                    cut: false,
                });
                doc = next;
                for h in 0..2 {
                    expected[h] = expected[h].across(&host_docs[h], &next_docs[h]);
                }
                host_docs = next_docs;
                check_counters(
                    hosts,
                    &host_docs,
                    &expected,
                    &format!("in state {state_no} right after a {} change", kind.as_str()),
                )?;
                *totals.changes.entry(kind).or_default() += 1;
            }
        }
        let (iface, frame, at) = frames.next(rng, now);
        let ingress = ifindex[&iface];
        let then = at.unwrap_or(now + random::time_step(rng, busy));
        if then != now {
            now = then;
            for host in hosts.iter_mut() {
                host.enter()?;
                host.dp.freeze_clock(now)?;
            }
        }
        // The model's state before the frame: if the tunnel is altered on the way, the
        // frame is run again, on the sending host's stages only.
        let before_frame = model.clone();
        let want = world.run(&mut model, ingress, &frame, now);
        let sender = port_host.get(&iface).copied().unwrap_or(0);
        let (mut got, mut decided_by) = run_on(&hosts[sender], ingress, &frame)?;
        let mut want_verdict = match want.verdict {
            Verdict::Redirect(_) => "redirect".to_string(),
            v => describe(&v),
        };
        let mut altered = None;
        // What the deciding host was given: a dropped or passed frame leaves as it came.
        let mut decided_on = frame.clone();
        if got.0 == XDP_REDIRECT && is_tunnel(&got.2) {
            totals.tunnels += 1;
            let mut tunnel = got.2.clone();
            if rng.chance(25) {
                let m = *rng.pick(&MUTATIONS);
                m.apply(&mut tunnel);
                want_verdict = m.verdict(&want_verdict);
                altered = Some(m);
                totals.altered += 1;
                model = before_frame;
                let f = world.fleet.as_mut().expect("a fleet");
                f.cut = true;
                world.run(&mut model, ingress, &frame, now);
                world.fleet.as_mut().expect("a fleet").cut = false;
            }
            decided_on = tunnel.clone();
            (got, decided_by) = run_on(&hosts[1 - sender], uplink, &tunnel)?;
            decided_by = format!("{decided_by} on host {}", 2 - sender);
        }
        let same_bytes = match want.verdict {
            Verdict::Redirect(_) if altered.is_none() => got.2 == want.frame,
            _ if want.answered.is_some() => got.2 == want.frame,
            // Passed to the kernel (which reads it, an altered tunnel frame included):
            // untouched.
            _ if got.0 == XDP_PASS || want_verdict.starts_with("pass") => got.2 == decided_on,
            // Dropped by the sender: as the model left it (untouched, or the answer it
            // could not send back).
            _ if !decided_by.contains("on host") => got.2 == want.frame,
            // Dropped by the receiver: the tunnel frame as it came, or, once its outer
            // headers were taken off (a known host's well-formed Geneve), the inner frame.
            _ => got.2 == dropped_by_receiver(&decided_on, &want_verdict),
        };
        let want_action = if want.answered.is_some() {
            // The answer goes back out of the port the packet came by.
            XDP_REDIRECT
        } else if want_verdict.starts_with("drop") {
            XDP_DROP
        } else if want_verdict.starts_with("pass") {
            XDP_PASS
        } else {
            XDP_REDIRECT
        };
        if got.1.as_deref() != Some(want_verdict.as_str()) || !same_bytes || got.0 != want_action {
            bail!(
                "divergence (seed {seed:#x}, state {state_no}, frame {n}) on {iface} (host {}) at {now} ns{}:\n  \
                 model:   {want_verdict} ({}) -> {:02x?}\n  program: {} ({}, {decided_by}) -> {:02x?}\n  frame:   {:02x?}\n  \
                 underlay reachable from host 1, host 2: {reachable:?}\n  vpc hosts: {vpc_host:?}\n  tampering: {:?}\n  state:\n{}",
                sender + 1,
                altered.map(|m| format!(", tunnel altered: {m:?}")).unwrap_or_default(),
                action_name(want_action),
                want.frame,
                action_name(got.0),
                got.1.clone().unwrap_or_else(|| "nothing counted".into()),
                got.2,
                frame,
                topo.tampering,
                doc.to_toml()
            );
        }
        if want.answered.is_some() {
            *totals
                .verdicts
                .entry("answered too big (ICMP)".into())
                .or_default() += 1;
        }
        let tunnel = decided_by
            .contains("on host")
            .then(|| (decided_on.len() as u64, altered));
        for (h, o, len) in counted(&want, sender, frame.len() as u64, tunnel) {
            expected[h].add(&o, len);
        }
        let key = match (want.verdict, altered) {
            (Verdict::Redirect(_), None)
                if got.0 == XDP_REDIRECT && decided_by.contains("on host") =>
            {
                "forwarded across hosts".to_string()
            }
            (Verdict::Redirect(_), None) => "forwarded on one host".to_string(),
            _ => want_verdict.clone(),
        };
        *totals.verdicts.entry(key).or_default() += 1;
    }
    check_counters(
        hosts,
        &host_docs,
        &expected,
        &format!("at the end of state {state_no} (seed {seed:#x})"),
    )?;
    totals.frames += packets;
    totals.last_now = now;
    Ok(())
}

/// Host `host`'s counters for the objects of its document `doc`: global, each peering's
/// both directions, each network ACL rule's hits.
fn host_counters(host: &Host, doc: &Document) -> Result<Counters> {
    host.enter()?;
    let dp = &host.dp;
    let checked = validate(doc).map_err(|e| anyhow!("{e}"))?;
    let mut peerings = BTreeMap::new();
    for p in &doc.peerings {
        let slot = dp
            .installed
            .ids
            .get(NAME_PEERING, &p.id)
            .ok_or_else(|| anyhow!("peering {} is not installed", p.id))?;
        let (ra, ar) = dp.peering(slot)?;
        peerings.insert((p.id.clone(), DIR_REQUESTER_TO_ACCEPTER), ra);
        peerings.insert((p.id.clone(), DIR_ACCEPTER_TO_REQUESTER), ar);
    }
    let mut acl_hits = BTreeMap::new();
    for (id, a) in &checked.network_acls {
        for (egress, rules) in [(false, &a.ingress), (true, &a.egress)] {
            for r in rules {
                let slot = dp
                    .installed
                    .acl_hit_slot(&checked, id, egress, r.number)
                    .ok_or_else(|| anyhow!("no hit slot for {id} rule {}", r.number))?;
                acl_hits.insert(
                    (id.clone(), egress, r.number),
                    dp.installed.maps.acl_hits(slot)?,
                );
            }
        }
    }
    Ok(Counters {
        global: dp.global()?,
        peerings,
        acl_hits,
    })
}

/// What each host counts for one frame (docs/datapath.md §7): a frame that stays on its
/// sender's host is counted there as the model's outcome; a tunnelled one is counted by
/// the sender as forwarded under its peering (its length as it came, its egress ACL hits)
/// and by the receiver as the final outcome of the tunnel frame (its length): under the
/// peering once the receiver has resolved it, with its ingress ACL hits, and as a packet
/// seen (fragment, options) once it has parsed the inner header.
fn counted(
    want: &Outcome,
    sender: usize,
    frame_len: u64,
    tunnel: Option<(u64, Option<Mutation>)>,
) -> Vec<(usize, Outcome, u64)> {
    let Some((tunnel_len, altered)) = tunnel else {
        return vec![(sender, want.clone(), frame_len)];
    };
    let (egress, ingress): (Vec<_>, Vec<_>) = want.acl_hits.iter().cloned().partition(|h| h.1);
    let sent = Outcome {
        verdict: Verdict::Redirect(0),
        acl_hits: egress,
        answered: None,
        ..want.clone()
    };
    let spoofed = matches!(want.verdict, Verdict::Drop(DropReason::SpoofedSource));
    let (verdict, parsed, resolved) = match altered {
        None => (want.verdict, true, !spoofed),
        Some(m) => match m.outcome() {
            _ if spoofed && m.after_source() => (want.verdict, true, false),
            (v, parsed, resolved) => (v, parsed, resolved),
        },
    };
    let received = Outcome {
        verdict,
        peering: if resolved { want.peering.clone() } else { None },
        acl_hits: if altered.is_none() {
            ingress
        } else {
            Vec::new()
        },
        fragment: parsed && want.fragment,
        ipv4_options: parsed && want.ipv4_options,
        answered: None,
        frame: Vec::new(),
    };
    vec![
        (sender, sent, frame_len),
        (1 - sender, received, tunnel_len),
    ]
}

/// The counters of both hosts against the model's, naming every one that differs.
fn check_counters(
    hosts: &[Host; 2],
    docs: &[Document; 2],
    expected: &[Counters; 2],
    when: &str,
) -> Result<()> {
    for h in 0..2 {
        let got = host_counters(&hosts[h], &docs[h])?;
        if got == expected[h] {
            continue;
        }
        let mut diffs = Vec::new();
        if got.global != expected[h].global {
            diffs.push(format!(
                "global: program {:?}\n          model   {:?}",
                got.global, expected[h].global
            ));
        }
        for (k, v) in &expected[h].peerings {
            if got.peerings.get(k) != Some(v) {
                diffs.push(format!(
                    "{k:?}: program {:?}\n          model   {v:?}",
                    got.peerings.get(k)
                ));
            }
        }
        for (k, v) in &expected[h].acl_hits {
            if got.acl_hits.get(k) != Some(v) {
                diffs.push(format!(
                    "acl hits {k:?}: program {:?}, model {v}",
                    got.acl_hits.get(k)
                ));
            }
        }
        bail!(
            "host {}'s counters diverge {when}:\n  {}",
            h + 1,
            diffs.join("\n  ")
        );
    }
    Ok(())
}

/// One frame through one host's program: (action, verdict from its counters, output).
type Run = (u32, Option<String>, Vec<u8>);

fn run_on(host: &Host, ingress: u32, frame: &[u8]) -> Result<(Run, String)> {
    host.enter()?;
    let before = host.dp.global()?;
    let out = host.dp.run(ingress, frame)?;
    let after = host.dp.global()?;
    let verdict = program_verdict(&before, &after);
    Ok(((out.action, verdict, out.data), "the program".to_string()))
}

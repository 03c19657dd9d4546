//! `pdp-bench`, what `cargo xtask bench` runs: `prog` (BPF_PROG_RUN cost per packet,
//! `prog.rs`), `e2e` (this data plane against Linux, end to end, `e2e.rs`), `sync` (control
//! plane to data plane latency and memory, `sync.rs`), `fleet` (the control plane on etcd
//! with simulated agents, `fleet/`). Here: the arguments, and the benchmark topologies
//! the rows share (routes, ACLs, groups, an unreached cap).

use anyhow::{bail, Context, Result};
use peer_dataplane::desired::document::{Document, RouteDoc};
use peer_dataplane_common::program_names;
use peer_dataplane_tests::harness::{action_name, TestDataplane, XDP_REDIRECT};
use peer_dataplane_tests::netns;
use peer_dataplane_tests::packets::{self, L2};
use peer_dataplane_tests::seed::{self, A, B, ROUTER_MAC};
use std::io::Write;
use std::path::PathBuf;

mod e2e;
mod e2e_fleet;
mod fleet;
mod gen;
mod live;
mod overlay;
mod prog;
mod report;
mod rows;
mod sync;

struct Args {
    what: String,
    repeat: u32,
    changes: usize,
    object: Option<PathBuf>,
    agent: Option<PathBuf>,
    seconds: f64,
    rounds: usize,
    plot: PathBuf,
    agents: usize,
    generator: peer_dataplane::loadgen::GeneratorArg,
    threads: Vec<usize>,
}

fn args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let what = it.next().unwrap_or_default();
    let mut a = Args {
        what,
        repeat: 1_000_000,
        changes: 1000,
        object: None,
        agent: None,
        seconds: 2.0,
        rounds: 3,
        plot: PathBuf::from("target/bench-e2e.svg"),
        agents: 200,
        generator: peer_dataplane::loadgen::GeneratorArg::Auto,
        threads: vec![1],
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--repeat" => a.repeat = it.next().context("--repeat N")?.parse()?,
            "--changes" => a.changes = it.next().context("--changes N")?.parse()?,
            "--agents" => a.agents = it.next().context("--agents N")?.parse()?,
            "--object" => a.object = it.next().map(PathBuf::from),
            "--agent" => a.agent = it.next().map(PathBuf::from),
            "--seconds" => a.seconds = it.next().context("--seconds S")?.parse()?,
            "--rounds" => a.rounds = it.next().context("--rounds N")?.parse()?,
            "--plot" => a.plot = it.next().map(PathBuf::from).context("--plot PATH")?,
            "--generator" => {
                let g = it
                    .next()
                    .context("--generator auto|live-frames|af-xdp|af-packet")?;
                a.generator = g.parse()?;
            }
            "--threads" => {
                let t = it.next().context("--threads N[,N...]")?;
                a.threads = t
                    .split(',')
                    .map(|n| n.trim().parse::<usize>())
                    .collect::<std::result::Result<_, _>>()
                    .with_context(|| format!("--threads {t}: thread counts such as 1,2"))?;
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// An egress ACL on A's subnet with `rules` rules: `rules - 1` denies that do not match the
/// benchmark packet (other ports, other addresses), then allow-all. `prefixes`: the denies
/// name /24 networks and two-port ranges (trie entries) instead of single hosts and
/// single ports (exact-match entries).
fn add_egress_acl(doc: &mut Document, rules: usize, prefixes: bool) {
    use peer_dataplane::desired::document::{AclRuleDoc, NetworkAclDoc};
    let mut list: Vec<AclRuleDoc> = (1..rules)
        .map(|i| {
            let (cidr, ports) = if prefixes {
                let lo = 8000 + 2 * i as u16;
                (
                    format!("172.{}.{}.0/24", 16 + i / 256, i % 256),
                    (lo, lo + 1),
                )
            } else {
                (
                    format!("172.16.{}.{}/32", i / 250, i % 250 + 1),
                    (8000 + i as u16, 8000 + i as u16),
                )
            };
            AclRuleDoc {
                number: i as u32,
                direction: "egress".into(),
                protocol: "udp".into(),
                port_from: Some(ports.0),
                port_to: Some(ports.1),
                cidr,
                action: "deny".into(),
            }
        })
        .collect();
    list.push(AclRuleDoc {
        number: 30000,
        direction: "egress".into(),
        protocol: "all".into(),
        port_from: None,
        port_to: None,
        cidr: "0.0.0.0/0".into(),
        action: "allow".into(),
    });
    doc.network_acls = vec![NetworkAclDoc {
        id: "acl-bench".into(),
        vpc: "vpc-a".into(),
        rules: list,
    }];
    doc.subnets
        .iter_mut()
        .find(|s| s.id == "subnet-a2")
        .unwrap()
        .network_acl = Some("acl-bench".into());
}

/// Security groups on A (egress UDP 7000-7001 to VPC B) and B (ingress UDP 7000-7001 from
/// VPC A), each after 20 rules that do not match the benchmark packet.
fn add_security_groups(doc: &mut Document) {
    use peer_dataplane::desired::document::{SecurityGroupDoc, SgRuleDoc};
    let rules = |direction: &str, cidr: &str| -> Vec<SgRuleDoc> {
        let mut v: Vec<SgRuleDoc> = (0..20)
            .map(|i| SgRuleDoc {
                direction: direction.into(),
                protocol: "tcp".into(),
                port_from: Some(8000 + i),
                port_to: Some(8000 + i),
                cidr: Some(cidr.into()),
                peer_security_group: None,
            })
            .collect();
        v.push(SgRuleDoc {
            direction: direction.into(),
            protocol: "udp".into(),
            port_from: Some(7000),
            port_to: Some(7001),
            cidr: Some(cidr.into()),
            peer_security_group: None,
        });
        v
    };
    doc.security_groups = vec![
        SecurityGroupDoc {
            id: "sg-a".into(),
            vpc: "vpc-a".into(),
            rules: rules("egress", "172.16.0.0/16"),
        },
        SecurityGroupDoc {
            id: "sg-b".into(),
            vpc: "vpc-b".into(),
            rules: rules("ingress", "10.0.0.0/16"),
        },
    ];
    for (port, sg) in [("pdp-a", "sg-a"), ("pdp-b", "sg-b")] {
        doc.ports
            .iter_mut()
            .find(|p| p.interface == port)
            .unwrap()
            .security_groups = Some(vec![sg.into()]);
    }
}

/// The seed document with rtb-a holding `n` routes in all (the two local routes, the two
/// peering routes, and more-specific peering routes inside VPC B's CIDRs: IPv4 /32s and
/// IPv6 /64s, alternating, for the first 100,000; IPv4 /32s after them).
fn doc_with_routes(n: usize) -> Document {
    let mut doc = seed::seed_doc();
    let rtb = doc
        .route_tables
        .iter_mut()
        .find(|t| t.id == "rtb-a")
        .unwrap();
    let extra = n.saturating_sub(4);
    for i in 0..extra {
        // Past the first 100,000 (which fill much of VPC B's IPv4 /16): IPv4 /32s from
        // 172.17.0.0 on, VPC B growing to 172.16.0.0/12 (so that Linux, whose IPv4 and
        // IPv6 tables are apart, holds as many IPv4 routes in `bench e2e`).
        let destination = if i >= 100_000 {
            let a = u32::from(std::net::Ipv4Addr::new(172, 17, 0, 0)) + (i - 100_000) as u32;
            format!("{}/32", std::net::Ipv4Addr::from(a))
        } else if i % 2 == 0 {
            let k = i / 2 + 1;
            format!("172.16.{}.{}/32", (k >> 8) & 0xff, k & 0xff)
        } else {
            format!("fd00:b:0:{:x}::/64", i / 2 + 16)
        };
        rtb.routes.push(RouteDoc::new(destination, "pcx-ab"));
    }
    if extra > 100_000 {
        let b = doc.vpcs.iter_mut().find(|v| v.id == "vpc-b").unwrap();
        b.cidrs = vec!["172.16.0.0/12".into()];
    }
    doc
}

fn main() -> Result<()> {
    let args = args()?;
    match args.what.as_str() {
        "prog" => prog::bench(&args),
        "e2e" => e2e::bench(&e2e::Options {
            object: args.object.as_deref().context("e2e needs --object PATH")?,
            seconds: args.seconds,
            rounds: args.rounds,
            plot: &args.plot,
            generator: args.generator,
            threads: args.threads.clone(),
        }),
        "sync" => sync::bench(args.agent.as_deref().context("sync needs --agent PATH")?, args.changes),
        "fleet" => fleet::bench(
            args.agent.as_deref().context("fleet needs --agent PATH")?,
            args.agents,
            args.changes,
        ),
        _ => bail!("usage: pdp-bench prog [--repeat N] --object PATH | pdp-bench e2e [--seconds S] [--rounds N] [--plot PATH] [--generator G] [--threads N,N] --object PATH | pdp-bench sync [--changes N] --agent PATH"),
    }
}

/// A cap on pcx-ab that the benchmark's packets never reach: the cap stage runs and
/// spends tokens on every packet, and every packet conforms.
fn add_unreached_cap(doc: &mut Document) {
    let p = doc.peerings.iter_mut().find(|p| p.id == "pcx-ab").unwrap();
    p.bandwidth_mbps = Some(400_000);
}

/// The whole job: `routes` routes, an egress NACL of `rules` rules on /24s and port
/// ranges, security groups on both ports, a cap the packets never reach.
pub fn job_doc(routes: usize, rules: usize) -> Document {
    let mut doc = doc_with_routes(routes);
    add_egress_acl(&mut doc, rules, true);
    add_security_groups(&mut doc);
    add_unreached_cap(&mut doc);
    doc
}

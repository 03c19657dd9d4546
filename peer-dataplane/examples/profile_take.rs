use peer_dataplane::agent::follow::Change;
use peer_dataplane::agent::follower::{self, Taken};
use peer_dataplane::agent::install::Installed;
use peer_dataplane::desired::delta::{Delta, Held};
use peer_dataplane::desired::document::*;
use peer_dataplane::desired::{IfindexResolver, Topology};
use peer_dataplane::reconcile::MapState;
use std::time::{Duration, Instant};

struct AnyIfindex;
impl IfindexResolver for AnyIfindex {
    fn ifindex(&self, name: &str) -> Option<u32> {
        Some(
            10 + name
                .bytes()
                .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
                % 100_000,
        )
    }
    fn mtu(&self, _: &str) -> Option<u32> {
        Some(1600)
    }
}

fn main() {
    let mut doc = Document::from_toml(include_str!("../../examples/seed.toml")).unwrap();
    doc.vpcs.iter_mut().find(|v| v.id == "vpc-b").unwrap().cidrs = vec!["172.16.0.0/12".into()];
    let t = doc
        .route_tables
        .iter_mut()
        .find(|t| t.id == "rtb-a")
        .unwrap();
    t.routes.retain(|r| !r.destination.starts_with("172."));
    for i in 0..100_000usize {
        t.routes.push(RouteDoc::new(
            format!("172.{}.{}.{}/32", 16 + i / 65536, i / 256 % 256, i % 256),
            "pcx-ab",
        ));
    }
    let mut vpc = "vpc-a".to_string();
    if let Some(f) = std::env::args().nth(2) {
        doc = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
        vpc = std::env::args().nth(3).unwrap();
    }
    let mut installed = Installed::<MapState>::in_memory();
    let mut topo: Option<Topology> = None;
    let mut desired: Option<(u64, Held)> = None;
    let t0 = Instant::now();
    match follower::take(
        &mut installed,
        &mut topo,
        &mut desired,
        1,
        Change::Whole(doc.clone()),
    )
    .unwrap()
    {
        Taken::Install(t) => {
            installed.install(&t, topo.as_ref(), &AnyIfindex).unwrap();
            topo = Some(t);
        }
        _ => panic!(),
    }
    eprintln!("whole: {:?}", t0.elapsed());
    let acl: NetworkAclDoc = serde_json::from_value(serde_json::json!({"id": "acl-x", "vpc": vpc, "rules": [{"number": 10, "direction": "ingress", "protocol": "tcp", "port_from": 22, "port_to": 22, "cidr": "0.0.0.0/0", "action": "deny"}]})).unwrap();
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(400);
    let mut times = Vec::new();
    let (mut tv, mut ti) = (Duration::ZERO, Duration::ZERO);
    let mut rev = 1;
    for i in 0..n {
        let mut d = Delta::default();
        if i % 2 == 0 {
            d.put.network_acls.push(acl.clone());
        } else {
            d.removed.network_acls.push("acl-x".into());
        }
        let s = Instant::now();
        let r = follower::take(
            &mut installed,
            &mut topo,
            &mut desired,
            rev + 1,
            Change::Delta {
                after: rev,
                delta: d,
            },
        )
        .unwrap();
        let m = Instant::now();
        match r {
            Taken::Install(t) => {
                installed.install(&t, topo.as_ref(), &AnyIfindex).unwrap();
                topo = Some(t);
            }
            _ => panic!(),
        }
        tv += m - s;
        ti += m.elapsed();
        times.push(s.elapsed());
        rev += 1;
    }
    times.sort();
    eprintln!(
        "acl change: p50 {:?} p99 {:?} max {:?}; validate avg {:?}, install avg {:?}",
        times[n / 2],
        times[n * 99 / 100],
        times[n - 1],
        tv / n as u32,
        ti / n as u32
    );
}

//! `peer-dataplane conntrack list|flush`: the security groups' connection-tracking table,
//! read from (and pruned in) the pinned LRU map. Works while the agent is down.

use crate::bpf::maps::KernelMaps;
use crate::views::ip;
use anyhow::Result;
use peer_dataplane_common::{
    conntrack::{expired, idle_timeout_ns, state_str, CtEntry, CtKey},
    NameKey, NAME_VPC,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Flow {
    pub protocol: String,
    pub src_vpc: String,
    pub src: IpAddr,
    pub sport: u16,
    pub dst_vpc: String,
    pub dst: IpAddr,
    pub dport: u16,
    pub state: &'static str,
    pub age_s: f64,
    pub idle_s: f64,
    /// Seconds until the entry expires if idle; negative once expired.
    pub expires_in_s: f64,
    pub packets_original: u64,
    pub packets_reply: u64,
}

fn protocol_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// Which flows a command applies to.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// A VPC on either side.
    pub vpc: Option<String>,
    /// An address on either side.
    pub address: Option<IpAddr>,
}

impl Filter {
    fn matches(&self, f: &Flow) -> bool {
        self.vpc
            .as_ref()
            .is_none_or(|v| &f.src_vpc == v || &f.dst_vpc == v)
            && self.address.is_none_or(|a| f.src == a || f.dst == a)
    }
}

fn vpc_names(maps: &KernelMaps) -> Result<BTreeMap<u32, String>> {
    Ok(maps
        .read_state()?
        .names
        .iter()
        .filter(|(k, _)| k.kind == NAME_VPC)
        .map(|(k, v): (&NameKey, _)| (k.id, v.as_str().to_string()))
        .collect())
}

fn flow(k: &CtKey, e: &CtEntry, now: u64, vpcs: &BTreeMap<u32, String>) -> Flow {
    let vpc = |id: u32| vpcs.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
    let secs = |ns: i128| ns as f64 / 1e9;
    let timeout = idle_timeout_ns(k.proto, e.flags) as i128;
    Flow {
        protocol: protocol_name(k.proto),
        src_vpc: vpc(k.src_vpc),
        src: ip(&k.src),
        sport: k.sport,
        dst_vpc: vpc(k.dst_vpc),
        dst: ip(&k.dst),
        dport: k.dport,
        state: if expired(k.proto, e.flags, e.last_seen_ns, now) {
            "expired"
        } else {
            state_str(k.proto, e.flags)
        },
        age_s: secs(now as i128 - e.created_ns as i128),
        idle_s: secs(now as i128 - e.last_seen_ns as i128),
        expires_in_s: secs(e.last_seen_ns as i128 + timeout - now as i128),
        packets_original: e.packets[0],
        packets_reply: e.packets[1],
    }
}

/// Tracked flows, oldest first; expired ones (still in the LRU until evicted or flushed)
/// only with `all`.
pub fn list(maps: &KernelMaps, filter: &Filter, all: bool) -> Result<Vec<Flow>> {
    let vpcs = vpc_names(maps)?;
    let now = maps.now_ns()?;
    let mut flows: Vec<Flow> = maps
        .conntrack_entries()?
        .iter()
        .map(|(k, e)| flow(k, e, now, &vpcs))
        .filter(|f| (all || f.state != "expired") && filter.matches(f))
        .collect();
    flows.sort_by(|a, b| b.age_s.total_cmp(&a.age_s));
    Ok(flows)
}

/// Removes the matching flows; their next packets meet the security-group rules again.
pub fn flush(maps: &mut KernelMaps, filter: &Filter) -> Result<usize> {
    let vpcs = vpc_names(maps)?;
    let now = maps.now_ns()?;
    maps.conntrack_flush(|k, e| filter.matches(&flow(k, e, now, &vpcs)))
}

fn endpoint(vpc: &str, a: &IpAddr, port: u16, protocol: &str) -> String {
    let a = match a {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    match protocol {
        "tcp" | "udp" => format!("{vpc}/{a}:{port}"),
        _ => format!("{vpc}/{a}"),
    }
}

pub fn render_table(flows: &[Flow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<7} {:<44} {:<44} {:<12} {:>10} {:>10} {:>12} {:>9} {:>9}",
        "PROTO",
        "ORIGINAL SOURCE",
        "ORIGINAL DESTINATION",
        "STATE",
        "AGE s",
        "IDLE s",
        "EXPIRES IN s",
        "PKTS ->",
        "PKTS <-"
    );
    for f in flows {
        let mut src = endpoint(&f.src_vpc, &f.src, f.sport, &f.protocol);
        let mut dst = endpoint(&f.dst_vpc, &f.dst, f.dport, &f.protocol);
        if f.protocol.starts_with("icmp") {
            // ICMP echo flows are keyed by identifier.
            src = format!("{src} id {}", f.sport);
            dst = dst.to_string();
        }
        let _ = writeln!(
            out,
            "{:<7} {:<44} {:<44} {:<12} {:>10.1} {:>10.1} {:>12.1} {:>9} {:>9}",
            f.protocol,
            src,
            dst,
            f.state,
            f.age_s,
            f.idle_s,
            f.expires_in_s,
            f.packets_original,
            f.packets_reply
        );
    }
    let _ = writeln!(out, "{} flows", flows.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use peer_dataplane_common::{addr, conntrack::CT_REPLIED, conntrack::SECOND_NS};

    #[test]
    fn flows_render_with_names_state_and_expiry() {
        let k = CtKey {
            src_vpc: 1,
            dst_vpc: 2,
            src: addr::from_v4([10, 0, 2, 10]),
            dst: addr::from_v4([172, 16, 2, 10]),
            sport: 40000,
            dport: 53,
            proto: 17,
            _pad: [0; 3],
        };
        let now = 1000 * SECOND_NS;
        let e = CtEntry {
            created_ns: now - 20 * SECOND_NS,
            last_seen_ns: now - 10 * SECOND_NS,
            packets: [3, 2],
            flags: CT_REPLIED,
            _pad: 0,
        };
        let vpcs = BTreeMap::from([(1, "vpc-a".to_string()), (2, "vpc-b".to_string())]);
        let f = flow(&k, &e, now, &vpcs);
        assert_eq!(f.state, "replied");
        assert_eq!((f.age_s, f.idle_s, f.expires_in_s), (20.0, 10.0, 20.0));
        let table = render_table(std::slice::from_ref(&f));
        assert!(
            table.contains("vpc-a/10.0.2.10:40000") && table.contains("vpc-b/172.16.2.10:53"),
            "{table}"
        );
        assert!(table.ends_with("1 flows\n"));
        let stale = flow(&k, &e, now + 30 * SECOND_NS, &vpcs);
        assert_eq!(stale.state, "expired");
        let only_b = Filter {
            vpc: Some("vpc-b".into()),
            address: None,
        };
        assert!(only_b.matches(&f));
        let other = Filter {
            vpc: None,
            address: Some("10.9.9.9".parse().unwrap()),
        };
        assert!(!other.matches(&f));
    }
}

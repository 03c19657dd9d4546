//! `peer-dataplane stats`: per-peering packets and bytes each way, drops by reason, and the
//! program-wide counters, read from the pinned per-CPU maps (works while the agent is down).

use crate::kernel::KernelMaps;
use anyhow::Result;
use peer_dataplane_common::{
    cap::CapConfig,
    counters::{GlobalCounters, PeeringCounters},
    pcx_status_str, DropReason, NameKey, PassReason, DIR_ACCEPTER_TO_REQUESTER,
    DIR_REQUESTER_TO_ACCEPTER, NAME_PEERING, NAME_VPC,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stats {
    pub global: GlobalView,
    pub peerings: Vec<PeeringView>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GlobalView {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub redirected_packets: u64,
    pub redirected_bytes: u64,
    pub passed_packets: u64,
    pub dropped_packets: u64,
    pub fragments: u64,
    pub ipv4_options: u64,
    /// Every pass reason, zero or not.
    pub passed: BTreeMap<&'static str, u64>,
    /// Every drop reason, zero or not.
    pub dropped: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeeringView {
    pub id: String,
    pub slot: u32,
    pub status: &'static str,
    pub requester_vpc: String,
    pub accepter_vpc: String,
    pub requester_to_accepter: DirectionView,
    pub accepter_to_requester: DirectionView,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DirectionView {
    pub packets: u64,
    pub bytes: u64,
    /// The bandwidth cap of this direction, bits per second (none: uncapped).
    pub cap_bps: Option<u64>,
    /// Only the reasons with drops.
    pub dropped: BTreeMap<&'static str, u64>,
}

fn drops(counts: &[u64], all: bool) -> BTreeMap<&'static str, u64> {
    DropReason::ALL
        .iter()
        .map(|r| (r.as_str(), counts[*r as usize]))
        .filter(|(_, n)| all || *n > 0)
        .collect()
}

fn direction(c: &PeeringCounters, cap: &CapConfig) -> DirectionView {
    DirectionView {
        packets: c.packets,
        bytes: c.bytes,
        cap_bps: cap.is_capped().then(|| cap.bits_per_second()),
        dropped: drops(&c.drop, false),
    }
}

pub fn global_view(g: &GlobalCounters) -> GlobalView {
    GlobalView {
        rx_packets: g.rx_packets,
        rx_bytes: g.rx_bytes,
        redirected_packets: g.redirected_packets,
        redirected_bytes: g.redirected_bytes,
        passed_packets: g.passed_packets,
        dropped_packets: g.dropped_packets,
        fragments: g.fragments,
        ipv4_options: g.ipv4_options,
        passed: PassReason::ALL
            .iter()
            .map(|r| (r.as_str(), g.pass[*r as usize]))
            .collect(),
        dropped: drops(&g.drop, true),
    }
}

pub fn collect(maps: &KernelMaps) -> Result<Stats> {
    collect_in(maps, &maps.read_state()?)
}

/// [`collect`] against a `state` already read back from `maps`.
pub fn collect_in(maps: &KernelMaps, state: &crate::maps::MapState) -> Result<Stats> {
    let name = |kind, id| {
        state
            .names
            .get(&NameKey { kind, id })
            .map(|n| n.as_str().to_string())
            .unwrap_or_else(|| format!("#{id}"))
    };
    let mut peerings = Vec::new();
    for (slot, p) in &state.peerings {
        let (ra, ar) = maps.peering_counters(*slot)?;
        peerings.push(PeeringView {
            id: name(NAME_PEERING, *slot),
            slot: *slot,
            status: pcx_status_str(p.status),
            requester_vpc: name(NAME_VPC, p.requester_vpc),
            accepter_vpc: name(NAME_VPC, p.accepter_vpc),
            requester_to_accepter: direction(&ra, &p.cap[DIR_REQUESTER_TO_ACCEPTER as usize]),
            accepter_to_requester: direction(&ar, &p.cap[DIR_ACCEPTER_TO_REQUESTER as usize]),
        });
    }
    peerings.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Stats {
        global: global_view(&maps.global_counters()?),
        peerings,
    })
}

/// `100M`, `1G`, `2.5G`, or `-` when uncapped.
fn cap_cell(bps: Option<u64>) -> String {
    match bps {
        None => "-".into(),
        Some(b) if b >= 1_000_000_000 => format!("{}G", b as f64 / 1e9),
        Some(b) if b >= 1_000_000 => format!("{}M", b as f64 / 1e6),
        Some(b) => format!("{}k", b as f64 / 1e3),
    }
}

fn reasons_cell(d: &BTreeMap<&'static str, u64>) -> String {
    if d.is_empty() {
        return "-".into();
    }
    d.iter()
        .map(|(r, n)| format!("{r}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Renders rows with columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                let _ = write!(out, "{c}");
            } else {
                let _ = write!(out, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(|s| s.as_str()).collect(), &mut out);
    }
    out
}

pub fn render_table(s: &Stats) -> String {
    let mut rows = Vec::new();
    for p in &s.peerings {
        for (dir, from, to, d) in [
            (
                "req->acc",
                &p.requester_vpc,
                &p.accepter_vpc,
                &p.requester_to_accepter,
            ),
            (
                "acc->req",
                &p.accepter_vpc,
                &p.requester_vpc,
                &p.accepter_to_requester,
            ),
        ] {
            rows.push(vec![
                p.id.clone(),
                p.status.to_string(),
                dir.to_string(),
                format!("{from} -> {to}"),
                cap_cell(d.cap_bps),
                d.packets.to_string(),
                d.bytes.to_string(),
                d.dropped.values().sum::<u64>().to_string(),
                reasons_cell(&d.dropped),
            ]);
        }
    }
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("no peerings installed\n");
    } else {
        out.push_str(&table(
            &[
                "PEERING",
                "STATUS",
                "DIR",
                "VPCS",
                "CAP",
                "PACKETS",
                "BYTES",
                "DROPPED",
                "DROP REASONS",
            ],
            &rows,
        ));
    }
    let g = &s.global;
    out.push('\n');
    out.push_str(&table(
        &[
            "RX PACKETS",
            "RX BYTES",
            "REDIRECTED",
            "PASSED",
            "DROPPED",
            "FRAGMENTS",
            "IPV4 OPTIONS",
        ],
        &[vec![
            g.rx_packets.to_string(),
            g.rx_bytes.to_string(),
            g.redirected_packets.to_string(),
            g.passed_packets.to_string(),
            g.dropped_packets.to_string(),
            g.fragments.to_string(),
            g.ipv4_options.to_string(),
        ]],
    ));
    let mut reasons: Vec<Vec<String>> = g
        .dropped
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| vec!["drop".into(), r.to_string(), n.to_string()])
        .chain(
            g.passed
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(r, n)| vec!["pass".into(), r.to_string(), n.to_string()]),
        )
        .collect();
    reasons.sort();
    if !reasons.is_empty() {
        out.push('\n');
        out.push_str(&table(&["VERDICT", "REASON", "PACKETS"], &reasons));
    }
    out
}

/// One CPU's share of the global counters (`stats --per-cpu`): how evenly RSS spreads the
/// load across the cores.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CpuView {
    pub cpu: usize,
    pub rx_packets: u64,
    pub redirected_packets: u64,
    pub passed_packets: u64,
    pub dropped_packets: u64,
}

pub fn per_cpu(maps: &KernelMaps) -> Result<Vec<CpuView>> {
    Ok(maps
        .global_counters_per_cpu()?
        .iter()
        .enumerate()
        .map(|(cpu, g)| CpuView {
            cpu,
            rx_packets: g.rx_packets,
            redirected_packets: g.redirected_packets,
            passed_packets: g.passed_packets,
            dropped_packets: g.dropped_packets,
        })
        .collect())
}

pub fn render_per_cpu(cpus: &[CpuView]) -> String {
    let rows: Vec<Vec<String>> = cpus
        .iter()
        .map(|c| {
            vec![
                c.cpu.to_string(),
                c.rx_packets.to_string(),
                c.redirected_packets.to_string(),
                c.passed_packets.to_string(),
                c.dropped_packets.to_string(),
            ]
        })
        .collect();
    table(
        &["CPU", "RX PACKETS", "REDIRECTED", "PASSED", "DROPPED"],
        &rows,
    )
}

/// Rates between two readings (`stats --watch`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rates {
    pub interval_s: f64,
    pub rx_pps: f64,
    pub rx_bps: f64,
    pub redirected_pps: f64,
    pub dropped_pps: f64,
    /// Drops per second by reason (only reasons with drops).
    pub drops_per_s: BTreeMap<&'static str, f64>,
    pub peerings: Vec<PeeringRate>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeeringRate {
    pub id: String,
    pub direction: &'static str,
    pub pps: f64,
    pub bps: f64,
    pub drops_per_s: f64,
}

pub fn rates(before: &Stats, after: &Stats, interval_s: f64) -> Rates {
    let per_s = |a: u64, b: u64| a.saturating_sub(b) as f64 / interval_s;
    let (g0, g1) = (&before.global, &after.global);
    let mut peerings = Vec::new();
    for p in &after.peerings {
        let Some(p0) = before.peerings.iter().find(|x| x.id == p.id) else {
            continue;
        };
        for (direction, d1, d0) in [
            (
                "req->acc",
                &p.requester_to_accepter,
                &p0.requester_to_accepter,
            ),
            (
                "acc->req",
                &p.accepter_to_requester,
                &p0.accepter_to_requester,
            ),
        ] {
            let drops = |d: &DirectionView| d.dropped.values().sum::<u64>();
            peerings.push(PeeringRate {
                id: p.id.clone(),
                direction,
                pps: per_s(d1.packets, d0.packets),
                bps: per_s(d1.bytes, d0.bytes) * 8.0,
                drops_per_s: per_s(drops(d1), drops(d0)),
            });
        }
    }
    Rates {
        interval_s,
        rx_pps: per_s(g1.rx_packets, g0.rx_packets),
        rx_bps: per_s(g1.rx_bytes, g0.rx_bytes) * 8.0,
        redirected_pps: per_s(g1.redirected_packets, g0.redirected_packets),
        dropped_pps: per_s(g1.dropped_packets, g0.dropped_packets),
        drops_per_s: g1
            .dropped
            .iter()
            .map(|(r, n)| (*r, per_s(*n, g0.dropped.get(r).copied().unwrap_or(0))))
            .filter(|(_, v)| *v > 0.0)
            .collect(),
        peerings,
    }
}

/// `1.2 Mpps`-style numbers for people.
fn si(v: f64, unit: &str) -> String {
    let (d, p) = if v >= 1e9 {
        (1e9, "G")
    } else if v >= 1e6 {
        (1e6, "M")
    } else if v >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    format!("{:.1} {p}{unit}", v / d)
}

pub fn render_rates(r: &Rates) -> String {
    let mut out = format!(
        "rx {}  {}   forwarded {}   dropped {}\n",
        si(r.rx_pps, "pps"),
        si(r.rx_bps, "bit/s"),
        si(r.redirected_pps, "pps"),
        si(r.dropped_pps, "pps")
    );
    let rows: Vec<Vec<String>> = r
        .peerings
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                p.direction.to_string(),
                si(p.pps, "pps"),
                si(p.bps, "bit/s"),
                si(p.drops_per_s, "pps"),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(
            &["PEERING", "DIR", "PACKETS", "BITS", "DROPS"],
            &rows,
        ));
    }
    for (reason, v) in &r.drops_per_s {
        let _ = writeln!(out, "  drop {reason}: {}", si(*v, "pps"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_and_shows_reasons() {
        let mut g = GlobalCounters::ZERO;
        g.rx_packets = 12;
        g.dropped_packets = 2;
        g.drop[DropReason::PeeringInactive as usize] = 2;
        let mut ra = PeeringCounters::ZERO;
        ra.packets = 10;
        ra.bytes = 980;
        ra.drop[DropReason::PeeringInactive as usize] = 2;
        let s = Stats {
            global: global_view(&g),
            peerings: vec![PeeringView {
                id: "pcx-ab".into(),
                slot: 0,
                status: "deleted",
                requester_vpc: "vpc-a".into(),
                accepter_vpc: "vpc-b".into(),
                requester_to_accepter: direction(&ra, &CapConfig::new(100_000_000, 65536)),
                accepter_to_requester: direction(
                    &PeeringCounters::ZERO,
                    &peer_dataplane_common::cap::UNCAPPED,
                ),
            }],
        };
        let t = render_table(&s);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("PEERING  STATUS   DIR"), "{t}");
        assert!(
            lines[1].contains("vpc-a -> vpc-b  100M") && lines[1].contains("peering-inactive=2"),
            "{t}"
        );
        assert!(lines[2].contains("vpc-b -> vpc-a  -"), "{t}");
        assert!(
            lines[2].contains("acc->req") && lines[2].ends_with('-'),
            "{t}"
        );
        assert!(t.contains("drop     peering-inactive  2"), "{t}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["peerings"][0]["requester_to_accepter"]["dropped"]["peering-inactive"],
            2
        );
        assert_eq!(
            json["peerings"][0]["requester_to_accepter"]["cap_bps"],
            100_000_000
        );
        assert_eq!(
            json["global"]["dropped"]["no-route"], 0,
            "every reason is listed globally"
        );
    }
}

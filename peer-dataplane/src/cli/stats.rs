//! `peer-dataplane stats`: per-peering packets and bytes each way, drops by reason, and the
//! program-wide counters, read from the pinned per-CPU maps (works while the agent is down).

use super::render::{bits_per_second, directions, reasons_cell, si, table, table_of};
use crate::views::stats::{CpuView, Rates, Stats};
use std::fmt::Write as _;

pub fn render_table(s: &Stats) -> String {
    let mut rows = Vec::new();
    for p in &s.peerings {
        let (r2a, a2r) = (&p.requester_to_accepter, &p.accepter_to_requester);
        for (dir, vpcs, d) in directions(&p.requester_vpc, &p.accepter_vpc, r2a, a2r) {
            let dropped = d.dropped.values().sum::<u64>();
            let cells = [p.id.clone(), p.status.into(), dir.into(), vpcs];
            let counts = [d.packets, d.bytes, dropped].map(|n| n.to_string());
            let tail = [bits_per_second(d.cap_bps), reasons_cell(&d.dropped)];
            rows.push([&cells[..], &tail[..1], &counts, &tail[1..]].concat());
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
        &[[
            g.rx_packets,
            g.rx_bytes,
            g.redirected_packets,
            g.passed_packets,
            g.dropped_packets,
            g.fragments,
            g.ipv4_options,
        ]
        .map(|n| n.to_string())
        .to_vec()],
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

pub fn render_per_cpu(cpus: &[CpuView]) -> String {
    let header = ["CPU", "RX PACKETS", "REDIRECTED", "PASSED", "DROPPED"];
    table_of(&header, cpus, |c| {
        let counts = [
            c.rx_packets,
            c.redirected_packets,
            c.passed_packets,
            c.dropped_packets,
        ];
        [c.cpu as u64]
            .iter()
            .chain(&counts)
            .map(u64::to_string)
            .collect()
    })
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
    use crate::views::stats::{direction, global_view, PeeringView};
    use peer_dataplane_common::{
        cap::CapConfig,
        counters::{GlobalCounters, PeeringCounters},
        DropReason,
    };

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
            lines[1].contains("vpc-a -> vpc-b  100 Mbit/s")
                && lines[1].contains("peering-inactive=2"),
            "{t}"
        );
        assert!(lines[2].contains("vpc-b -> vpc-a  -"), "{t}");
        assert!(
            lines[2].contains("accepter_to_requester") && lines[2].ends_with('-'),
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

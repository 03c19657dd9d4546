//! Traffic: per-peering packets and bytes each way with drops by reason, the program-wide
//! counters, their per-CPU split, and rates between two readings.

use super::Names;
use crate::bpf::maps::Snapshot;
use peer_dataplane_common::{
    cap::CapConfig,
    counters::{GlobalCounters, PeeringCounters},
    pcx_status_str, DropReason, PassReason, DIRECTIONS, DIR_ACCEPTER_TO_REQUESTER,
    DIR_REQUESTER_TO_ACCEPTER, NAME_PEERING, NAME_VPC,
};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stats {
    pub global: GlobalView,
    pub peerings: Vec<PeeringView>,
}

/// The program-wide counters summed over the CPUs, with every reason by name. Derefs to
/// the counters; serializes as their totals plus `passed` and `dropped`.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalView {
    pub counters: GlobalCounters,
    /// Every pass reason, zero or not.
    pub passed: BTreeMap<&'static str, u64>,
    /// Every drop reason, zero or not.
    pub dropped: BTreeMap<&'static str, u64>,
}

impl std::ops::Deref for GlobalView {
    type Target = GlobalCounters;
    fn deref(&self) -> &GlobalCounters {
        &self.counters
    }
}

impl Serialize for GlobalView {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let totals = self.counters.totals();
        let mut map = s.serialize_map(Some(totals.len() + 2))?;
        for (name, n) in totals {
            map.serialize_entry(name, &n)?;
        }
        map.serialize_entry("passed", &self.passed)?;
        map.serialize_entry("dropped", &self.dropped)?;
        map.end()
    }
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

pub fn direction(c: &PeeringCounters, cap: &CapConfig) -> DirectionView {
    DirectionView {
        packets: c.packets,
        bytes: c.bytes,
        cap_bps: cap.is_capped().then(|| cap.bits_per_second()),
        dropped: drops(&c.drop, false),
    }
}

pub fn global_view(g: &GlobalCounters) -> GlobalView {
    GlobalView {
        counters: *g,
        passed: PassReason::ALL
            .iter()
            .map(|r| (r.as_str(), g.pass[*r as usize]))
            .collect(),
        dropped: drops(&g.drop, true),
    }
}

/// Every installed peering's traffic and the program-wide counters.
pub fn collect(snap: &Snapshot) -> Stats {
    let names = Names(&snap.state);
    let mut peerings: Vec<PeeringView> = snap
        .state
        .peerings
        .iter()
        .map(|(slot, p)| {
            let (ra, ar) = snap.peering_counters(*slot);
            PeeringView {
                id: names.get(NAME_PEERING, *slot),
                slot: *slot,
                status: pcx_status_str(p.status),
                requester_vpc: names.get(NAME_VPC, p.requester_vpc),
                accepter_vpc: names.get(NAME_VPC, p.accepter_vpc),
                requester_to_accepter: direction(&ra, &p.cap[DIR_REQUESTER_TO_ACCEPTER as usize]),
                accepter_to_requester: direction(&ar, &p.cap[DIR_ACCEPTER_TO_REQUESTER as usize]),
            }
        })
        .collect();
    peerings.sort_by(|a, b| a.id.cmp(&b.id));
    Stats {
        global: global_view(&snap.global()),
        peerings,
    }
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

pub fn per_cpu(snap: &Snapshot) -> Vec<CpuView> {
    snap.global_per_cpu
        .iter()
        .enumerate()
        .map(|(cpu, g)| CpuView {
            cpu,
            rx_packets: g.rx_packets,
            redirected_packets: g.redirected_packets,
            passed_packets: g.passed_packets,
            dropped_packets: g.dropped_packets,
        })
        .collect()
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
                DIRECTIONS[0],
                &p.requester_to_accepter,
                &p0.requester_to_accepter,
            ),
            (
                DIRECTIONS[1],
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

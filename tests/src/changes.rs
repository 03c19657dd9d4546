//! Changes to a random state while its frames run, for the differential test: each is
//! one kind of change that a flow's kept decision (docs/datapath.md §4.19) was made
//! from. The model keeps no decisions, so a frame decided by a stale one diverges.

use crate::random::Rng;
use peer_dataplane::desired::document::{Document, SgRuleDoc};
use peer_dataplane::desired::validate::{validate, PeeringStatus};

/// What a change touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Route,
    PeeringStatus,
    NetworkAcl,
    SecurityGroup,
    Port,
    Cap,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Route,
        Kind::PeeringStatus,
        Kind::NetworkAcl,
        Kind::SecurityGroup,
        Kind::Port,
        Kind::Cap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Route => "route",
            Kind::PeeringStatus => "peering status",
            Kind::NetworkAcl => "network ACL rule",
            Kind::SecurityGroup => "security group rule",
            Kind::Port => "port",
            Kind::Cap => "cap",
        }
    }
}

/// A valid document one random change away from `doc`, and the kind of that change;
/// `None` if a few tries found none (a state with nothing of the kinds drawn).
pub fn change(rng: &mut Rng, doc: &Document) -> Option<(Document, Kind)> {
    for _ in 0..12 {
        let kind = *rng.pick(&Kind::ALL);
        let mut d = doc.clone();
        if apply(rng, &mut d, kind) && d != *doc && validate(&d).is_ok() {
            return Some((d, kind));
        }
    }
    None
}

fn apply(rng: &mut Rng, d: &mut Document, kind: Kind) -> bool {
    match kind {
        Kind::Route => {
            let tables: Vec<usize> = (0..d.route_tables.len())
                .filter(|&i| !d.route_tables[i].routes.is_empty())
                .collect();
            let Some(&t) = pick(rng, &tables) else {
                return false;
            };
            let routes = &mut d.route_tables[t].routes;
            let r = rng.below(routes.len() as u64) as usize;
            if rng.chance(60) || d.peerings.is_empty() {
                routes.remove(r);
            } else {
                // Another peering: valid only if it joins the table's VPC.
                routes[r].target = rng.pick(&d.peerings).id.clone();
            }
            true
        }
        Kind::PeeringStatus => {
            if d.peerings.is_empty() {
                return false;
            }
            let i = rng.below(d.peerings.len() as u64) as usize;
            d.peerings[i].status = *rng.pick(&PeeringStatus::ALL);
            true
        }
        Kind::NetworkAcl => {
            let acls: Vec<usize> = (0..d.network_acls.len())
                .filter(|&i| !d.network_acls[i].rules.is_empty())
                .collect();
            let Some(&a) = pick(rng, &acls) else {
                return false;
            };
            let rules = &mut d.network_acls[a].rules;
            let r = rng.below(rules.len() as u64) as usize;
            if rng.chance(50) {
                rules.remove(r);
            } else {
                let flipped = if rules[r].action == "allow" {
                    "deny"
                } else {
                    "allow"
                };
                rules[r].action = flipped.into();
            }
            true
        }
        Kind::SecurityGroup => {
            if d.security_groups.is_empty() {
                return false;
            }
            let g = rng.below(d.security_groups.len() as u64) as usize;
            let rules = &mut d.security_groups[g].rules;
            if !rules.is_empty() && rng.chance(70) {
                let r = rng.below(rules.len() as u64) as usize;
                rules.remove(r);
            } else {
                rules.push(SgRuleDoc {
                    direction: rng.pick(&["ingress", "egress"]).to_string(),
                    protocol: "all".into(),
                    port_from: None,
                    port_to: None,
                    cidr: Some(rng.pick(&["0.0.0.0/0", "::/0"]).to_string()),
                    peer_security_group: None,
                });
            }
            true
        }
        Kind::Port => {
            if d.ports.is_empty() {
                return false;
            }
            let i = rng.below(d.ports.len() as u64) as usize;
            d.ports.remove(i);
            true
        }
        Kind::Cap => {
            if d.peerings.is_empty() {
                return false;
            }
            let i = rng.below(d.peerings.len() as u64) as usize;
            let p = &mut d.peerings[i];
            p.bandwidth_mbps_requester_to_accepter = None;
            p.bandwidth_mbps_accepter_to_requester = None;
            if p.bandwidth_mbps.is_some() && rng.chance(50) {
                p.bandwidth_mbps = None;
                p.burst_bytes = None;
            } else {
                // Near the rate frames arrive at, as the random states' caps are.
                p.bandwidth_mbps = Some(1 + rng.below(10));
                p.burst_bytes = Some(1518 + rng.below(1500));
            }
            true
        }
    }
}

fn pick<'a, T>(rng: &mut Rng, xs: &'a [T]) -> Option<&'a T> {
    (!xs.is_empty()).then(|| rng.pick(xs))
}

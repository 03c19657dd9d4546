//! The mixed run's changes: what each of the seven kinds of a cycle calls, and the hosts
//! it concerns (computed here, independently of the control plane).

use super::*;

/// One change of the mixed run and the hosts it concerns.
pub(super) struct Planned {
    pub(super) what: &'static str,
    pub(super) method: &'static str,
    pub(super) path: String,
    pub(super) body: Option<Value>,
    pub(super) vpcs: Vec<String>,
}

pub(super) fn hosts_of(vpcs: &[String], hosts: usize) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    for v in vpcs {
        if let Some(n) = v.strip_prefix("vpc-s") {
            let n: usize = n.parse().unwrap();
            out.extend((0..hosts).filter(|h| small_vpc_of(*h) == n));
        } else if v == "vpc-big" {
            out.extend(BIG_HOSTS);
        } else if v == "vpc-bigpeer" {
            out.extend(BIG_PEER_HOSTS);
        }
    }
    out
}

/// The `i`-th change of a cycle of seven kinds over VPC `vpc` (and its next pair for
/// peerings): route added, route removed, ACL created, ACL deleted, peering requested,
/// accepted, deleted.
pub(super) fn plan(
    i: usize,
    vpc: &str,
    table: &str,
    other: &str,
    pcx: &mut Option<String>,
    seq: usize,
) -> Planned {
    let vpcs = vec![vpc.to_string()];
    let dest = format!("192.168.{}.0/24", seq % 250);
    match i % 7 {
        0 => Planned {
            what: "route add",
            method: "POST",
            path: format!("/v1/route-tables/{table}/routes"),
            body: Some(json!({"destination_cidr": dest, "target": "blackhole"})),
            vpcs,
        },
        1 => Planned {
            what: "route delete",
            method: "DELETE",
            path: format!("/v1/route-tables/{table}/routes/{dest}"),
            body: None,
            vpcs,
        },
        2 => Planned {
            what: "acl create",
            method: "POST",
            path: "/v1/network-acls".into(),
            body: Some(
                json!({"id": format!("acl-{vpc}"), "vpc_id": vpc, "rules": [{"number": 10, "direction": "ingress", "protocol": "tcp", "port_from": 22, "port_to": 22, "cidr": "0.0.0.0/0", "action": "deny"}]}),
            ),
            vpcs,
        },
        3 => Planned {
            what: "acl delete",
            method: "DELETE",
            path: format!("/v1/network-acls/acl-{vpc}"),
            body: None,
            vpcs,
        },
        4 => {
            let id = format!("pcx-x{seq}");
            *pcx = Some(id.clone());
            Planned {
                what: "peering request",
                method: "POST",
                path: "/v1/vpc-peering".into(),
                body: Some(json!({"id": id, "requester_vpc_id": vpc, "accepter_vpc_id": other})),
                vpcs: vec![vpc.to_string(), other.to_string()],
            }
        }
        5 => Planned {
            what: "peering accept",
            method: "POST",
            path: format!("/v1/vpc-peering/{}/accept", pcx.as_deref().unwrap()),
            body: None,
            vpcs: vec![vpc.to_string(), other.to_string()],
        },
        _ => Planned {
            what: "peering delete",
            method: "DELETE",
            path: format!("/v1/vpc-peering/{}", pcx.as_deref().unwrap()),
            body: None,
            vpcs: vec![vpc.to_string(), other.to_string()],
        },
    }
}

/// One measured change.
pub(super) struct Outcome {
    pub(super) what: &'static str,
    pub(super) big: bool,
    pub(super) revision: u64,
    pub(super) latency: Duration,
    pub(super) affected: BTreeSet<usize>,
}

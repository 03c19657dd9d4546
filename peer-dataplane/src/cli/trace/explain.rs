//! A trace record turned into stages and a verdict, with names from the installed state:
//! one method per pipeline stage, in pipeline order.

use super::lookups::{acl_stage, matched_route, route_target, sg_fact, sg_result};
use super::{Stage, Trace};
use crate::bpf::progrun;
use crate::cli::frame::Request;
use crate::cli::render::bits_per_second;
use crate::maps::MapState;
use crate::views::installed::{EGRESS, INGRESS};
use crate::views::{ip, Names};
use etherparse::SlicedPacket;
use peer_dataplane_common::{
    route_table_id, trace::*, DropReason, PassReason, DIRECTIONS, NAME_PEERING, NAME_PORT,
    NAME_ROUTE_TABLE, NAME_VPC, PCX_ACTIVE, ROUTE_BLACKHOLE, ROUTE_LOCAL,
};
use serde_json::{json, Value};
use std::net::IpAddr;

/// Turns a trace record into stages and a verdict, with names from `state`. `frame` is
/// what was run, `out` what the program made of it.
pub fn explain(
    r: &TraceRecord,
    state: &MapState,
    req: &Request,
    frame: &[u8],
    out: &[u8],
) -> Trace {
    let (verdict, reason) = match r.verdict {
        VERDICT_REDIRECT => ("forward", None),
        VERDICT_PASS => ("pass", PassReason::from_u32(r.reason).map(|p| p.as_str())),
        _ => ("drop", DropReason::from_u32(r.reason).map(|d| d.as_str())),
    };
    // The stage that decided: the last one reached (none when forwarded).
    let deciding = deciding(r, verdict, reason);
    let mut e = Explainer {
        r,
        state,
        req,
        frame,
        verdict,
        reason,
        deciding,
        src: ip(&r.src),
        dst: ip(&r.dst),
        stages: Vec::new(),
    };
    e.run(out);
    e.finish()
}

pub(super) struct Explainer<'a> {
    pub(super) r: &'a TraceRecord,
    pub(super) state: &'a MapState,
    req: &'a Request,
    pub(super) frame: &'a [u8],
    verdict: &'static str,
    pub(super) reason: Option<&'static str>,
    pub(super) deciding: u32,
    pub(super) src: IpAddr,
    pub(super) dst: IpAddr,
    stages: Vec<Stage>,
}

impl Explainer<'_> {
    /// Every stage the packet reached, in pipeline order.
    fn run(&mut self, out: &[u8]) {
        if self.uplink() == Some(self.r.ingress_ifindex) {
            self.uplink_port();
        } else {
            self.port();
        }
        if self.reached(STAGE_DECAP) {
            self.decap();
        }
        let stages: [(u32, fn(&mut Self)); 11] = [
            (STAGE_PARSE, Self::parse),
            (STAGE_ROUTE, Self::route),
            (STAGE_PEERING, Self::peering),
            (STAGE_ORIGIN, Self::origin),
            (STAGE_EGRESS_ACL, Self::egress_acl),
            (STAGE_ENDPOINT, Self::endpoint),
            (STAGE_RETURN_ROUTE, Self::return_route),
            (STAGE_INGRESS_ACL, Self::ingress_acl),
            (STAGE_SECURITY_GROUPS, Self::security_groups),
            (STAGE_TTL, Self::ttl),
            (STAGE_DELIVER, Self::deliver),
        ];
        for (bit, stage) in stages {
            if self.reached(bit) {
                stage(self);
            }
        }
        self.cap(self.frame);
        if self.reached(STAGE_ENCAP) {
            self.encap(out);
        } else if self.reached(STAGE_REWRITE) {
            self.rewrite(out);
        }
    }

    pub(super) fn reached(&self, bit: u32) -> bool {
        self.r.reached & bit != 0
    }

    fn names(&self) -> Names<'_> {
        Names(self.state)
    }

    fn port_name(&self, ifindex: u32) -> String {
        self.names().get(NAME_PORT, ifindex)
    }

    pub(super) fn push(&mut self, bit: u32, stage: &'static str, detail: String, facts: Value) {
        let result = if bit == self.deciding {
            self.verdict
        } else {
            "ok"
        };
        self.stages.push(Stage {
            stage,
            result,
            detail,
            facts,
        });
    }

    fn port(&mut self) {
        let r = self.r;
        if !self.reached(STAGE_PORT) {
            self.push(
                STAGE_PORT,
                "port",
                format!(
                    "ifindex {} is not a port of this data plane: the frame goes to the kernel untouched",
                    r.ingress_ifindex
                ),
                json!({"ifindex": r.ingress_ifindex, "interface": null}),
            );
        } else {
            let acl = self.names().acl(r.port_acl);
            let sgs = self.names().security_groups(r.port_sg);
            self.push(
                STAGE_PORT,
                "port",
                format!(
                    "{} (ifindex {}): {}, route table {}, network ACL {}, security groups {}",
                    self.port_name(r.ingress_ifindex),
                    r.ingress_ifindex,
                    self.names().get(NAME_VPC, r.port_vpc),
                    self.names().get(NAME_ROUTE_TABLE, route_table_id(r.port_route_table)),
                    acl.as_deref().unwrap_or("none"),
                    sgs.as_deref().unwrap_or("none"),
                ),
                json!({
                    "interface": self.port_name(r.ingress_ifindex),
                    "ifindex": r.ingress_ifindex,
                    "vpc": self.names().get(NAME_VPC, r.port_vpc),
                    "route_table": self.names().get(NAME_ROUTE_TABLE, route_table_id(r.port_route_table)),
                    "network_acl": acl,
                    "security_groups": sgs,
                }),
            );
        }
    }

    fn parse(&mut self) {
        let r = self.r;
        let (src, dst) = (self.src, self.dst);
        let detail = match (self.verdict, self.deciding == STAGE_PARSE, self.reason) {
            (_, true, Some("not-ip")) => "not IPv4 or IPv6: passed to the kernel".to_string(),
            (_, true, Some(why)) => format!("{why}: the frame is not well formed"),
            _ => {
                let l4 = if r.ports_known != 0 && (r.proto == 6 || r.proto == 17) {
                    format!(" {src}:{} -> {dst}:{}", r.sport, r.dport)
                } else {
                    format!(" {src} -> {dst}")
                };
                let proto = match r.proto {
                    1 => "icmp".to_string(),
                    6 => "tcp".to_string(),
                    17 => "udp".to_string(),
                    58 => "icmpv6".to_string(),
                    p => format!("protocol {p}"),
                };
                let mut d = format!(
                    "{} {proto}{l4}, ttl {}",
                    if r.is_v4 != 0 { "IPv4" } else { "IPv6" },
                    r.ttl
                );
                if self.deciding == STAGE_PARSE && self.reason == Some("not-routable") {
                    d.push_str(": the destination is not unicast here; passed to the kernel");
                }
                d
            }
        };
        self.push(
            STAGE_PARSE,
            "parse",
            detail,
            json!({"ipv4": r.is_v4 != 0, "protocol": r.proto, "src": src.to_string(), "dst": dst.to_string(), "ttl": r.ttl}),
        );
    }

    fn route(&mut self) {
        let r = self.r;
        let dst = self.dst;
        let table = self
            .names()
            .get(NAME_ROUTE_TABLE, route_table_id(r.port_route_table));
        let (detail, facts) = if r.route_kind == NO_ROUTE {
            (
                format!("no route to {dst} in {table}"),
                json!({"table": table, "destination": null, "target": null}),
            )
        } else {
            let prefix = matched_route(self.state, r.port_route_table, &r.dst);
            let target = route_target(self.state, r.route_kind, r.route_target);
            let mut d = format!(
                "{} -> {target} in {table}",
                prefix.as_deref().unwrap_or("?")
            );
            match r.route_kind {
                ROUTE_LOCAL => d.push_str(": inside the VPC, the kernel delivers it"),
                ROUTE_BLACKHOLE => d.push_str(": the route's peering is gone"),
                _ => {}
            }
            (
                d,
                json!({"table": table, "destination": prefix, "target": target}),
            )
        };
        self.push(STAGE_ROUTE, "route", detail, facts);
    }

    fn peering(&mut self) {
        let r = self.r;
        let pcx = self.names().get(NAME_PEERING, r.peering_slot);
        let status = peer_dataplane_common::pcx_status_str(r.peering_status);
        let (detail, facts) = if r.peering_status == NO_ROUTE {
            (
                format!("{pcx} is not installed (deleted): the route is a blackhole"),
                json!({"peering": pcx, "status": null}),
            )
        } else if r.peering_dir == NO_ROUTE {
            (
                format!(
                    "{pcx} does not join {}",
                    self.names().get(NAME_VPC, r.port_vpc)
                ),
                json!({"peering": pcx, "status": status}),
            )
        } else {
            let dir = DIRECTIONS[r.peering_dir as usize & 1];
            let mut d = format!(
                "{pcx} ({status}): {} -> {}, {dir}",
                self.names().get(NAME_VPC, r.port_vpc),
                self.names().get(NAME_VPC, r.peer_vpc)
            );
            if r.peering_status != PCX_ACTIVE {
                d.push_str(": only an active peering carries traffic");
            }
            (
                d,
                json!({"peering": pcx, "status": status, "direction": dir, "peer_vpc": self.names().get(NAME_VPC, r.peer_vpc)}),
            )
        };
        self.push(STAGE_PEERING, "peering", detail, facts);
    }

    fn origin(&mut self) {
        let r = self.r;
        let src = self.src;
        let vpc = self.names().get(NAME_VPC, r.port_vpc);
        let detail = if self.deciding == STAGE_ORIGIN {
            format!("source {src} is neither the port's address nor inside {vpc}: transitive traffic is not forwarded")
        } else {
            format!("source {src} originated in {vpc}")
        };
        self.push(
            STAGE_ORIGIN,
            "origin",
            detail,
            json!({"src": src.to_string(), "vpc": vpc}),
        );
    }

    fn egress_acl(&mut self) {
        let r = self.r;
        let (d, f) = acl_stage(self.state, r.egress_acl_set, r.egress_acl, EGRESS);
        self.push(STAGE_EGRESS_ACL, "egress-acl", d, f);
    }

    fn endpoint(&mut self) {
        if self.deciding != STAGE_ENDPOINT && self.remote_endpoint() {
            return self.remote_endpoint_stage();
        }
        let r = self.r;
        let dst = self.dst;
        let peer = self.names().get(NAME_VPC, r.peer_vpc);
        let (detail, facts) = if self.deciding == STAGE_ENDPOINT {
            let d = if self.reason == Some("outside-peer") {
                format!("{dst} is outside {peer}")
            } else {
                format!("no instance of {peer} has {dst} on this host")
            };
            (d, json!({"interface": null}))
        } else {
            (
                format!(
                    "{dst} is behind {} (ifindex {})",
                    self.port_name(r.ep_ifindex),
                    r.ep_ifindex
                ),
                json!({"interface": self.port_name(r.ep_ifindex), "ifindex": r.ep_ifindex}),
            )
        };
        self.push(STAGE_ENDPOINT, "endpoint", detail, facts);
    }

    fn return_route(&mut self) {
        let r = self.r;
        let src = self.src;
        let table = self
            .names()
            .get(NAME_ROUTE_TABLE, route_table_id(r.ep_route_table));
        let pcx = self.names().get(NAME_PEERING, r.peering_slot);
        let found = if r.return_kind == NO_ROUTE {
            "no route".to_string()
        } else {
            format!(
                "{} -> {}",
                matched_route(self.state, r.ep_route_table, &r.src)
                    .as_deref()
                    .unwrap_or("?"),
                route_target(self.state, r.return_kind, r.return_target)
            )
        };
        let detail = if self.deciding == STAGE_RETURN_ROUTE {
            format!("{table} has no route back to {src} over {pcx} (found: {found})")
        } else {
            format!("{table} routes {src} back over {pcx} ({found})")
        };
        self.push(
            STAGE_RETURN_ROUTE,
            "return-route",
            detail,
            json!({"table": table, "found": found}),
        );
    }

    fn ingress_acl(&mut self) {
        let r = self.r;
        let (d, f) = acl_stage(self.state, r.ingress_acl_set, r.ingress_acl, INGRESS);
        self.push(STAGE_INGRESS_ACL, "ingress-acl", d, f);
    }

    fn security_groups(&mut self) {
        let r = self.r;
        let (sender, receiver) = (
            self.names().security_groups(r.port_sg),
            self.names().security_groups(r.ep_sg),
        );
        let ct = match r.sg_conntrack {
            CT_UNTRACKABLE => "not trackable",
            CT_NEW => "no tracked flow",
            CT_ORIGINAL => "tracked flow",
            CT_REPLY => "reply of a tracked flow",
            _ => "not consulted",
        };
        let detail = if r.sg_conntrack == CT_ORIGINAL || r.sg_conntrack == CT_REPLY {
            format!("conntrack: {ct}: the rules are skipped")
        } else if r.sg_egress == SG_NO_GROUPS && r.sg_ingress == SG_NO_GROUPS {
            "neither port has security groups".to_string()
        } else {
            let side = |who: &str, g: &Option<String>, res: u32| match g {
                None => format!("{who} has no groups"),
                Some(g) => format!("{who}'s groups {g}: {}", sg_result(res)),
            };
            format!(
                "conntrack: {ct}; {}; {}",
                side("sender", &sender, r.sg_egress),
                side("receiver", &receiver, r.sg_ingress),
            )
        };
        self.push(
            STAGE_SECURITY_GROUPS,
            "security-groups",
            detail,
            json!({
                "conntrack": ct,
                "sender_groups": sender,
                "sender": sg_fact(r.sg_egress),
                "receiver_groups": receiver,
                "receiver": sg_fact(r.sg_ingress),
            }),
        );
    }

    fn ttl(&mut self) {
        let r = self.r;
        let detail = if self.deciding == STAGE_TTL {
            format!("ttl {} would expire here", r.ttl)
        } else {
            format!("ttl {}", r.ttl)
        };
        self.push(STAGE_TTL, "ttl", detail, json!({"ttl": r.ttl}));
    }

    fn deliver(&mut self) {
        if self.deciding != STAGE_DELIVER && self.remote_endpoint() {
            return; // the encap stage says where the frame goes
        }
        let r = self.r;
        let to = self.port_name(r.ep_ifindex);
        let detail = if self.deciding == STAGE_DELIVER {
            format!("{to} (ifindex {}) is not in the redirect map", r.ep_ifindex)
        } else {
            format!("redirect to {to}")
        };
        self.push(STAGE_DELIVER, "deliver", detail, json!({"interface": to}));
    }

    fn cap(&mut self, frame: &[u8]) {
        let r = self.r;
        if self.reached(STAGE_CAP) {
            let cap = r.cap;
            let debt = r.cap_tat_ns.saturating_sub(r.stamp_ns);
            let credit_ns = cap.burst_ns.saturating_sub(debt);
            let credit_bytes = credit_ns.saturating_mul(1000) / cap.ps_per_byte.max(1);
            let bps = cap.bits_per_second();
            let detail = format!(
                "{}, burst {} bytes: {credit_bytes} bytes of credit, the frame needs {}: {}",
                bits_per_second(Some(bps)),
                cap.burst_bytes(),
                frame.len(),
                if r.cap_conforms != 0 {
                    "conforms"
                } else {
                    "over the cap"
                }
            );
            self.push(
                STAGE_CAP,
                "cap",
                detail,
                json!({"bits_per_second": bps, "burst_bytes": cap.burst_bytes(), "credit_bytes": credit_bytes, "frame_bytes": frame.len(), "conforms": r.cap_conforms != 0}),
            );
        } else if self.reached(STAGE_REWRITE) {
            self.push(
                STAGE_CAP,
                "cap",
                "this direction is not capped".into(),
                json!({"bits_per_second": null}),
            );
        }
    }

    fn rewrite(&mut self, out: &[u8]) {
        let r = self.r;
        let detail = match SlicedPacket::from_ethernet(out) {
            Ok(p) => {
                let ttl = match &p.net {
                    Some(etherparse::NetSlice::Ipv4(h)) => h.header().ttl(),
                    Some(etherparse::NetSlice::Ipv6(h)) => h.header().hop_limit(),
                    _ => 0,
                };
                match &p.link {
                    Some(etherparse::LinkSlice::Ethernet2(e)) => format!(
                        "ttl {} -> {ttl}, {} -> {}",
                        r.ttl,
                        crate::desired::validate::format_mac(&e.source()),
                        crate::desired::validate::format_mac(&e.destination())
                    ),
                    _ => format!("ttl {} -> {ttl}", r.ttl),
                }
            }
            Err(e) => format!("output frame unreadable: {e}"),
        };
        self.push(
            STAGE_REWRITE,
            "rewrite",
            detail,
            json!({"frame_bytes": out.len()}),
        );
    }

    fn finish(self) -> Trace {
        let egress_port = (self.verdict == "forward").then(|| {
            if self.reached(STAGE_ENCAP) {
                "the uplink (encapsulated)".to_string()
            } else {
                self.port_name(self.r.ep_ifindex)
            }
        });
        Trace {
            packet: json!({
                "ingress_ifindex": self.r.ingress_ifindex,
                "protocol": self.req.protocol.name(),
                "src": self.req.src.to_string(),
                "dst": self.req.dst.to_string(),
                "sport": self.req.sport,
                "dport": self.req.dport,
                "ttl": self.req.ttl,
                "frame_bytes": self.frame.len(),
            }),
            stages: self.stages,
            verdict: self.verdict,
            reason: self.reason,
            action: progrun::action_name(self.r.action),
            egress_port,
            // Filled by the caller, which reads the table on every CPU.
            flow_cache: Default::default(),
        }
    }
}

/// Reasons only the tunnel's own checks give (the decap stage decides them).
const DECAP_REASONS: [&str; 5] = [
    "geneve-malformed",
    "geneve-unknown-option",
    "unknown-host",
    "spoofed-source",
    "vni-mismatch",
];

/// The stage that decided a packet that was not forwarded: the last one reached, where
/// the overlay's stages count only for the reasons they give (they are noted out of
/// pipeline order: the decap before the inner frame's stages, the encap before the cap).
pub fn deciding(r: &TraceRecord, verdict: &str, reason: Option<&str>) -> u32 {
    if verdict == "forward" {
        return 0;
    }
    let mut reached = r.reached;
    let decap_decided = reason.is_some_and(|x| DECAP_REASONS.contains(&x))
        || (reason == Some("peering-inactive") && reached & STAGE_PEERING == 0);
    if !decap_decided {
        reached &= !STAGE_DECAP;
    }
    if !matches!(reason, Some("mtu-exceeded" | "underlay-unreachable")) {
        reached &= !STAGE_ENCAP;
    }
    if reached == 0 {
        STAGE_PORT
    } else {
        1 << (31 - reached.leading_zeros())
    }
}

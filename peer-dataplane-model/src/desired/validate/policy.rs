//! Network ACLs and security groups: every rule field through [`rules`], the same checks
//! the control plane's API makes.

use super::checker::Checker;
use super::{NetworkAcl, SecurityGroup, SgRemote, SgRule, Topology};
use crate::desired::acl;
use crate::desired::document::{Document, NetworkAclDoc, SecurityGroupDoc};
use crate::desired::rules;
use std::collections::BTreeSet;

pub fn check_acl(c: &mut Checker, a: &NetworkAclDoc) -> Option<NetworkAcl> {
    let mut acl = NetworkAcl {
        id: a.id.clone(),
        vpc: a.vpc.clone(),
        ingress: Vec::new(),
        egress: Vec::new(),
    };
    let mut numbers = BTreeSet::new();
    let mut ok = true;
    for (i, r) in a.rules.iter().enumerate() {
        let what = format!("network acl {} rule {} (rules[{i}])", a.id, r.number);
        let number = c.check(rules::acl_rule_number(&what, r.number));
        let egress = c.check(rules::direction(&what, &r.direction));
        let mut fresh = true;
        if let Some(e) = egress {
            if !numbers.insert((e, r.number)) {
                c.err(format!("{what}: number is used twice for {}", r.direction));
                fresh = false;
            }
        }
        let matched = c.check(rules::protocol_and_ports(
            &what,
            &r.protocol,
            r.port_from,
            r.port_to,
        ));
        let allow = c.check(rules::acl_action(&what, &r.action));
        let cidr = c.rule_cidr(&format!("{what} cidr"), &r.cidr);
        match (egress, matched, allow, cidr, number.is_some() && fresh) {
            (Some(egress), Some((protocol, ports)), Some(allow), Some(cidr), true) => {
                let rule = acl::Rule {
                    number: r.number,
                    protocol,
                    ports,
                    cidr,
                    allow,
                };
                if egress {
                    acl.egress.push(rule);
                } else {
                    acl.ingress.push(rule);
                }
            }
            _ => ok = false,
        }
    }
    for (dir, rules) in [("ingress", &acl.ingress), ("egress", &acl.egress)] {
        if rules.len() > acl::MAX_RULES {
            c.err(format!(
                "network acl {}: {} {dir} rules, at most {}",
                a.id,
                rules.len(),
                acl::MAX_RULES
            ));
            ok = false;
        }
    }
    ok.then_some(acl)
}

pub fn check_security_group(
    c: &mut Checker,
    topo: &Topology,
    doc: &Document,
    g: &SecurityGroupDoc,
) -> Option<SecurityGroup> {
    let region = &topo.vpcs[&g.vpc].region;
    let mut sg = SecurityGroup {
        id: g.id.clone(),
        vpc: g.vpc.clone(),
        rules: Vec::new(),
    };
    let mut ok = true;
    for (i, r) in g.rules.iter().enumerate() {
        let what = format!("security group {} rules[{i}]", g.id);
        let mut problems = Vec::new();
        let egress = c.check(rules::direction(&what, &r.direction));
        let matched = c.check(rules::protocol_and_ports(
            &what,
            &r.protocol,
            r.port_from,
            r.port_to,
        ));
        let remote = match (&r.cidr, &r.peer_security_group) {
            (Some(s), None) => c.rule_cidr(&format!("{what} cidr"), s).map(SgRemote::Cidr),
            (None, Some(peer)) => {
                // A peer group: this VPC's own, or a peered VPC's in the same region.
                match doc.security_groups.iter().find(|x| &x.id == peer) {
                    None => {
                        problems.push(format!("peer_security_group {peer} does not exist"));
                        None
                    }
                    Some(p) => match topo.vpcs.get(&p.vpc) {
                        Some(v) if &v.region != region => {
                            problems.push(format!(
                                "peer_security_group {peer} is in region {}, not {region}: groups can be referenced within one region only",
                                v.region
                           ));
                            None
                        }
                        Some(_)
                            if p.vpc != g.vpc
                                && !topo.peerings.values().any(|x| {
                                    x.status.is_live()
                                        && x.other_side(&g.vpc) == Some(p.vpc.as_str())
                                }) =>
                        {
                            problems.push(format!(
                                "peer_security_group {peer} is in vpc {}, which is not peered with {}",
                                p.vpc, g.vpc
                           ));
                            None
                        }
                        Some(_) => Some(SgRemote::Group(peer.clone())),
                        // Its own error names the missing VPC.
                        None => None,
                    },
                }
            }
            _ => {
                problems.push("give exactly one of cidr and peer_security_group".into());
                None
            }
        };
        for p in &problems {
            c.err(format!("{what}: {p}"));
        }
        match (egress, matched, remote, problems.is_empty()) {
            (Some(egress), Some((protocol, ports)), Some(remote), true) => sg.rules.push(SgRule {
                egress,
                protocol,
                ports,
                remote,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(sg)
}

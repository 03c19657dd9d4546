//! The error collector: one pass reports everything wrong with a document.

use super::Topology;
use crate::desired::document::Document;
use crate::desired::rules::{self, Check};
use ipnet::IpNet;
use peer_dataplane_common::NAME_MAX_LEN;
use std::collections::BTreeSet;

/// Collects errors so that one pass reports everything wrong with a document.
pub struct Checker {
    pub errors: Vec<String>,
    /// `kind:id` of every object the document defines, valid or not.
    pub defined: BTreeSet<String>,
}

impl Checker {
    /// A collector that knows every object `doc` defines (see [`Checker::missing`]).
    pub fn for_document(doc: &Document) -> Checker {
        let ids = |kind: &str, ids: Vec<&String>| -> Vec<String> {
            ids.into_iter().map(|id| format!("{kind}:{id}")).collect()
        };
        let defined = [
            ids("vpc", doc.vpcs.iter().map(|x| &x.id).collect()),
            ids("subnet", doc.subnets.iter().map(|x| &x.id).collect()),
            ids(
                "route table",
                doc.route_tables.iter().map(|x| &x.id).collect(),
            ),
            ids("peering", doc.peerings.iter().map(|x| &x.id).collect()),
            ids(
                "network acl",
                doc.network_acls.iter().map(|x| &x.id).collect(),
            ),
            ids(
                "security group",
                doc.security_groups.iter().map(|x| &x.id).collect(),
            ),
            ids("host", doc.hosts.iter().map(|x| &x.id).collect()),
        ]
        .into_iter()
        .flatten()
        .collect();
        Checker {
            errors: Vec::new(),
            defined,
        }
    }

    pub fn err(&mut self, msg: String) {
        self.errors.push(msg);
    }

    /// Reports a reference to an object that is not there, unless the document defines it
    /// and it failed validation itself: its own error is the one worth reading.
    pub fn missing(&mut self, kind: &str, id: &str, msg: String) {
        if !self.defined.contains(&format!("{kind}:{id}")) {
            self.err(msg);
        }
    }

    /// Records a broken invariant; `None` lets the caller skip what depends on it.
    pub fn check<T>(&mut self, r: Check<T>) -> Option<T> {
        r.map_err(|e| self.err(e.message)).ok()
    }

    /// A VPC, subnet or route CIDR (see [`rules::cidr`]).
    pub fn cidr(&mut self, what: &str, s: &str) -> Option<IpNet> {
        self.check(rules::cidr(what, s))
    }

    /// A rule CIDR (see [`rules::rule_cidr`]).
    pub fn rule_cidr(&mut self, what: &str, s: &str) -> Option<IpNet> {
        self.check(rules::rule_cidr(what, s))
    }

    /// An object of `kind` that belongs to `vpc`: a fresh id, and a VPC that exists.
    pub fn vpc_object(
        &mut self,
        kind: &str,
        id: &str,
        vpc: &str,
        topo: &Topology,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        if !self.id(kind, id, seen) {
            return false;
        }
        if !topo.vpcs.contains_key(vpc) {
            self.missing("vpc", vpc, format!("{kind} {id}: vpc {vpc} does not exist"));
            return false;
        }
        true
    }

    pub fn id(&mut self, kind: &str, id: &str, seen: &mut BTreeSet<String>) -> bool {
        if id.is_empty() {
            self.err(format!("{kind} with an empty id"));
            return false;
        }
        if id.len() > NAME_MAX_LEN {
            self.err(format!("{kind} {id}: id longer than {NAME_MAX_LEN} bytes"));
            return false;
        }
        if !seen.insert(id.to_string()) {
            self.err(format!("{kind} {id}: defined more than once"));
            return false;
        }
        true
    }
}

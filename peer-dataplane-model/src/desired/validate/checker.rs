//! The error collector: one pass reports everything wrong with a document.

use super::Topology;
use crate::desired::document::Document;
use crate::desired::rules::{self, Check};
use ipnet::IpNet;
use peer_dataplane_common::NAME_MAX_LEN;
use std::collections::BTreeSet;

/// Collects errors so that one pass reports everything wrong with a document.
pub struct Checker<'d> {
    pub errors: Vec<String>,
    /// The document checked: [`Checker::missing`] asks it whether a reference it cannot
    /// resolve names an object that exists there but failed its own check.
    doc: Option<&'d Document>,
}

impl<'d> Checker<'d> {
    /// A collector that knows every object `doc` defines (see [`Checker::missing`]).
    pub fn for_document(doc: &'d Document) -> Checker<'d> {
        Checker {
            errors: Vec::new(),
            doc: Some(doc),
        }
    }

    /// A collector for checks outside a document (every missing reference is reported).
    pub fn alone() -> Checker<'static> {
        Checker {
            errors: Vec::new(),
            doc: None,
        }
    }

    /// Whether the document defines an object of `kind` with id `id`, valid or not. Asked
    /// only when a reference failed, so a search costs nothing on a valid document.
    fn defines(&self, kind: &str, id: &str) -> bool {
        let Some(doc) = self.doc else {
            return false;
        };
        match kind {
            "vpc" => doc.vpcs.iter().any(|x| x.id == id),
            "subnet" => doc.subnets.iter().any(|x| x.id == id),
            "route table" => doc.route_tables.iter().any(|x| x.id == id),
            "peering" => doc.peerings.iter().any(|x| x.id == id),
            "network acl" => doc.network_acls.iter().any(|x| x.id == id),
            "security group" => doc.security_groups.iter().any(|x| x.id == id),
            "host" => doc.hosts.iter().any(|x| x.id == id),
            _ => false,
        }
    }

    pub fn err(&mut self, msg: String) {
        self.errors.push(msg);
    }

    /// Reports a reference to an object that is not there, unless the document defines it
    /// and it failed validation itself: its own error is the one worth reading.
    pub fn missing(&mut self, kind: &str, id: &str, msg: String) {
        if !self.defines(kind, id) {
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
    pub fn vpc_object<'i>(
        &mut self,
        kind: &str,
        id: &'i str,
        vpc: &str,
        topo: &Topology,
        seen: &mut BTreeSet<&'i str>,
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

    /// A valid id, not seen before among the ids `seen` of its kind.
    pub fn id<'i>(&mut self, kind: &str, id: &'i str, seen: &mut BTreeSet<&'i str>) -> bool {
        if id.is_empty() {
            self.err(format!("{kind} with an empty id"));
            return false;
        }
        if id.len() > NAME_MAX_LEN {
            self.err(format!("{kind} {id}: id longer than {NAME_MAX_LEN} bytes"));
            return false;
        }
        if !seen.insert(id) {
            self.err(format!("{kind} {id}: defined more than once"));
            return false;
        }
        true
    }
}

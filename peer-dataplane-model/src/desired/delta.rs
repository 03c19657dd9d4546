//! A change to a host's document: what the control plane sends an agent that already holds
//! the document of an earlier revision. Objects travel whole (they are small), except the
//! routes of a table the host already has, which travel one by one: a table may hold
//! 100,000 routes and a change usually touches one.

use super::document::{Document, PortDoc, RouteDoc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Delta {
    /// The document's `local_host` after the change, when it changed (`Some(None)`: the
    /// host left the fleet).
    #[serde(default, with = "serde_with::rust::double_option")]
    pub local_host: Option<Option<String>>,
    /// New and changed objects, whole; a route table here is new to the host and carries
    /// every route.
    #[serde(default, skip_serializing_if = "is_default")]
    pub put: Document,
    /// Objects gone from the host's document, by kind and id.
    #[serde(default, skip_serializing_if = "is_default")]
    pub removed: Removed,
    /// Routes added, retargeted (`target`) or removed (no `target`) in tables the host keeps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteChange>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    v == &T::default()
}

/// Ids of removed objects, per kind (remote ports: `HOST/INTERFACE`); empty kinds are
/// left out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Removed {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vpcs: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub route_tables: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peerings: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_acls: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remote_ports: Vec<String>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteChange {
    pub table: String,
    pub destination: String,
    pub target: Option<String>,
}

pub use super::document::remote_port_key;

/// Calls `$m!(field, id expression)` for every object list of a [`Document`] but the route
/// tables, which have their own rules.
macro_rules! each_kind {
    ($m:ident) => {
        $m!(hosts, |o: &super::document::HostDoc| o.id.clone());
        $m!(vpcs, |o: &super::document::VpcDoc| o.id.clone());
        $m!(subnets, |o: &super::document::SubnetDoc| o.id.clone());
        $m!(peerings, |o: &super::document::PeeringDoc| o.id.clone());
        $m!(ports, |o: &PortDoc| o.interface.clone());
        $m!(network_acls, |o: &super::document::NetworkAclDoc| o
            .id
            .clone());
        $m!(security_groups, |o: &super::document::SecurityGroupDoc| o
            .id
            .clone());
        $m!(remote_ports, remote_port_key);
    };
}

impl Delta {
    /// Nothing changes.
    pub fn is_empty(&self) -> bool {
        self == &Delta::default()
    }

    /// How many objects and routes the delta carries (for logs and metrics).
    pub fn size(&self) -> usize {
        let p = &self.put;
        let r = &self.removed;
        p.hosts.len()
            + p.vpcs.len()
            + p.subnets.len()
            + p.route_tables.len()
            + p.peerings.len()
            + p.ports.len()
            + p.network_acls.len()
            + p.security_groups.len()
            + p.remote_ports.len()
            + r.hosts.len()
            + r.vpcs.len()
            + r.subnets.len()
            + r.route_tables.len()
            + r.peerings.len()
            + r.ports.len()
            + r.network_acls.len()
            + r.security_groups.len()
            + r.remote_ports.len()
            + self.routes.len()
            + usize::from(self.local_host.is_some())
    }

    /// The objects that differ between `old` and `new`, route tables compared without their
    /// routes (those are the caller's: see [`Delta::routes`]). A table new to `new` is put
    /// as `new` has it.
    pub fn objects_between(old: &Document, new: &Document) -> Delta {
        let mut d = Delta::default();
        if old.local_host != new.local_host {
            d.local_host = Some(new.local_host.clone());
        }
        macro_rules! kind {
            ($field:ident, $id:expr) => {
                let id = $id;
                let before: BTreeMap<String, _> = old.$field.iter().map(|o| (id(o), o)).collect();
                let mut seen = BTreeSet::new();
                for o in &new.$field {
                    let k = id(o);
                    if before.get(&k) != Some(&o) {
                        d.put.$field.push(o.clone());
                    }
                    seen.insert(k);
                }
                d.removed.$field = before.into_keys().filter(|k| !seen.contains(k)).collect();
            };
        }
        each_kind!(kind);
        let before: BTreeMap<&str, _> = old
            .route_tables
            .iter()
            .map(|t| (t.id.as_str(), t))
            .collect();
        for t in &new.route_tables {
            match before.get(t.id.as_str()) {
                Some(b) if b.vpc == t.vpc => {}
                _ => d.put.route_tables.push(t.clone()),
            }
        }
        let now: BTreeSet<&str> = new.route_tables.iter().map(|t| t.id.as_str()).collect();
        d.removed.route_tables = before
            .into_keys()
            .filter(|k| !now.contains(k))
            .map(str::to_string)
            .collect();
        d
    }
}

/// A document kept ready for deltas: each table's routes indexed by destination, so that
/// applying one route change costs one route, not a search through the table.
#[derive(Debug, Clone, Default)]
pub struct Held {
    pub doc: Document,
    /// table id -> destination -> position in that table's `routes`.
    index: BTreeMap<String, BTreeMap<String, usize>>,
    /// Tables whose routes changed since [`Held::take_changed`] (validation reads only
    /// those again).
    changed: BTreeSet<String>,
}

impl Held {
    pub fn new(doc: Document) -> Held {
        let mut h = Held {
            doc,
            index: BTreeMap::new(),
            changed: BTreeSet::new(),
        };
        h.reindex_all();
        h
    }

    /// The tables whose routes changed since the last call (or since [`Held::new`]: none;
    /// a new document is validated whole anyway).
    pub fn take_changed(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.changed)
    }

    fn reindex_all(&mut self) {
        self.index = self
            .doc
            .route_tables
            .iter()
            .map(|t| (t.id.clone(), index_of(&t.routes)))
            .collect();
    }

    /// Applies `d`. A route change to a table the document does not hold, or a removal of
    /// a route it does not have, is an error naming it (the delta was made for another
    /// base): nothing is changed then.
    pub fn apply(&mut self, d: &Delta) -> Result<(), String> {
        // Check the route changes first: the delta is applied whole or not at all.
        for c in &d.routes {
            let table = self.index.get(&c.table);
            let put_whole = d.put.route_tables.iter().any(|t| t.id == c.table);
            if table.is_none() && !put_whole {
                return Err(format!(
                    "route change for {} in route table {}, which this host does not hold",
                    c.destination, c.table
                ));
            }
            if c.target.is_none()
                && !put_whole
                && !table.is_some_and(|t| t.contains_key(&c.destination))
            {
                return Err(format!(
                    "removal of route {} from route table {}, which has no such route",
                    c.destination, c.table
                ));
            }
        }
        self.changed
            .extend(d.routes.iter().map(|c| c.table.clone()));
        self.changed
            .extend(d.put.route_tables.iter().map(|t| t.id.clone()));
        self.changed.extend(d.removed.route_tables.iter().cloned());
        let doc = &mut self.doc;
        if let Some(h) = &d.local_host {
            doc.local_host = h.clone();
        }
        macro_rules! kind {
            ($field:ident, $id:expr) => {
                // Most deltas touch one or two kinds: the others are not read.
                if !d.removed.$field.is_empty() || !d.put.$field.is_empty() {
                    let id = $id;
                    let gone: BTreeSet<&String> = d.removed.$field.iter().collect();
                    let changed: BTreeMap<String, _> =
                        d.put.$field.iter().map(|o| (id(o), o)).collect();
                    doc.$field.retain(|o| {
                        let k = id(o);
                        !gone.contains(&k) && !changed.contains_key(&k)
                    });
                    doc.$field.extend(changed.into_values().cloned());
                }
            };
        }
        each_kind!(kind);
        let gone: BTreeSet<&str> = d
            .removed
            .route_tables
            .iter()
            .chain(d.put.route_tables.iter().map(|t| &t.id))
            .map(String::as_str)
            .collect();
        doc.route_tables.retain(|t| !gone.contains(t.id.as_str()));
        for t in &d.removed.route_tables {
            self.index.remove(t);
        }
        for t in &d.put.route_tables {
            self.index.insert(t.id.clone(), index_of(&t.routes));
            doc.route_tables.push(t.clone());
        }
        for c in &d.routes {
            let pos = doc
                .route_tables
                .iter()
                .position(|t| t.id == c.table)
                .expect("checked above");
            let routes = &mut doc.route_tables[pos].routes;
            let index = self
                .index
                .get_mut(&c.table)
                .expect("indexed with the table");
            match (&c.target, index.get(&c.destination).copied()) {
                (Some(target), Some(i)) => routes[i].target = target.clone(),
                (Some(target), None) => {
                    index.insert(c.destination.clone(), routes.len());
                    routes.push(RouteDoc::new(c.destination.clone(), target.clone()));
                }
                (None, Some(i)) => {
                    index.remove(&c.destination);
                    routes.swap_remove(i);
                    if let Some(moved) = routes.get(i) {
                        index.insert(moved.destination.clone(), i);
                    }
                }
                (None, None) => {} // checked above: only in a table put whole
            }
        }
        Ok(())
    }
}

fn index_of(routes: &[RouteDoc]) -> BTreeMap<String, usize> {
    routes
        .iter()
        .enumerate()
        .map(|(i, r)| (r.destination.clone(), i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::document::{RouteTableDoc, VpcDoc};

    fn doc(routes: &[(&str, &str)]) -> Document {
        Document {
            vpcs: vec![VpcDoc {
                id: "vpc-a".into(),
                cidrs: vec!["10.0.0.0/16".into()],
                ..Default::default()
            }],
            route_tables: vec![RouteTableDoc {
                id: "rtb-a".into(),
                vpc: "vpc-a".into(),
                routes: routes.iter().map(|(d, t)| RouteDoc::new(*d, *t)).collect(),
            }],
            ..Default::default()
        }
    }

    fn sorted(mut d: Document) -> Document {
        for t in &mut d.route_tables {
            t.routes.sort_by(|a, b| a.destination.cmp(&b.destination));
        }
        d
    }

    #[test]
    fn routes_apply_one_by_one_and_objects_whole() {
        let mut held = Held::new(doc(&[
            ("10.1.0.0/16", "pcx-1"),
            ("10.2.0.0/16", "pcx-1"),
            ("10.3.0.0/16", "pcx-1"),
        ]));
        let mut d = Delta {
            routes: vec![
                RouteChange {
                    table: "rtb-a".into(),
                    destination: "10.1.0.0/16".into(),
                    target: None,
                },
                RouteChange {
                    table: "rtb-a".into(),
                    destination: "10.3.0.0/16".into(),
                    target: Some("blackhole".into()),
                },
                RouteChange {
                    table: "rtb-a".into(),
                    destination: "10.4.0.0/16".into(),
                    target: Some("pcx-2".into()),
                },
            ],
            ..Default::default()
        };
        d.put.vpcs.push(VpcDoc {
            id: "vpc-b".into(),
            cidrs: vec!["10.9.0.0/16".into()],
            ..Default::default()
        });
        held.apply(&d).unwrap();
        let mut want = doc(&[
            ("10.2.0.0/16", "pcx-1"),
            ("10.3.0.0/16", "blackhole"),
            ("10.4.0.0/16", "pcx-2"),
        ]);
        want.vpcs.push(d.put.vpcs[0].clone());
        assert_eq!(sorted(held.doc.clone()), sorted(want));
        // The index followed the swap: removing the moved route works.
        let del = Delta {
            routes: vec![RouteChange {
                table: "rtb-a".into(),
                destination: "10.4.0.0/16".into(),
                target: None,
            }],
            ..Default::default()
        };
        held.apply(&del).unwrap();
        assert_eq!(held.doc.route_tables[0].routes.len(), 2);
        assert!(held.doc.route_tables[0]
            .routes
            .iter()
            .all(|r| r.destination != "10.4.0.0/16"));
    }

    #[test]
    fn a_delta_for_another_base_changes_nothing() {
        let mut held = Held::new(doc(&[("10.1.0.0/16", "pcx-1")]));
        let before = held.doc.clone();
        let mut d = Delta {
            routes: vec![RouteChange {
                table: "rtb-a".into(),
                destination: "10.7.0.0/16".into(),
                target: None,
            }],
            ..Default::default()
        };
        d.removed.vpcs.push("vpc-a".into());
        let e = held.apply(&d).unwrap_err();
        assert!(e.contains("10.7.0.0/16") && e.contains("rtb-a"), "{e}");
        assert_eq!(held.doc, before);
    }

    #[test]
    fn objects_between_finds_puts_and_removals() {
        let old = doc(&[("10.1.0.0/16", "pcx-1")]);
        let mut new = doc(&[]);
        new.vpcs[0].cidrs.push("10.5.0.0/16".into());
        new.local_host = Some("h1".into());
        let d = Delta::objects_between(&old, &new);
        assert_eq!(d.put.vpcs, new.vpcs);
        assert!(d.put.route_tables.is_empty(), "routes are the caller's");
        assert_eq!(d.local_host, Some(Some("h1".into())));
        let mut held = Held::new(old);
        held.apply(&d).unwrap();
        assert_eq!(held.doc.vpcs, new.vpcs);
        // Round trip through JSON (the wire).
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Delta>(&text).unwrap(), d);
    }
}

//! Host-only tests of the state document path: parse -> validate -> compile -> plan.
//! Every refusal must name the problem, and a refused document must change nothing.

use peer_dataplane_common::{NAME_PEERING, PCX_ACTIVE, PCX_DELETED, ROUTE_PCX, ROUTE_VPC_CIDR};
use peer_dataplane_model::desired::compile;
use peer_dataplane_model::desired::document::Document;
use peer_dataplane_model::desired::ids::Ids;
use peer_dataplane_model::desired::validate::validate;
use peer_dataplane_model::desired::validate::PeeringStatus;
use peer_dataplane_model::maps::MapState;
use peer_dataplane_model::reconcile::{apply, plan};

mod common;
use common::{FakeIfindex, SEED};
use peer_dataplane_common::acl::{acl_addr_table_set, acl_set_id};

use common::seed;

fn refused(doc: &Document) -> String {
    validate(doc)
        .expect_err("document must be refused")
        .to_string()
}

#[test]
fn seed_topology_validates_and_compiles() {
    let topo = validate(&seed()).unwrap();
    assert_eq!(topo.vpcs.len(), 3);
    assert_eq!(topo.peerings.len(), 2);
    // Implicit local routes were added for each VPC CIDR (v4 and v6).
    assert_eq!(topo.route_tables["rtb-a"].routes.len(), 4);
    let (state, ids) = compile(&topo, &Ids::default(), &FakeIfindex, &|_| 0, &|_| 0).unwrap();
    assert_eq!(state.ports.len(), 3);
    assert_eq!(state.endpoints.len(), 6);
    assert_eq!(state.devmap.len(), 3);
    assert_eq!(state.peerings.len(), 2);
    // 4 + 6 + 4 route-table entries, 6 VPC CIDR entries.
    assert_eq!(state.routes.len(), 20);
    assert_eq!(
        state
            .routes
            .values()
            .filter(|r| r.kind == ROUTE_VPC_CIDR)
            .count(),
        6
    );
    assert_eq!(
        state
            .routes
            .values()
            .filter(|r| r.kind == ROUTE_PCX)
            .count(),
        8
    );
    let ab = ids.get(NAME_PEERING, "pcx-ab").unwrap();
    assert_eq!(state.peerings[&ab].status, PCX_ACTIVE);
}

#[test]
fn deleting_a_peering_rewrites_one_entry() {
    let topo = validate(&seed()).unwrap();
    let (before, ids) = compile(&topo, &Ids::default(), &FakeIfindex, &|_| 0, &|_| 0).unwrap();
    let mut doc = seed();
    doc.peerings
        .iter_mut()
        .find(|p| p.id == "pcx-ab")
        .unwrap()
        .status = PeeringStatus::Deleted;
    let (after, ids2) =
        compile(&validate(&doc).unwrap(), &ids, &FakeIfindex, &|_| 0, &|_| 0).unwrap();
    let ops = plan(&after, &before, &ids2.new_since(&ids, NAME_PEERING));
    assert_eq!(ops.len(), 1, "{ops:?}");
    let mut state: MapState = before.clone();
    apply(&ops, &mut state).unwrap();
    let ab = ids.get(NAME_PEERING, "pcx-ab").unwrap();
    assert_eq!(state.peerings[&ab].status, PCX_DELETED);
}

#[test]
fn overlapping_peer_cidrs_are_refused_naming_both() {
    let mut doc = seed();
    doc.vpcs.iter_mut().find(|v| v.id == "vpc-b").unwrap().cidrs = vec!["10.0.128.0/17".into()];
    // keep the rest consistent so that only the overlap is reported
    let msg = refused(&doc);
    assert!(
        msg.contains("pcx-ab") && msg.contains("10.0.0.0/16") && msg.contains("10.0.128.0/17"),
        "{msg}"
    );
    assert!(msg.contains("overlap"), "{msg}");
}

#[test]
fn overlapping_cidrs_among_one_vpcs_peers_are_refused() {
    let mut doc = seed();
    // C now overlaps A; both are peers of B.
    doc.vpcs.iter_mut().find(|v| v.id == "vpc-c").unwrap().cidrs = vec!["10.0.0.0/16".into()];
    for s in doc.subnets.iter_mut().filter(|s| s.vpc == "vpc-c") {
        s.cidr = "10.0.2.0/24".into();
    }
    doc.ports
        .iter_mut()
        .find(|p| p.interface == "pdp-c")
        .unwrap()
        .ipv4 = Some("10.0.2.30".into());
    for t in doc.route_tables.iter_mut().filter(|t| t.id == "rtb-b") {
        t.routes
            .iter_mut()
            .find(|r| r.destination == "192.168.0.0/16")
            .unwrap()
            .destination = "10.0.0.0/16".into();
    }
    let msg = refused(&doc);
    assert!(
        msg.contains("vpc vpc-b: its peers vpc-a") && msg.contains("vpc-c"),
        "{msg}"
    );
}

#[test]
fn route_to_unknown_peering_is_refused() {
    let mut doc = seed();
    doc.route_tables[0].routes[0].target = "pcx-nope".into();
    let msg = refused(&doc);
    assert!(
        msg.contains(
            "route table rtb-a route 172.16.0.0/16: target pcx-nope is not a known peering"
        ),
        "{msg}"
    );
}

#[test]
fn destination_outside_peer_vpc_is_refused() {
    let mut doc = seed();
    // A tries to reach C through the A-B peering: transitive routing, refused up front.
    doc.route_tables[0]
        .routes
        .push(peer_dataplane_model::desired::document::RouteDoc::new(
            "192.168.0.0/16",
            "pcx-ab",
        ));
    let msg = refused(&doc);
    assert!(
        msg.contains("192.168.0.0/16: destination is outside peer vpc vpc-b (172.16.0.0/16"),
        "{msg}"
    );
}

#[test]
fn bad_cidr_strings_are_refused() {
    let mut doc = seed();
    doc.vpcs[0].cidrs[0] = "10.0.0.0/33".into();
    let msg = refused(&doc);
    assert!(
        msg.contains("vpc vpc-a cidrs[0]: \"10.0.0.0/33\" is not a CIDR"),
        "{msg}"
    );

    let mut doc = seed();
    doc.subnets[0].cidr = "10.0.2.7/24".into();
    let msg = refused(&doc);
    assert!(
        msg.contains("has host bits set (did you mean 10.0.2.0/24?)"),
        "{msg}"
    );

    let mut doc = seed();
    doc.vpcs[0].ipv6_cidr = Some("::ffff:10.0.0.0/112".into());
    assert!(refused(&doc).contains("IPv4-mapped"));
}

#[test]
fn route_naming_a_peering_of_other_vpcs_is_refused() {
    let mut doc = seed();
    doc.route_tables[0].routes[0].target = "pcx-bc".into();
    let msg = refused(&doc);
    assert!(
        msg.contains("peering pcx-bc joins vpc-b and vpc-c, not this table's vpc vpc-a"),
        "{msg}"
    );
}

#[test]
fn dangling_references_and_bad_fields_are_each_named() {
    let mut doc = seed();
    doc.subnets[0].route_table = "rtb-missing".into();
    doc.ports[1].mac = "02:00:zz:00:00:01".into();
    let msg = refused(&doc);
    assert!(
        msg.contains("subnet subnet-a2: route table rtb-missing does not exist"),
        "{msg}"
    );
    assert!(
        msg.contains("port pdp-b: mac \"02:00:zz:00:00:01\""),
        "{msg}"
    );
}

#[test]
fn an_unknown_peering_status_is_refused_naming_it() {
    let text = SEED.replacen("status = \"active\"", "status = \"accepted\"", 1);
    assert_ne!(text, SEED, "the seed has an active peering");
    let err = Document::from_toml(&text).unwrap_err().to_string();
    assert!(
        err.contains("accepted") && err.contains("pending-acceptance"),
        "{err}"
    );
}

#[test]
fn unknown_fields_are_refused() {
    let text = SEED.replace("router_mac =", "routr_mac =");
    let err = Document::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("routr_mac"), "{err}");
}

#[test]
fn port_address_outside_subnet_is_refused() {
    let mut doc = seed();
    doc.ports[0].ipv4 = Some("10.0.3.10".into());
    let msg = refused(&doc);
    assert!(
        msg.contains("port pdp-a: ipv4 10.0.3.10 is not inside subnet subnet-a2 (10.0.2.0/24)"),
        "{msg}"
    );
}

#[test]
fn failed_peering_may_overlap_but_not_become_active() {
    let mut doc = seed();
    doc.vpcs.iter_mut().find(|v| v.id == "vpc-c").unwrap().cidrs = vec!["172.16.0.0/16".into()];
    for s in doc.subnets.iter_mut().filter(|s| s.vpc == "vpc-c") {
        s.cidr = "172.16.9.0/24".into();
    }
    doc.ports
        .iter_mut()
        .find(|p| p.interface == "pdp-c")
        .unwrap()
        .ipv4 = Some("172.16.9.30".into());
    doc.route_tables.retain(|t| t.id != "rtb-c");
    doc.route_tables
        .push(peer_dataplane_model::desired::document::RouteTableDoc {
            id: "rtb-c".into(),
            vpc: "vpc-c".into(),
            routes: vec![],
        });
    for t in doc.route_tables.iter_mut().filter(|t| t.id == "rtb-b") {
        t.routes.retain(|r| r.target != "pcx-bc");
    }
    doc.peerings[1].status = PeeringStatus::Failed;
    validate(&doc).expect("a failed peering may join overlapping VPCs");
    doc.peerings[1].status = PeeringStatus::Active;
    assert!(refused(&doc).contains("overlapping VPCs cannot be peered"));
}

#[test]
fn missing_interface_fails_compile_before_any_write() {
    let mut doc = seed();
    doc.ports[0].interface = "pdp-zz".into();
    let topo = validate(&doc).unwrap();
    let err = compile(&topo, &Ids::default(), &FakeIfindex, &|_| 0, &|_| 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("interface pdp-zz does not exist"), "{err}");
}

mod generations {
    //! docs/datapath.md §3.8 for route tables: between any two single writes of a plan, the table a
    //! port uses is exactly the old table or exactly the new one.

    use super::*;
    use peer_dataplane_common::RouteValue;
    use peer_dataplane_model::desired::document::RouteDoc;
    use peer_dataplane_model::maps::{DataplaneMaps, Entry, Op, RouteKey};
    use peer_dataplane_model::reconcile::plan_install;
    use std::collections::BTreeMap;

    /// The routes under trie key `table` (with the table bits stripped).
    fn table(s: &MapState, table: u32) -> BTreeMap<(u32, [u8; 16]), RouteValue> {
        s.routes
            .iter()
            .filter(|(k, _)| u32::from_be_bytes(k.data.table_be) == table)
            .map(|(k, v): (&RouteKey, &RouteValue)| ((k.prefix_len, k.data.addr), *v))
            .collect()
    }

    fn installed_seed() -> (MapState, Ids) {
        let topo = validate(&seed()).unwrap();
        let (plan_state, ids, ops) =
            plan_install(&topo, &Ids::default(), &MapState::default(), &FakeIfindex).unwrap();
        let mut s = MapState::default();
        apply(&ops, &mut s).unwrap();
        assert_eq!(s, plan_state);
        (s, ids)
    }

    #[test]
    fn a_single_route_change_is_one_write_in_place() {
        let (installed, ids) = installed_seed();
        let mut doc = seed();
        doc.route_tables[0]
            .routes
            .push(RouteDoc::new("172.16.9.0/24", "blackhole"));
        let (_, _, ops) =
            plan_install(&validate(&doc).unwrap(), &ids, &installed, &FakeIfindex).unwrap();
        assert_eq!(ops.len(), 1, "{ops:?}");
        assert!(matches!(ops[0], Op::Put(Entry::Routes(..))));
    }

    /// The agent's whole path reuses what did not change: validated route tables carried
    /// over from the installed topology and their installed entries taken as they are. For
    /// every kind of change it must plan exactly what a fresh validation and plan do, and
    /// for a change that touches no route it must share the large table, not rebuild it.
    #[test]
    fn reusing_unchanged_tables_plans_exactly_what_a_fresh_plan_does() {
        use peer_dataplane_model::desired::document::{
            AclRuleDoc, NetworkAclDoc, PeeringDoc, VpcDoc,
        };
        use peer_dataplane_model::desired::validate::validate_reusing;
        use peer_dataplane_model::desired::validate::PeeringStatus;
        use peer_dataplane_model::reconcile::plan_install_reusing;
        use std::collections::BTreeSet;
        let mut base = seed();
        for i in 0..500 {
            base.route_tables[0].routes.push(RouteDoc::new(
                format!("172.16.{}.{}/32", 1 + i / 250, i % 250),
                "pcx-ab",
            ));
        }
        let topo0 = validate(&base).unwrap();
        let (installed, ids, ops) =
            plan_install(&topo0, &Ids::default(), &MapState::default(), &FakeIfindex).unwrap();
        let mut state = MapState::default();
        apply(&ops, &mut state).unwrap();
        assert_eq!(state, installed);

        type Change = (&'static str, fn(&mut Document), &'static [&'static str]);
        let changes: &[Change] = &[
            (
                "peering deleted",
                |d| d.peerings[0].status = PeeringStatus::Deleted,
                &[],
            ),
            (
                "network acl added to a subnet",
                |d| {
                    d.network_acls.push(NetworkAclDoc {
                        id: "acl-x".into(),
                        vpc: "vpc-a".into(),
                        rules: vec![AclRuleDoc {
                            number: 10,
                            direction: "ingress".into(),
                            protocol: "tcp".into(),
                            port_from: Some(22),
                            port_to: Some(22),
                            cidr: "172.16.0.0/16".into(),
                            action: "deny".into(),
                        }],
                    });
                    d.subnets[0].network_acl = Some("acl-x".into());
                },
                &[],
            ),
            (
                "new vpc and peering",
                |d| {
                    d.vpcs.push(VpcDoc {
                        id: "vpc-d".into(),
                        account: "4".into(),
                        region: "eu-west-1".into(),
                        cidrs: vec!["10.9.0.0/16".into()],
                        ..Default::default()
                    });
                    d.peerings.push(PeeringDoc {
                        id: "pcx-ad".into(),
                        requester_vpc: "vpc-a".into(),
                        accepter_vpc: "vpc-d".into(),
                        status: PeeringStatus::Active,
                        ..Default::default()
                    });
                },
                &[],
            ),
            (
                "a peer's cidrs grow",
                |d| d.vpcs[1].cidrs.push("172.17.0.0/16".into()),
                &[],
            ),
            // rtb-a's routes fall outside the peer: refused, though rtb-a itself is unchanged.
            (
                "a peer's cidrs move",
                |d| d.vpcs[1].cidrs = vec!["172.20.0.0/16".into()],
                &[],
            ),
            (
                "a route changed",
                |d| {
                    d.route_tables[0]
                        .routes
                        .push(RouteDoc::new("172.16.99.0/24", "blackhole"))
                },
                &["rtb-a"],
            ),
            (
                "a route to a peering that then goes",
                |d| {
                    d.route_tables[1].routes.retain(|r| r.target != "pcx-bc");
                    d.route_tables[2].routes.clear();
                    d.peerings.retain(|p| p.id != "pcx-bc");
                },
                &["rtb-b", "rtb-c"],
            ),
        ];
        for (what, change, changed) in changes {
            let mut doc = base.clone();
            change(&mut doc);
            let changed: BTreeSet<String> = changed.iter().map(|s| s.to_string()).collect();
            let fresh = validate(&doc).map_err(|e| e.to_string());
            let reused = validate_reusing(&doc, Some(&topo0), &changed).map_err(|e| e.to_string());
            assert_eq!(fresh, reused, "{what}: the topology");
            let (Ok(fresh), Ok(reused)) = (fresh, reused) else {
                continue;
            };
            let a = plan_install(&fresh, &ids, &installed, &FakeIfindex).unwrap();
            let b = plan_install_reusing(&reused, &ids, &installed, Some(&topo0), &FakeIfindex)
                .unwrap();
            assert_eq!(a, b, "{what}: the plan");
            if changed.is_empty() && !what.starts_with("a peer's cidrs") {
                let shared = std::sync::Arc::ptr_eq(
                    &reused.route_tables["rtb-a"].routes,
                    &topo0.route_tables["rtb-a"].routes,
                );
                assert!(shared, "{what}: rtb-a is carried over, not read again");
                let key = b.0.ports[&11].route_table;
                assert!(
                    std::sync::Arc::ptr_eq(
                        b.0.routes.table(key).unwrap(),
                        installed.routes.table(key).unwrap()
                    ),
                    "{what}: rtb-a's installed entries are taken as they are"
                );
            }
        }
    }

    /// The single-route path (`route_write`, what an agent does with a one-route delta)
    /// must leave exactly what installing the whole changed document would: for an added,
    /// a retargeted and a removed route, with the table in either generation.
    #[test]
    fn one_route_written_in_place_equals_the_whole_install() {
        use peer_dataplane_model::desired::validate::route_change;
        use peer_dataplane_model::reconcile::generations::route_write;
        let (gen0, ids0) = installed_seed();
        // The same tables after a rewrite: rtb-a in its other generation.
        let mut flipped = seed();
        flipped.route_tables[0].routes.reverse();
        flipped.route_tables[0]
            .routes
            .push(RouteDoc::new("172.16.3.0/24", "blackhole"));
        flipped.route_tables[0]
            .routes
            .push(RouteDoc::new("172.16.4.0/24", "blackhole"));
        let (_, ids1, ops) =
            plan_install(&validate(&flipped).unwrap(), &ids0, &gen0, &FakeIfindex).unwrap();
        let mut gen1 = gen0.clone();
        apply(&ops, &mut gen1).unwrap();
        for (base_doc, installed, ids) in [(seed(), &gen0, &ids0), (flipped, &gen1, &ids1)] {
            let changes: [(&str, Option<&str>); 4] = [
                ("172.16.9.0/24", Some("blackhole")),
                ("172.16.0.0/16", Some("blackhole")),
                ("172.16.0.0/16", None),
                ("fd00:b:0:7::/64", Some("pcx-ab")),
            ];
            for (dest, target) in changes {
                let topo = validate(&base_doc).unwrap();
                let (net, t) = route_change(&topo, "rtb-a", dest, target).unwrap();
                let op = route_write(ids, installed, &topo, "rtb-a", &net, t.as_ref()).unwrap();
                let mut in_place = installed.clone();
                in_place.write(&op).unwrap();

                let mut doc = base_doc.clone();
                let routes = &mut doc.route_tables[0].routes;
                routes.retain(|r| r.destination != dest);
                if let Some(t) = target {
                    routes.push(RouteDoc::new(dest, t));
                }
                let (whole, _, ops) =
                    plan_install(&validate(&doc).unwrap(), ids, installed, &FakeIfindex).unwrap();
                assert_eq!(ops.len(), 1, "{dest} -> {target:?}: {ops:?}");
                assert_eq!(in_place, whole, "{dest} -> {target:?}");
            }
        }
        // The VPC's own CIDR is not judged alone.
        let topo = validate(&seed()).unwrap();
        assert!(route_change(&topo, "rtb-a", "10.0.0.0/16", None).is_err());
        assert!(route_change(&topo, "rtb-a", "172.16.0.0/16", Some("pcx-nope")).is_err());
    }

    #[test]
    fn a_table_rewrite_switches_generation_and_never_shows_a_mix() {
        let (installed, ids) = installed_seed();
        let port_a = 11;
        let old_key = installed.ports[&port_a].route_table;
        let old = table(&installed, old_key);

        // rtb-a: the /16 to B becomes two /17s, one of them a blackhole.
        let mut doc = seed();
        let rtb = &mut doc.route_tables[0];
        rtb.routes.retain(|r| r.destination != "172.16.0.0/16");
        rtb.routes.push(RouteDoc::new("172.16.0.0/17", "pcx-ab"));
        rtb.routes
            .push(RouteDoc::new("172.16.128.0/17", "blackhole"));
        let (desired, _, ops) =
            plan_install(&validate(&doc).unwrap(), &ids, &installed, &FakeIfindex).unwrap();
        let new_key = desired.ports[&port_a].route_table;
        assert_eq!(
            new_key,
            old_key ^ 1,
            "the table moves to its other generation"
        );
        let new = table(&desired, new_key);
        assert_ne!(old, new);

        let mut s = installed.clone();
        for (i, op) in ops.iter().enumerate() {
            s.write(op).unwrap();
            let seen = table(&s, s.ports[&port_a].route_table);
            assert!(
                seen == old || seen == new,
                "after write {i} ({op:?}) port A sees a mixed table"
            );
            // The receiver side (endpoint of A, for return routes) likewise.
            let ep = s.endpoints.values().find(|e| e.ifindex == port_a).unwrap();
            let seen = table(&s, ep.route_table);
            assert!(
                seen == old || seen == new,
                "after write {i} ({op:?}) the endpoint sees a mixed table"
            );
        }
        assert_eq!(s, desired);
        assert!(
            table(&s, old_key).is_empty(),
            "the old generation is cleared"
        );
    }

    fn with_acl(doc: &mut peer_dataplane_model::desired::document::Document, deny_port: u16) {
        use peer_dataplane_model::desired::document::{AclRuleDoc, NetworkAclDoc};
        let rule = |number, protocol: &str, ports: Option<u16>, action: &str| AclRuleDoc {
            number,
            direction: "egress".into(),
            protocol: protocol.into(),
            port_from: ports,
            port_to: ports,
            cidr: "0.0.0.0/0".into(),
            action: action.into(),
        };
        doc.network_acls = vec![NetworkAclDoc {
            id: "acl-a".into(),
            vpc: "vpc-a".into(),
            rules: vec![
                rule(100, "udp", Some(deny_port), "deny"),
                rule(200, "all", None, "allow"),
            ],
        }];
        doc.subnets[0].network_acl = Some("acl-a".into());
    }

    /// The set a port's egress ACL field names, as (meta rules, address entries, port
    /// trie entries, exact single-port entries).
    type SetView = (
        u32,
        usize,
        Vec<((u32, [u8; 2]), peer_dataplane_common::acl::AclBits)>,
        Vec<([u8; 16], peer_dataplane_common::acl::AclBits)>,
    );

    fn egress_view(s: &MapState, port: u32) -> Option<SetView> {
        let set = s.ports[&port].acl;
        let meta = s.acl_meta.get(&set)?;
        let ports: Vec<_> = s
            .acl_port
            .iter()
            .filter(|(k, _)| u32::from_be_bytes(k.data.set_be) == set)
            .map(|(k, v)| ((k.prefix_len, k.data.port_be), *v))
            .collect();
        let addrs = s
            .acl_addr
            .keys()
            .filter(|k| acl_addr_table_set(u32::from_be_bytes(k.data.table_be)) == set)
            .count();
        let exact = s
            .acl_exact
            .iter()
            .filter(|(k, _)| k.kind == peer_dataplane_common::acl::EXACT_PORT && k.table == set)
            .map(|(k, v)| (k.value, *v))
            .collect();
        Some((meta.rules, addrs, ports, exact))
    }

    #[test]
    fn an_acl_change_switches_generation_and_never_shows_a_partial_set() {
        let mut doc = seed();
        with_acl(&mut doc, 7000);
        let topo = validate(&doc).unwrap();
        let (installed, ids, ops) =
            plan_install(&topo, &Ids::default(), &MapState::default(), &FakeIfindex).unwrap();
        let mut check = MapState::default();
        apply(&ops, &mut check).unwrap();
        assert_eq!(check, installed);
        let port_a = 11;
        let old = egress_view(&installed, port_a).expect("port A has an egress set");

        with_acl(&mut doc, 9000);
        let (desired, _, ops) =
            plan_install(&validate(&doc).unwrap(), &ids, &installed, &FakeIfindex).unwrap();
        let new = egress_view(&desired, port_a).unwrap();
        assert_ne!(old, new);
        assert_ne!(
            installed.ports[&port_a].acl, desired.ports[&port_a].acl,
            "the ACL moves to its other generation"
        );
        let mut s = installed.clone();
        for (i, op) in ops.iter().enumerate() {
            s.write(op).unwrap();
            let seen = egress_view(&s, port_a);
            assert!(
                seen == Some(old.clone()) || seen == Some(new.clone()),
                "after write {i} ({op:?}) port A's set is partial"
            );
        }
        assert_eq!(s, desired);
    }

    /// One compile, then the flip pass, gives what compiling straight into the flipped
    /// generations gives; only the moved network ACL's hit counters differ, and those no
    /// longer share a slot with the installed set, which keeps counting until removed.
    #[test]
    fn flipping_after_one_compile_equals_compiling_into_the_other_generation() {
        use peer_dataplane_common::acl::{acl_set_generation, NO_HITS};
        use peer_dataplane_common::{route_table_generation, route_table_id, NAME_ACL_RULE};
        let mut doc = seed();
        with_acl(&mut doc, 7000);
        let topo = validate(&doc).unwrap();
        let (installed, ids, _) =
            plan_install(&topo, &Ids::default(), &MapState::default(), &FakeIfindex).unwrap();

        // Both a table rewrite (rtb-a) and an ACL change of the same size.
        with_acl(&mut doc, 9000);
        let rtb = &mut doc.route_tables[0];
        rtb.routes.retain(|r| r.destination != "172.16.0.0/16");
        rtb.routes.push(RouteDoc::new("172.16.0.0/17", "pcx-ab"));
        rtb.routes
            .push(RouteDoc::new("172.16.128.0/17", "blackhole"));
        let topo = validate(&doc).unwrap();
        let (desired, new_ids, ops) = plan_install(&topo, &ids, &installed, &FakeIfindex).unwrap();

        let port_a = 11;
        let (old_table, old_set) = (
            installed.ports[&port_a].route_table,
            installed.ports[&port_a].acl,
        );
        let flipped_table = route_table_id(old_table);
        let flipped_acl = acl_set_id(old_set);
        let table_gen = |t: u32| match t == flipped_table {
            true => 1 - route_table_generation(old_table),
            false => 0,
        };
        let acl_gen = |a: u32| match a == flipped_acl {
            true => 1 - acl_set_generation(old_set),
            false => 0,
        };
        let (direct, direct_ids) =
            compile::compile_over(&topo, &ids, &FakeIfindex, &table_gen, &acl_gen, &installed)
                .unwrap();
        assert_eq!(new_ids, direct_ids);

        // Hit counters aside, the two are the same state.
        let without_hits = |s: &MapState| {
            let mut s = s.clone();
            s.acl_meta.values_mut().for_each(|m| m.hit_base = 0);
            s.names.retain(|k, _| k.kind != NAME_ACL_RULE);
            s
        };
        assert_eq!(without_hits(&desired), without_hits(&direct));

        let counting = |s: &MapState| -> Vec<(u32, u32)> {
            s.acl_meta
                .values()
                .filter(|m| m.hit_base != NO_HITS && m.rules > 0)
                .map(|m| (m.hit_base, m.rules))
                .collect()
        };
        for (base, rules) in counting(&desired) {
            for (b, r) in counting(&installed) {
                assert!(base + rules <= b || b + r <= base, "ranges overlap");
            }
            assert!(ops.contains(&Op::ResetAclHits(base, rules)));
            for i in 0..rules {
                let key = peer_dataplane_common::NameKey {
                    kind: NAME_ACL_RULE,
                    id: base + i,
                };
                assert!(
                    desired.names.contains_key(&key),
                    "rule name at slot {}",
                    base + i
                );
            }
        }
    }
}

mod security_groups_and_caps {
    use super::*;
    use peer_dataplane_common::acl::{NO_ACL, NO_HITS};
    use peer_dataplane_common::{
        DIR_ACCEPTER_TO_REQUESTER, DIR_REQUESTER_TO_ACCEPTER, NAME_SG_SET,
    };
    use peer_dataplane_model::desired::document::{SecurityGroupDoc, SgRuleDoc};
    use peer_dataplane_model::reconcile::plan_install;

    fn rule(direction: &str, protocol: &str, cidr: Option<&str>, peer: Option<&str>) -> SgRuleDoc {
        SgRuleDoc {
            direction: direction.into(),
            protocol: protocol.into(),
            port_from: None,
            port_to: None,
            cidr: cidr.map(Into::into),
            peer_security_group: peer.map(Into::into),
        }
    }

    fn with_groups(doc: &mut Document) {
        doc.security_groups = vec![
            SecurityGroupDoc {
                id: "sg-a".into(),
                vpc: "vpc-a".into(),
                rules: vec![rule("egress", "all", Some("0.0.0.0/0"), None)],
            },
            SecurityGroupDoc {
                id: "sg-b".into(),
                vpc: "vpc-b".into(),
                rules: vec![rule("ingress", "tcp", None, Some("sg-a"))],
            },
        ];
        doc.ports[0].security_groups = Some(vec!["sg-a".into()]);
        doc.ports[1].security_groups = Some(vec!["sg-b".into()]);
    }

    #[test]
    fn ports_get_one_set_per_group_combination() {
        let mut doc = seed();
        with_groups(&mut doc);
        doc.ports[2].security_groups = None;
        let topo = validate(&doc).unwrap();
        let (s, ids) = compile(&topo, &Ids::default(), &FakeIfindex, &|_| 0, &|_| 0).unwrap();
        let (a, b, c) = (&s.ports[&11], &s.ports[&12], &s.ports[&13]);
        assert_ne!(a.sg, NO_ACL);
        assert_ne!(b.sg, NO_ACL);
        assert_ne!(a.sg, b.sg);
        assert_eq!(c.sg, NO_ACL, "a port without groups is not filtered");
        assert!(ids.get(NAME_SG_SET, "sgs:sg-a").is_some());
        // Egress sets on ports, ingress sets on endpoints; no hit counters.
        let ingress_b = s.endpoints.values().find(|e| e.ifindex == 12).unwrap().sg;
        assert_eq!(ingress_b, b.sg & !1);
        assert_eq!(s.acl_meta[&a.sg].hit_base, NO_HITS);
        // sg-b's rule names sg-a: it became one rule per address of port A (v4 and v6).
        assert_eq!(s.acl_meta[&ingress_b].rules, 2);
    }

    #[test]
    fn security_group_mistakes_are_named() {
        let mut doc = seed();
        with_groups(&mut doc);
        doc.security_groups[1]
            .rules
            .push(rule("ingress", "udp", Some("10.0.0.0/8"), Some("sg-a")));
        doc.security_groups[1]
            .rules
            .push(rule("sideways", "tcp", Some("10.0.0.0/8"), None));
        doc.security_groups[1]
            .rules
            .push(rule("ingress", "tcp", None, Some("sg-zz")));
        doc.ports[1].security_groups = Some(vec!["sg-a".into(), "sg-nope".into()]);
        let e = refused(&doc);
        for want in [
            "security group sg-b rules[1]: give exactly one of cidr and peer_security_group",
            "security group sg-b rules[2]: direction \"sideways\" must be ingress or egress",
            "security group sg-b rules[3]: peer_security_group sg-zz does not exist",
            "port pdp-b: security group sg-a belongs to vpc vpc-a, not the port's vpc vpc-b",
            "port pdp-b: security group sg-nope does not exist",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn peer_groups_must_be_in_the_same_region_and_a_peered_vpc() {
        let mut doc = seed();
        with_groups(&mut doc);
        doc.security_groups.push(SecurityGroupDoc {
            id: "sg-c".into(),
            vpc: "vpc-c".into(),
            rules: vec![rule("ingress", "all", None, Some("sg-a"))],
        });
        let e = refused(&doc);
        assert!(
            e.contains("peer_security_group sg-a is in vpc vpc-a, which is not peered with vpc-c"),
            "{e}"
        );
        let mut doc = seed();
        with_groups(&mut doc);
        doc.vpcs[1].region = "us-east-1".into();
        let e = refused(&doc);
        assert!(
            e.contains("peer_security_group sg-a is in region eu-west-1, not us-east-1"),
            "{e}"
        );
    }

    #[test]
    fn caps_per_direction_and_the_cross_region_default() {
        let mut doc = seed();
        doc.peerings[0].bandwidth_mbps = Some(100);
        doc.peerings[0].bandwidth_mbps_accepter_to_requester = Some(250);
        doc.peerings[0].burst_bytes = Some(200_000);
        let topo = validate(&doc).unwrap();
        let (s, ids) = compile(&topo, &Ids::default(), &FakeIfindex, &|_| 0, &|_| 0).unwrap();
        let ab = &s.peerings[&ids.get(NAME_PEERING, "pcx-ab").unwrap()];
        let ra = ab.cap[DIR_REQUESTER_TO_ACCEPTER as usize];
        let ar = ab.cap[DIR_ACCEPTER_TO_REQUESTER as usize];
        assert_eq!(ra.bits_per_second(), 100_000_000);
        assert_eq!(ra.burst_bytes(), 200_000);
        assert_eq!(ar.bits_per_second(), 250_000_000);
        let bc = &s.peerings[&ids.get(NAME_PEERING, "pcx-bc").unwrap()];
        assert!(!bc.cap[0].is_capped() && !bc.cap[1].is_capped());

        // vpc-c moves to another region: pcx-bc becomes cross-region, capped at 1 Gbit/s
        // both ways with the default burst (10 ms).
        let mut doc = seed();
        doc.vpcs[2].region = "us-east-1".into();
        let topo = validate(&doc).unwrap();
        let (s, ids) = compile(&topo, &Ids::default(), &FakeIfindex, &|_| 0, &|_| 0).unwrap();
        let bc = &s.peerings[&ids.get(NAME_PEERING, "pcx-bc").unwrap()];
        for c in bc.cap {
            assert_eq!(c.bits_per_second(), 1_000_000_000);
            assert_eq!(c.burst_bytes(), 1_250_000);
        }

        let mut doc = seed();
        doc.peerings[0].bandwidth_mbps = Some(0);
        doc.peerings[0].burst_bytes = Some(100);
        let e = refused(&doc);
        assert!(
            e.contains("peering pcx-ab: bandwidth_mbps 0 is outside 1..=400000"),
            "{e}"
        );
        assert!(
            e.contains("peering pcx-ab: burst_bytes 100 is below 1518"),
            "{e}"
        );
    }

    #[test]
    fn a_group_change_switches_the_set_generation() {
        let mut doc = seed();
        with_groups(&mut doc);
        let topo = validate(&doc).unwrap();
        let (installed, ids, _) =
            plan_install(&topo, &Ids::default(), &MapState::default(), &FakeIfindex).unwrap();
        doc.security_groups[0].rules[0].cidr = Some("172.16.0.0/16".into());
        let (desired, _, _) =
            plan_install(&validate(&doc).unwrap(), &ids, &installed, &FakeIfindex).unwrap();
        assert_ne!(installed.ports[&11].sg, desired.ports[&11].sg);
        assert_eq!(
            acl_set_id(installed.ports[&11].sg),
            acl_set_id(desired.ports[&11].sg)
        );
    }
}

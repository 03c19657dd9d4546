//! Fault injection: an install is all or nothing. A realistic change (routes of several
//! tables, so a table generation flip; a network ACL changed, so an ACL flip; a new
//! peering with a cap; a port and its endpoints removed; security groups) is applied to an
//! in-memory backend whose Nth write fails, for every N of its plan: each time the
//! previous state must be fully in force afterwards, and with no failure the new one.

use peer_dataplane_model::desired::document::{
    AclRuleDoc, Document, NetworkAclDoc, PeeringDoc, RouteDoc, SecurityGroupDoc, SgRuleDoc,
};
use peer_dataplane_model::desired::ids::Ids;
use peer_dataplane_model::desired::validate::validate;
use peer_dataplane_model::desired::validate::PeeringStatus;
use peer_dataplane_model::maps::MapState;
use peer_dataplane_model::reconcile::plan_install;
use peer_dataplane_model::reconcile::{apply, apply_all_or_nothing, ApplyError, FailingMaps};

mod common;
use common::FakeIfindex;

fn acl(id: &str, vpc: &str, rules: &[(u32, &str, &str)]) -> NetworkAclDoc {
    NetworkAclDoc {
        id: id.into(),
        vpc: vpc.into(),
        rules: rules
            .iter()
            .map(|(n, dir, action)| AclRuleDoc {
                number: *n,
                direction: dir.to_string(),
                protocol: "all".into(),
                port_from: None,
                port_to: None,
                cidr: "0.0.0.0/0".into(),
                action: action.to_string(),
            })
            .collect(),
    }
}

/// The seed with a network ACL on A's subnet and a security group on B.
fn before() -> Document {
    let mut d = common::seed();
    d.network_acls.push(acl(
        "acl-a",
        "vpc-a",
        &[(100, "egress", "allow"), (100, "ingress", "allow")],
    ));
    d.subnets
        .iter_mut()
        .find(|s| s.id == "subnet-a2")
        .unwrap()
        .network_acl = Some("acl-a".into());
    d.security_groups.push(SecurityGroupDoc {
        id: "sg-b".into(),
        vpc: "vpc-b".into(),
        rules: vec![SgRuleDoc {
            direction: "ingress".into(),
            protocol: "udp".into(),
            port_from: Some(7000),
            port_to: Some(7000),
            cidr: Some("10.0.0.0/16".into()),
            peer_security_group: None,
        }],
    });
    d.ports
        .iter_mut()
        .find(|p| p.interface == "pdp-b")
        .unwrap()
        .security_groups = Some(vec!["sg-b".into()]);
    d
}

/// What an operator's next change looks like: several routes of rtb-b, the ACL
/// tightened, a new capped peering A-C with routes, C's port gone, B's group changed.
fn after() -> Document {
    let mut d = before();
    let rtb_b = d.route_tables.iter_mut().find(|t| t.id == "rtb-b").unwrap();
    rtb_b.routes.retain(|r| r.destination != "fd00:c::/48");
    rtb_b.routes.push(RouteDoc::new("10.0.2.0/24", "blackhole"));
    rtb_b.routes.push(RouteDoc::new("192.168.2.0/24", "pcx-bc"));
    d.network_acls[0] = acl(
        "acl-a",
        "vpc-a",
        &[
            (50, "egress", "deny"),
            (100, "egress", "allow"),
            (100, "ingress", "allow"),
        ],
    );
    d.peerings.push(PeeringDoc {
        id: "pcx-ac".into(),
        requester_vpc: "vpc-a".into(),
        accepter_vpc: "vpc-c".into(),
        status: PeeringStatus::Active,
        bandwidth_mbps: Some(200),
        ..PeeringDoc::default()
    });
    for (t, dest) in [("rtb-a", "192.168.0.0/16"), ("rtb-c", "10.0.0.0/16")] {
        d.route_tables
            .iter_mut()
            .find(|x| x.id == t)
            .unwrap()
            .routes
            .push(RouteDoc::new(dest, "pcx-ac"));
    }
    d.ports.retain(|p| p.interface != "pdp-c");
    d.security_groups[0].rules[0].port_to = Some(7100);
    d
}

#[test]
fn an_install_failing_at_any_write_leaves_the_previous_state_in_force() {
    // The installed "before" state.
    let t0 = validate(&before()).unwrap();
    let (s0, ids0, ops0) =
        plan_install(&t0, &Ids::default(), &MapState::default(), &FakeIfindex).unwrap();
    let mut installed = MapState::default();
    apply(&ops0, &mut installed).unwrap();
    assert_eq!(installed, s0);

    let t1 = validate(&after()).unwrap();
    let (s1, _, ops) = plan_install(&t1, &ids0, &s0, &FakeIfindex).unwrap();
    assert!(ops.len() > 40, "a realistic plan: {} writes", ops.len());
    assert_ne!(s0, s1);

    // No failure: the new state.
    let mut fine = FailingMaps {
        state: s0.clone(),
        ..Default::default()
    };
    apply_all_or_nothing(&ops, &mut fine, &s0).unwrap();
    assert_eq!(fine.state, s1);

    // The Nth write fails, for every N: the previous state, whole.
    for n in 1..=ops.len() {
        let mut maps = FailingMaps {
            state: s0.clone(),
            fail_at: n,
            writes: 0,
        };
        match apply_all_or_nothing(&ops, &mut maps, &s0) {
            Err(ApplyError::RolledBack { failed, undone, .. }) => {
                assert_eq!((failed, undone), (n, n - 1));
            }
            other => panic!("write {n} of {}: {other:?}", ops.len()),
        }
        assert!(
            maps.state == s0,
            "write {n} of {} ({:?}) failed and the previous state is not whole again",
            ops.len(),
            ops[n - 1]
        );
    }
}

#[test]
fn the_error_says_which_write_failed_and_that_it_was_undone() {
    let t0 = validate(&before()).unwrap();
    let (s0, ids0, _) =
        plan_install(&t0, &Ids::default(), &MapState::default(), &FakeIfindex).unwrap();
    let (_, _, ops) = plan_install(&validate(&after()).unwrap(), &ids0, &s0, &FakeIfindex).unwrap();
    let mut maps = FailingMaps {
        state: s0.clone(),
        fail_at: 7,
        writes: 0,
    };
    let e = apply_all_or_nothing(&ops, &mut maps, &s0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("map write 7 of {} failed", ops.len()))
            && e.contains("injected failure of write 7")
            && e.contains("the 6 writes before it were undone, the previous state is in force"),
        "{e}"
    );
}

/// A backend whose writes numbered in `fail` fail (counting from 1, the undo's writes
/// after the plan's).
struct FailingWrites {
    state: MapState,
    fail: Vec<usize>,
    writes: usize,
}

impl peer_dataplane_model::maps::DataplaneMaps for FailingWrites {
    fn write(&mut self, op: &peer_dataplane_model::maps::Op) -> anyhow::Result<()> {
        self.writes += 1;
        if self.fail.contains(&self.writes) {
            anyhow::bail!("injected failure of write {}", self.writes);
        }
        self.state.write(op)
    }
}

/// A write fails and so does one of the writes undoing it (the first, one in the middle,
/// the last), for every write of the plan: the error says both, and the next attempt,
/// planned from what the maps really hold (as the agent reads them back), reaches the
/// new state exactly, or the previous one.
#[test]
fn a_failed_undo_is_reported_and_the_next_attempt_converges() {
    use peer_dataplane_model::maps::DataplaneMaps;
    use peer_dataplane_model::reconcile::plan;
    let t0 = validate(&before()).unwrap();
    let (s0, ids0, _) =
        plan_install(&t0, &Ids::default(), &MapState::default(), &FakeIfindex).unwrap();
    let t1 = validate(&after()).unwrap();
    let (s1, _, ops) = plan_install(&t1, &ids0, &s0, &FakeIfindex).unwrap();
    let (mut cases, mut elsewhere) = (0, 0);
    for n in 2..=ops.len() {
        // Where the maps are when write n fails, and what undoing costs from there.
        let mut now = s0.clone();
        for op in &ops[..n - 1] {
            now.write(op).unwrap();
        }
        let undo = plan(&s0, &now, &[]).len();
        if undo == 0 {
            continue;
        }
        let mut at = vec![1, undo.div_ceil(2), undo];
        at.dedup();
        for k in at {
            let mut maps = FailingWrites {
                state: s0.clone(),
                fail: vec![n, n + k],
                writes: 0,
            };
            let e = match apply_all_or_nothing(&ops, &mut maps, &s0) {
                Err(e @ ApplyError::Mixed { .. }) => e,
                other => panic!("write {n}, undo write {k} of {undo}: {other:?}"),
            };
            let text = e.to_string();
            assert!(
                text.contains(&format!("map write {n} of {} failed", ops.len()))
                    && text.contains(&format!("injected failure of write {}", n + k))
                    && text.contains("undoing it failed too"),
                "{text}"
            );
            assert_ne!(
                maps.state, s0,
                "a failed undo left the previous state whole?"
            );
            // The next attempt: from what is there (names read back give the ids).
            let mixed = maps.state.clone();
            let ids = Ids::from_names(&mixed.names);
            for (topo, want, what) in [
                (&t1, &s1, "the new state"),
                (&t0, &s0, "the previous state"),
            ] {
                let (planned, ids_then, again) =
                    plan_install(topo, &ids, &mixed, &FakeIfindex).unwrap();
                let mut m = mixed.clone();
                apply(&again, &mut m).unwrap();
                assert!(
                    m == planned,
                    "write {n} and undo write {k} failed: the next attempt's writes do not give what it planned for {what}"
                );
                // A fixpoint: the state planned is that topology's (planning again writes
                // nothing). From a mixed state it may differ from a clean install's in
                // which generation a table or ACL lives and which slots it got.
                let (_, _, more) = plan_install(topo, &ids_then, &planned, &FakeIfindex).unwrap();
                assert!(more.is_empty(), "{what}: not a fixpoint: {more:?}");
                if planned != *want {
                    elsewhere += 1;
                }
            }
            cases += 1;
        }
    }
    assert!(cases > 100, "only {cases} failed undos injected");
    println!("{cases} failed undos; {elsewhere} next attempts put a table, an ACL or a slot elsewhere than a clean install");
}

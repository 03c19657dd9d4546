//! The desired state of one host: the state document its agent installs. Every VPC,
//! subnet, route table and peering (a host's ports may talk to any peer), and only the
//! ports that live on the host. The control plane's objects embed the document's types,
//! so this is a selection, not a translation.

use crate::model::World;
use peer_dataplane_model::desired::document::{Document, RouteTableDoc};

pub fn document(w: &World, host: &str) -> Document {
    Document {
        router_mac: None,
        network_acls: w.network_acls.values().cloned().collect(),
        security_groups: w.security_groups.values().cloned().collect(),
        vpcs: w.vpcs.values().map(|v| v.spec.clone()).collect(),
        subnets: w.subnets.values().cloned().collect(),
        route_tables: w
            .route_tables
            .values()
            .map(|t| RouteTableDoc {
                id: t.id.clone(),
                vpc: t.vpc.clone(),
                routes: t.routes.values().cloned().collect(),
            })
            .collect(),
        // Cross-region peerings without a cap get the default when validated.
        peerings: w.peerings.values().map(|p| p.spec.clone()).collect(),
        ports: w
            .ports
            .values()
            .filter(|p| p.host == host)
            .map(|p| p.spec.clone())
            .collect(),
    }
}

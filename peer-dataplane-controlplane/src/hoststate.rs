//! The desired state of one host: the state document its agent installs. Every VPC,
//! subnet, route table and peering (a host's ports may talk to any peer), and only the
//! ports that live on the host.

use crate::model::World;
use peer_dataplane_model::desired::document::{
    Document, NetworkAclDoc, PeeringDoc, PortDoc, RouteDoc, RouteTableDoc, SecurityGroupDoc,
    SubnetDoc, VpcDoc,
};

pub fn document(w: &World, host: &str) -> Document {
    Document {
        router_mac: None,
        network_acls: w
            .network_acls
            .values()
            .map(|a| NetworkAclDoc {
                id: a.id.clone(),
                vpc: a.vpc.clone(),
                rules: a.rules.clone(),
            })
            .collect(),
        security_groups: w
            .security_groups
            .values()
            .map(|g| SecurityGroupDoc {
                id: g.id.clone(),
                vpc: g.vpc.clone(),
                rules: g.rules.clone(),
            })
            .collect(),
        vpcs: w
            .vpcs
            .values()
            .map(|v| VpcDoc {
                id: v.id.clone(),
                account: v.account.clone(),
                region: v.region.clone(),
                cidrs: v.cidrs.clone(),
                ipv6_cidr: v.ipv6_cidr.clone(),
            })
            .collect(),
        subnets: w
            .subnets
            .values()
            .map(|s| SubnetDoc {
                id: s.id.clone(),
                vpc: s.vpc.clone(),
                cidr: s.cidr.clone(),
                ipv6_cidr: s.ipv6_cidr.clone(),
                route_table: s.route_table.clone(),
                network_acl: s.network_acl.clone(),
            })
            .collect(),
        route_tables: w
            .route_tables
            .values()
            .map(|t| RouteTableDoc {
                id: t.id.clone(),
                vpc: t.vpc.clone(),
                routes: t
                    .routes
                    .values()
                    .map(|r| RouteDoc {
                        destination: r.destination_cidr.clone(),
                        target: r.target.clone(),
                    })
                    .collect(),
            })
            .collect(),
        peerings: w
            .peerings
            .values()
            .map(|p| PeeringDoc {
                id: p.id.clone(),
                requester_vpc: p.requester_vpc.clone(),
                accepter_vpc: p.accepter_vpc.clone(),
                status: p.status.as_str().to_string(),
                // Cross-region peerings without a cap get the default when validated.
                bandwidth_mbps: p.bandwidth_mbps,
                ..PeeringDoc::default()
            })
            .collect(),
        ports: w
            .ports
            .values()
            .filter(|p| p.host == host)
            .map(|p| PortDoc {
                interface: p.interface.clone(),
                subnet: p.subnet.clone(),
                mac: p.mac.clone(),
                ipv4: p.ipv4.clone(),
                ipv6: p.ipv6.clone(),
                gateway_mac: None,
                // A port created without groups is not filtered by them.
                security_groups: (!p.security_groups.is_empty()).then(|| p.security_groups.clone()),
            })
            .collect(),
    }
}

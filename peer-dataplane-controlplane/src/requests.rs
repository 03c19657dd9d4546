//! The API's request bodies.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVpc {
    #[serde(default)]
    pub id: Option<String>,
    pub region: String,
    pub cidrs: Vec<String>,
    #[serde(default)]
    pub ipv6_cidr: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSubnet {
    #[serde(default)]
    pub id: Option<String>,
    pub vpc_id: String,
    pub cidr: String,
    #[serde(default)]
    pub ipv6_cidr: Option<String>,
    #[serde(default)]
    pub route_table_id: Option<String>,
    #[serde(default)]
    pub network_acl_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRouteTable {
    #[serde(default)]
    pub id: Option<String>,
    pub vpc_id: String,
}

/// A route to add: exactly a stored route.
pub type CreateRoute = crate::world::Route;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePeering {
    #[serde(default)]
    pub id: Option<String>,
    pub requester_vpc_id: String,
    pub accepter_vpc_id: String,
    #[serde(default)]
    pub accepter_account_id: Option<String>,
    #[serde(default)]
    pub requester_region: Option<String>,
    #[serde(default)]
    pub accepter_region: Option<String>,
    #[serde(default)]
    pub auto_accept: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchPeering {
    /// Cap per direction in Mbit/s; `null` removes an explicit cap.
    pub bandwidth_mbps: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePort {
    #[serde(default)]
    pub id: Option<String>,
    pub host: String,
    pub interface: String,
    pub subnet_id: String,
    pub mac: String,
    #[serde(default)]
    pub ipv4: Option<String>,
    #[serde(default)]
    pub ipv6: Option<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
}

/// A network ACL to create: exactly the stored object (an empty id: assigned).
pub type CreateNetworkAcl = crate::world::NetworkAcl;

/// A security group to create: exactly the stored object (an empty id: assigned).
pub type CreateSecurityGroup = crate::world::SecurityGroup;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceRoutes {
    pub routes: Vec<CreateRoute>,
}

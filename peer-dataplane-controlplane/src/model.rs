//! Control-plane objects as the API and the store see them, and the API's error type.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Seconds since the Unix epoch.
pub type Timestamp = u64;

/// How long a peering request waits for its accepter (docs/datapath.md §1, §2).
pub const PEERING_EXPIRY_SECS: Timestamp = 7 * 24 * 3600;
/// Cap a cross-region peering gets when none is set (docs/datapath.md §3.7, §4.15), in Mbit/s.
pub const DEFAULT_CROSS_REGION_MBPS: u64 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vpc {
    pub id: String,
    pub account: String,
    pub region: String,
    pub cidrs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_cidr: Option<String>,
    /// Route table that subnets use unless they name another; created with the VPC.
    pub main_route_table: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub id: String,
    pub vpc: String,
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_cidr: Option<String>,
    pub route_table: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_acl: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub destination_cidr: String,
    /// `blackhole` or a peering id.
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    pub id: String,
    pub vpc: String,
    /// Explicit routes (the VPC's `local` routes are implicit), keyed by destination.
    pub routes: BTreeMap<String, Route>,
}

pub use peer_dataplane_model::desired::validate::PeeringStatus;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peering {
    pub id: String,
    pub requester_vpc: String,
    pub requester_account: String,
    pub requester_region: String,
    pub accepter_vpc: String,
    pub accepter_account: String,
    pub accepter_region: String,
    pub status: PeeringStatus,
    /// Why the peering is in its status (e.g. which CIDRs overlap), when that needs saying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    pub created_at: Timestamp,
    /// A pending request expires at this time (docs/datapath.md §2: 7 days).
    pub expires_at: Timestamp,
    /// Cap per direction in Mbit/s; `None` = uncapped (cross-region peerings always get
    /// one, see [`DEFAULT_CROSS_REGION_MBPS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_mbps: Option<u64>,
}

impl Peering {
    pub fn other_side(&self, vpc: &str) -> Option<&str> {
        peer_dataplane_model::desired::validate::other_side(
            &self.requester_vpc,
            &self.accepter_vpc,
            vpc,
        )
    }

    pub fn involves_account(&self, account: &str) -> bool {
        self.requester_account == account || self.accepter_account == account
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub id: String,
    /// The hypervisor host this attachment lives on.
    pub host: String,
    pub interface: String,
    pub subnet: String,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
}

/// A network ACL rule: the same shape in the API, the store and the agents' documents.
pub use peer_dataplane_model::desired::document::AclRuleDoc as AclRule;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAcl {
    pub id: String,
    pub vpc: String,
    pub rules: Vec<AclRule>,
}

/// A security group rule: the same shape in the API, the store and the agents' documents.
pub use peer_dataplane_model::desired::document::SgRuleDoc as SgRule;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub id: String,
    pub vpc: String,
    pub rules: Vec<SgRule>,
}

/// Everything the control plane knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct World {
    pub vpcs: BTreeMap<String, Vpc>,
    pub subnets: BTreeMap<String, Subnet>,
    pub route_tables: BTreeMap<String, RouteTable>,
    pub peerings: BTreeMap<String, Peering>,
    pub ports: BTreeMap<String, Port>,
    pub network_acls: BTreeMap<String, NetworkAcl>,
    pub security_groups: BTreeMap<String, SecurityGroup>,
    /// Last id number handed out per prefix (`vpc`, `pcx`, …).
    pub id_counters: BTreeMap<String, u64>,
}

/// An API error: an HTTP status, a stable machine-readable code, and a message naming the
/// field and the objects involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

macro_rules! error_codes {
    ($($fn:ident => $status:expr, $code:literal;)*) => {
        impl ApiError {
            $(pub fn $fn(message: impl Into<String>) -> ApiError {
                ApiError { status: $status, code: $code, message: message.into() }
            })*
        }
        /// Every code the API can return, for documentation and tests.
        pub const ERROR_CODES: &[&str] = &[$($code),*];
    };
}

error_codes! {
    unauthorized => 401, "unauthorized";
    forbidden => 403, "forbidden";
    not_found => 404, "not_found";
    invalid_request => 400, "invalid_request";
    invalid_cidr => 400, "invalid_cidr";
    invalid_target => 400, "invalid_target";
    destination_outside_peer => 400, "destination_outside_peer";
    auto_accept_cross_account => 400, "auto_accept_cross_account";
    already_exists => 409, "already_exists";
    cidr_overlap => 409, "cidr_overlap";
    duplicate_peering => 409, "duplicate_peering";
    invalid_state_transition => 409, "invalid_state_transition";
    dependency_violation => 409, "dependency_violation";
    address_in_use => 409, "address_in_use";
    inconsistent => 409, "inconsistent_state";
    payload_too_large => 413, "payload_too_large";
    rate_limited => 429, "rate_limited";
}

//! Control-plane objects as the API and the store see them, and the API's error type.

use peer_dataplane_model::desired::document::{
    AclRuleDoc, HostDoc, NetworkAclDoc, PeeringDoc, PortDoc, RouteDoc, SecurityGroupDoc, SgRuleDoc,
    SubnetDoc, VpcDoc,
};
use peer_dataplane_model::desired::objects::Objects;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Seconds since the Unix epoch.
pub type Timestamp = u64;

/// How long a peering request waits for its accepter (docs/datapath.md §1, §2).
pub const PEERING_EXPIRY_SECS: Timestamp = 7 * 24 * 3600;
/// Cap a cross-region peering gets when none is set (docs/datapath.md §3.7, §4.15), in Mbit/s.
pub const DEFAULT_CROSS_REGION_MBPS: u64 = 1000;

/// A VPC: its document fields, and the route table its subnets use unless they name
/// another (created with the VPC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vpc {
    #[serde(flatten)]
    pub spec: VpcDoc,
    pub main_route_table: String,
}

/// A subnet: the same shape in the API, the store and the agents' documents.
pub type Subnet = SubnetDoc;

/// A route: the same shape in the API, the store and the agents' documents.
pub type Route = RouteDoc;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    pub id: String,
    pub vpc: String,
    /// Explicit routes (the VPC's `local` routes are implicit), keyed by destination. A
    /// persistent map: copying the world for a change shares the routes it does not touch,
    /// so a change to one route of 100,000 costs one route, not a copy of the table.
    pub routes: Routes,
}

/// A table's routes by destination.
pub type Routes = imbl::OrdMap<String, Route>;

pub use peer_dataplane_model::desired::validate::PeeringStatus;

/// A peering: its document fields, and what only the control plane tracks (the accounts
/// and regions of both sides, why it is in its status, its clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peering {
    #[serde(flatten)]
    pub spec: PeeringDoc,
    pub requester_account: String,
    pub requester_region: String,
    pub accepter_account: String,
    pub accepter_region: String,
    /// Why the peering is in its status (e.g. which CIDRs overlap), when that needs saying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    pub created_at: Timestamp,
    /// A pending request expires at this time (docs/datapath.md §2: 7 days).
    pub expires_at: Timestamp,
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

/// A port: its document fields, its id, and the hypervisor host it lives on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub id: String,
    /// Its `host` is always set: the control plane places every port.
    #[serde(flatten)]
    pub spec: PortDoc,
}

impl Port {
    /// The host that carries the port.
    pub fn host(&self) -> &str {
        self.spec.host.as_deref().unwrap_or_default()
    }
}

/// A network ACL rule: the same shape in the API, the store and the agents' documents.
pub type AclRule = AclRuleDoc;
pub type NetworkAcl = NetworkAclDoc;

/// A security group rule: the same shape in the API, the store and the agents' documents.
pub type SgRule = SgRuleDoc;
pub type SecurityGroup = SecurityGroupDoc;

/// A hypervisor: the same shape in the API, the store and the agents' documents.
pub type Host = HostDoc;

/// The document fields of a control-plane object, read and written in place.
macro_rules! spec_of {
    ($($t:ty => $spec:ty),*) => {$(
        impl std::ops::Deref for $t {
            type Target = $spec;
            fn deref(&self) -> &$spec {
                &self.spec
            }
        }
        impl std::ops::DerefMut for $t {
            fn deref_mut(&mut self) -> &mut $spec {
                &mut self.spec
            }
        }
    )*};
}

spec_of!(Vpc => VpcDoc, Peering => PeeringDoc, Port => PortDoc);

/// The stored representation of each object kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored;

peer_dataplane_model::kinds_of_scope!(Stored);

/// Everything the control plane knows: the objects (`w.vpcs`, ... through `Deref`) and the
/// id counters. Ports are keyed by port id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct World {
    pub objects: Objects<Stored>,
    /// Last id number handed out per prefix (`vpc`, `pcx`, …).
    pub id_counters: BTreeMap<String, u64>,
}

peer_dataplane_model::holds_objects!(World, Stored);

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
    store_unreachable => 503, "store_unreachable";
}

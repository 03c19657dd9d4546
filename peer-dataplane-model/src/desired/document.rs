//! The declarative state document (`peer-dataplane run --config FILE`): VPCs, subnets,
//! route tables, peerings and the ports on this host, as the control plane knows them.
//! Each object's fields are declared here once: the control plane's API and store embed
//! these types (adding only what only it knows, such as accounts and timestamps), and its
//! per-host document is made of them.
//! This module only reads the text; [`super::validate`] decides whether it makes sense.

use anyhow::{Context, Result};
use peer_dataplane_common::{PCX_ACTIVE, PCX_PENDING_ACCEPTANCE};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// MAC the instances see as their gateway, unless a port names its own.
    pub router_mac: Option<String>,
    /// This host's id among `[[host]]`, in a fleet joined by the Geneve overlay; absent
    /// on a single host.
    pub local_host: Option<String>,
    /// The hosts of the fleet this host exchanges traffic with, itself included.
    #[serde(default, rename = "host", skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostDoc>,
    #[serde(default, rename = "vpc", skip_serializing_if = "Vec::is_empty")]
    pub vpcs: Vec<VpcDoc>,
    #[serde(default, rename = "subnet", skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<SubnetDoc>,
    #[serde(default, rename = "route_table", skip_serializing_if = "Vec::is_empty")]
    pub route_tables: Vec<RouteTableDoc>,
    #[serde(default, rename = "peering", skip_serializing_if = "Vec::is_empty")]
    pub peerings: Vec<PeeringDoc>,
    #[serde(default, rename = "port", skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortDoc>,
    #[serde(default, rename = "network_acl", skip_serializing_if = "Vec::is_empty")]
    pub network_acls: Vec<NetworkAclDoc>,
    #[serde(
        default,
        rename = "security_group",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub security_groups: Vec<SecurityGroupDoc>,
    /// Instances on other hosts that this host's ports may exchange traffic with: those of
    /// VPCs peered with a VPC that has a port here.
    #[serde(default, rename = "remote_port", skip_serializing_if = "Vec::is_empty")]
    pub remote_ports: Vec<PortDoc>,
}

/// A hypervisor of the fleet.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostDoc {
    /// May be left out of a registration (`PUT /v1/hosts/{id}` names it).
    #[serde(default)]
    pub id: String,
    /// The address other hosts send this host's Geneve traffic to.
    pub underlay_ipv4: String,
    pub underlay_ipv6: Option<String>,
    /// The interface the overlay leaves and arrives by (needed on the local host only).
    pub uplink: Option<String>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VpcDoc {
    pub id: String,
    #[serde(default)]
    pub account: String,
    #[serde(default)]
    pub region: String,
    pub cidrs: Vec<String>,
    pub ipv6_cidr: Option<String>,
    /// The VPC's number in the overlay (Geneve VNI, 1..=16777215); needed in a fleet.
    pub vni: Option<u32>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubnetDoc {
    pub id: String,
    pub vpc: String,
    pub cidr: String,
    pub ipv6_cidr: Option<String>,
    pub route_table: String,
    /// Network ACL of the subnet; none = no NACL filtering.
    pub network_acl: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkAclDoc {
    /// Empty in a control-plane request: the control plane assigns one.
    #[serde(default)]
    pub id: String,
    /// `vpc_id` in the control plane's requests.
    #[serde(alias = "vpc_id")]
    pub vpc: String,
    #[serde(default)]
    pub rules: Vec<AclRuleDoc>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AclRuleDoc {
    /// 1..=32766, lowest first.
    pub number: u32,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `all`, `tcp`, `udp`, `icmp`, `icmpv6` or a protocol number.
    pub protocol: String,
    pub port_from: Option<u16>,
    pub port_to: Option<u16>,
    pub cidr: String,
    /// `allow` or `deny`.
    pub action: String,
}

/// A security group: allow-only rules, stateful (docs/datapath.md §1, §2).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupDoc {
    /// Empty in a control-plane request: the control plane assigns one.
    #[serde(default)]
    pub id: String,
    /// `vpc_id` in the control plane's requests.
    #[serde(alias = "vpc_id")]
    pub vpc: String,
    #[serde(default)]
    pub rules: Vec<SgRuleDoc>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SgRuleDoc {
    /// `ingress` or `egress`.
    pub direction: String,
    /// `all`, `tcp`, `udp`, `icmp`, `icmpv6` or a protocol number.
    pub protocol: String,
    pub port_from: Option<u16>,
    pub port_to: Option<u16>,
    /// The remote side: a CIDR, or (exactly one of the two) a security group in the same
    /// region whose members' addresses it stands for.
    pub cidr: Option<String>,
    pub peer_security_group: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteTableDoc {
    pub id: String,
    pub vpc: String,
    #[serde(default)]
    pub routes: Vec<RouteDoc>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteDoc {
    /// `destination_cidr` (the API's spelling), or `destination` in a hand-written file.
    #[serde(rename = "destination_cidr", alias = "destination")]
    pub destination: String,
    /// `local`, `blackhole` or a peering id (`pcx-…`).
    pub target: String,
}

impl RouteDoc {
    /// A route to `destination` (a CIDR) via `target`; every other field at its default.
    pub fn new(destination: impl Into<String>, target: impl Into<String>) -> RouteDoc {
        RouteDoc {
            destination: destination.into(),
            target: target.into(),
        }
    }
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeeringDoc {
    pub id: String,
    pub requester_vpc: String,
    pub accepter_vpc: String,
    /// `pending-acceptance`, `active`, `rejected`, `expired`, `failed` or `deleted`.
    pub status: PeeringStatus,
    /// Bandwidth cap of each direction, in Mbit/s; none = uncapped, except across
    /// regions (1 Gbit/s, docs/datapath.md §3.7).
    pub bandwidth_mbps: Option<u64>,
    /// Per-direction overrides of `bandwidth_mbps`.
    pub bandwidth_mbps_requester_to_accepter: Option<u64>,
    pub bandwidth_mbps_accepter_to_requester: Option<u64>,
    /// Bucket depth of the caps; default 10 ms at the rate, at least 64 KiB.
    pub burst_bytes: Option<u64>,
    /// The peering's number in the overlay (carried in the Geneve option); needed in a fleet.
    pub tunnel_key: Option<u32>,
    /// In a fleet, how many hosts send over the peering in each direction (requester to
    /// accepter, accepter to requester): this host polices its equal share of each cap.
    pub cap_shares: Option<[u32; 2]>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortDoc {
    /// Host interface of the instance attachment (the XDP program attaches here).
    pub interface: String,
    /// The host that carries the port: absent (this host) in `[[port]]`, required in
    /// `[[remote_port]]`.
    pub host: Option<String>,
    pub subnet: String,
    /// The instance's MAC.
    pub mac: String,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    /// Gateway MAC presented on this port; defaults to the document's `router_mac`.
    pub gateway_mac: Option<String>,
    /// Security groups of the port (at most 16). Absent: the port is not filtered by
    /// security groups; an empty list denies everything that is not a tracked reply.
    pub security_groups: Option<Vec<String>>,
}

impl Document {
    pub fn from_toml(text: &str) -> Result<Document> {
        toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("state document is not valid TOML for this schema: {e}"))
    }

    pub fn load(path: &Path) -> Result<Document> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading state document {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("parsing state document {}", path.display()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Document always serializes")
    }
}

/// Peering status (docs/datapath.md §1, §2): one type for the control plane's API and store,
/// the state document and the data plane's code.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PeeringStatus {
    #[default]
    PendingAcceptance,
    Active,
    Rejected,
    Expired,
    Failed,
    Deleted,
}

impl PeeringStatus {
    pub const ALL: [PeeringStatus; 6] = [
        PeeringStatus::PendingAcceptance,
        PeeringStatus::Active,
        PeeringStatus::Rejected,
        PeeringStatus::Expired,
        PeeringStatus::Failed,
        PeeringStatus::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PeeringStatus::PendingAcceptance => "pending-acceptance",
            PeeringStatus::Active => "active",
            PeeringStatus::Rejected => "rejected",
            PeeringStatus::Expired => "expired",
            PeeringStatus::Failed => "failed",
            PeeringStatus::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<PeeringStatus> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The ABI value (`PCX_*`).
    pub fn code(self) -> u32 {
        match self {
            PeeringStatus::PendingAcceptance => PCX_PENDING_ACCEPTANCE,
            PeeringStatus::Active => PCX_ACTIVE,
            PeeringStatus::Rejected => peer_dataplane_common::PCX_REJECTED,
            PeeringStatus::Expired => peer_dataplane_common::PCX_EXPIRED,
            PeeringStatus::Failed => peer_dataplane_common::PCX_FAILED,
            PeeringStatus::Deleted => peer_dataplane_common::PCX_DELETED,
        }
    }

    /// A peering in these statuses holds its CIDRs: no overlapping peer may join either
    /// VPC (docs/datapath.md §3.4).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            PeeringStatus::PendingAcceptance | PeeringStatus::Active
        )
    }
}

/// The key a remote port is known by in a document.
pub fn remote_port_key(p: &PortDoc) -> String {
    format!("{}/{}", p.host.as_deref().unwrap_or_default(), p.interface)
}

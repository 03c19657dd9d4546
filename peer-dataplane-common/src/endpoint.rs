//! Endpoints: (VPC, address) -> where the instance lives.

use core::mem::size_of;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EndpointKey {
    pub vpc: u32,
    /// IPv4 in mapped form.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<EndpointKey>() == 20);

/// The instance is behind a port of this host: deliver through the devmap.
pub const ENDPOINT_LOCAL: u32 = 1;
/// The instance lives on another host: encapsulate toward `Endpoint::underlay`.
pub const ENDPOINT_REMOTE: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// Interface of the local port (also its devmap key).
    pub ifindex: u32,
    /// Route table of the destination's subnet: the return-route check looks here.
    pub route_table: u32,
    pub subnet: u32,
    /// `ENDPOINT_*`.
    pub flags: u32,
    /// Destination MAC written on delivery.
    pub mac: [u8; 6],
    /// Source MAC written on delivery: the router MAC of the destination port.
    pub gw_mac: [u8; 6],
    /// Ingress ACL set of the destination's subnet ([`acl::acl_set`]), or [`acl::NO_ACL`].
    pub acl: u32,
    /// Ingress set of the destination port's security groups, or [`acl::NO_ACL`].
    pub sg: u32,
    /// Remote endpoints: the slot of the host that carries the instance (the decap check
    /// compares it with the tunnel's sender), else 0.
    pub host: u32,
    /// VNI of the endpoint's VPC (0 on a single host).
    pub vni: u32,
    /// Remote endpoints: the carrying host's underlay address (IPv4 in mapped form).
    pub underlay: [u8; 16],
}
const _: () = assert!(size_of::<Endpoint>() == 60);

//! Ports: ingress ifindex -> the instance attachment behind it.

use core::mem::size_of;

pub const PORT_HAS_IPV4: u32 = 1 << 0;
pub const PORT_HAS_IPV6: u32 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Port {
    pub vpc: u32,
    pub subnet: u32,
    pub route_table: u32,
    /// `PORT_HAS_*` bits.
    pub flags: u32,
    /// The instance's own addresses (IPv4 in mapped form, see [`addr`]); a packet whose
    /// source is one of these skips the VPC-membership lookup of the transitivity check.
    pub ipv4: [u8; 16],
    pub ipv6: [u8; 16],
    /// The instance's MAC.
    pub mac: [u8; 6],
    /// The virtual router MAC the instance sees as its gateway on this port.
    pub gw_mac: [u8; 6],
    /// Egress ACL set of the port's subnet ([`acl::acl_set`]), or [`acl::NO_ACL`].
    pub acl: u32,
    /// Egress set of the port's security groups (an ACL set whose rules all allow), or
    /// [`acl::NO_ACL`] for a port without security groups.
    pub sg: u32,
    /// VNI of the port's VPC: the source VPC a Geneve option names for traffic from this
    /// port to another host (0 on a single host).
    pub vni: u32,
}
const _: () = assert!(size_of::<Port>() == 72);

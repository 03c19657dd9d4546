//! What the maps say, named: pure functions of one snapshot read of the maps
//! (`KernelMaps::snapshot`) that the CLI renders and the metrics endpoint exports, so both
//! always show the same numbers.

pub mod installed;
pub mod stats;

use crate::maps::MapState;
use peer_dataplane_common::{
    acl::{acl_set_id, NO_ACL},
    addr::is_v4_mapped,
    NameKey, NAME_ACL, NAME_SG_SET,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Names by (kind, id), with `#id` for ids the names map does not know.
pub struct Names<'a>(pub &'a MapState);

impl Names<'_> {
    pub fn get(&self, kind: u32, id: u32) -> String {
        self.0
            .names
            .get(&NameKey { kind, id })
            .map(|n| n.as_str().to_string())
            .unwrap_or_else(|| format!("#{id}"))
    }

    /// The network ACL an ACL set belongs to, if any.
    pub fn acl(&self, set: u32) -> Option<String> {
        (set != NO_ACL).then(|| self.get(NAME_ACL, acl_set_id(set)))
    }

    /// The security groups a compiled group set stands for (`sg-a+sg-b`), if any.
    pub fn security_groups(&self, set: u32) -> Option<String> {
        (set != NO_ACL).then(|| {
            self.get(NAME_SG_SET, acl_set_id(set))
                .trim_start_matches("sgs:")
                .to_string()
        })
    }
}

/// An address in the maps' encoding (IPv4 mapped into IPv6): the inverse of [`ip`].
pub fn map_ip(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => peer_dataplane_common::addr::from_v4(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

/// An address as the maps store it (IPv4 mapped into IPv6), in its own family.
pub fn ip(a: &[u8; 16]) -> IpAddr {
    if is_v4_mapped(a) {
        IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*a))
    }
}

//! Names: a userspace-only map that lets the CLI (and a restarted agent) turn ids back
//! into the control plane's names without any other state on disk.

use core::mem::size_of;

// the control plane's names without any other state on disk.

pub const NAME_VPC: u32 = 1;
pub const NAME_SUBNET: u32 = 2;
pub const NAME_ROUTE_TABLE: u32 = 3;
pub const NAME_PEERING: u32 = 4;
pub const NAME_PORT: u32 = 5;
pub const NAME_ACL: u32 = 6;
/// A distinct combination of security groups on ports (compiled as one ACL set).
pub const NAME_SG_SET: u32 = 7;
/// The rule number (as text) behind ACL hit slot `id`, for `peer-dataplane acl hits`.
pub const NAME_ACL_RULE: u32 = 8;
/// A host of the overlay, by its slot in `pdp_hosts`.
pub const NAME_HOST: u32 = 9;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NameKey {
    /// `NAME_*`.
    pub kind: u32,
    pub id: u32,
}
const _: () = assert!(size_of::<NameKey>() == 8);

pub const NAME_MAX_LEN: usize = 60;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Name {
    pub len: u32,
    pub bytes: [u8; NAME_MAX_LEN],
}
const _: () = assert!(size_of::<Name>() == 64);

impl Name {
    /// Truncates at [`NAME_MAX_LEN`] bytes (on a char boundary); the agent refuses longer
    /// ids before they get here.
    pub fn new(s: &str) -> Self {
        let mut end = s.len().min(NAME_MAX_LEN);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; NAME_MAX_LEN];
        bytes[..end].copy_from_slice(&s.as_bytes()[..end]);
        Name {
            len: end as u32,
            bytes,
        }
    }

    pub fn as_str(&self) -> &str {
        let len = (self.len as usize).min(NAME_MAX_LEN);
        core::str::from_utf8(&self.bytes[..len]).unwrap_or("?")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_round_trips_and_truncates_on_char_boundary() {
        assert_eq!(Name::new("pcx-0123abcd").as_str(), "pcx-0123abcd");
        let long = "é".repeat(40); // 80 bytes
        let n = Name::new(&long);
        assert!(n.len as usize <= NAME_MAX_LEN);
        assert_eq!(n.as_str(), "é".repeat(30));
    }
}

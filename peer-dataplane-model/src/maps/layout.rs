//! How a stored map's keys and values are laid out in the kernel's map: the bytes the
//! agent writes and reads back. Most are the ABI type's own bytes ([`Plain`]); an LPM
//! trie's key is its prefix length immediately followed by its data, with no padding.

use peer_dataplane_common::acl::AclPortData;
use peer_dataplane_common::{Plain, RouteData};

/// The kernel's bytes of a stored map's key or value.
pub trait KernelLayout: Sized {
    /// Appends the kernel's bytes of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// The value whose kernel bytes are `b`; `None` if `b` is not its size.
    fn decode(b: &[u8]) -> Option<Self>;
}

impl<T: Plain> KernelLayout for T {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.bytes());
    }

    fn decode(b: &[u8]) -> Option<Self> {
        T::from_bytes(b)
    }
}

/// A key of an LPM trie: the prefix length in bits (counting from the data's first bit),
/// then the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LpmKey<D> {
    pub prefix_len: u32,
    pub data: D,
}

/// A key of the routes trie: table bits and address.
pub type RouteKey = LpmKey<RouteData>;
/// A key of the network ACL port trie: set and port.
pub type AclPortKey = LpmKey<AclPortData>;

impl<D: Plain> KernelLayout for LpmKey<D> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix_len.to_ne_bytes());
        out.extend_from_slice(self.data.bytes());
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let (len, data) = b.split_at_checked(4)?;
        Some(LpmKey {
            prefix_len: u32::from_ne_bytes(len.try_into().ok()?),
            data: D::from_bytes(data)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peer_dataplane_common::registry;

    #[test]
    fn lpm_keys_are_as_long_as_the_kernel_keys() {
        let mut out = Vec::new();
        RouteKey {
            prefix_len: 40,
            data: RouteData::default(),
        }
        .encode(&mut out);
        assert_eq!(out.len() as u32, registry::ROUTES.key_size);
        assert_eq!(RouteKey::decode(&out).unwrap().prefix_len, 40);
        out.clear();
        let k = AclPortKey {
            prefix_len: 37,
            data: AclPortData {
                set_be: [0, 0, 0, 9],
                port_be: [0, 80],
            },
        };
        k.encode(&mut out);
        assert_eq!(out.len() as u32, registry::ACL_PORT.key_size);
        assert_eq!(AclPortKey::decode(&out), Some(k));
        assert_eq!(AclPortKey::decode(&out[1..]), None);
    }
}

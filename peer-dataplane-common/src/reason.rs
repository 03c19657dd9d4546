//! Why a packet was dropped or handed to the kernel. Append-only: the values are stored
//! in pinned counter maps, so renumbering would mislabel counters across an upgrade.

/// Slots reserved for drop reasons in every counter array (room to append).
pub const DROP_REASON_SLOTS: usize = 32;
/// Slots reserved for pass reasons.
pub const PASS_REASON_SLOTS: usize = 8;

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Truncated frame, bad IP version or header length, total length past the frame, or a
    /// first fragment too short to hold its transport header.
    ParseError = 1,
    /// Stacked VLAN tags (QinQ) or 802.1ad: never forwarded across a peering.
    UnsupportedEncap = 2,
    /// IPv4 TTL or IPv6 hop limit would reach 0.
    TtlExceeded = 3,
    /// The sender's route table has no route for the destination.
    NoRoute = 4,
    /// The matching route's target is `blackhole`.
    Blackhole = 5,
    /// The route's target peering is not `active` (or not installed).
    PeeringInactive = 6,
    /// The route's target peering does not join the sender's VPC.
    PeeringMismatch = 7,
    /// The destination is not inside the peer VPC's CIDRs.
    OutsidePeer = 8,
    /// The source is not inside the sender's VPC: the packet entered it from elsewhere
    /// (another peering or a gateway) and may not leave over a peering.
    Transitive = 9,
    /// The receiver's route table has no route back to the source through the same peering.
    NoReturnRoute = 10,
    /// The destination is inside the peer VPC but no instance has that address.
    NoEndpoint = 11,
    NaclDeny = 12,
    SgDeny = 13,
    RateLimited = 14,
    /// The devmap had no entry for the destination port.
    RedirectFailed = 15,
}

impl DropReason {
    pub const ALL: [DropReason; 15] = [
        DropReason::ParseError,
        DropReason::UnsupportedEncap,
        DropReason::TtlExceeded,
        DropReason::NoRoute,
        DropReason::Blackhole,
        DropReason::PeeringInactive,
        DropReason::PeeringMismatch,
        DropReason::OutsidePeer,
        DropReason::Transitive,
        DropReason::NoReturnRoute,
        DropReason::NoEndpoint,
        DropReason::NaclDeny,
        DropReason::SgDeny,
        DropReason::RateLimited,
        DropReason::RedirectFailed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::ParseError => "parse-error",
            DropReason::UnsupportedEncap => "unsupported-encap",
            DropReason::TtlExceeded => "ttl-exceeded",
            DropReason::NoRoute => "no-route",
            DropReason::Blackhole => "blackhole",
            DropReason::PeeringInactive => "peering-inactive",
            DropReason::PeeringMismatch => "peering-mismatch",
            DropReason::OutsidePeer => "outside-peer",
            DropReason::Transitive => "transitive",
            DropReason::NoReturnRoute => "no-return-route",
            DropReason::NoEndpoint => "no-endpoint",
            DropReason::NaclDeny => "nacl-deny",
            DropReason::SgDeny => "sg-deny",
            DropReason::RateLimited => "rate-limited",
            DropReason::RedirectFailed => "redirect-failed",
        }
    }

    pub fn from_name(s: &str) -> Option<DropReason> {
        Self::ALL.iter().copied().find(|r| r.as_str() == s)
    }

    pub fn from_u32(v: u32) -> Option<DropReason> {
        Self::ALL.iter().copied().find(|r| *r as u32 == v)
    }
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PassReason {
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    NotIp = 0,
    /// The ingress interface is not a port this program serves.
    UnknownPort = 1,
    /// The route target is `local`: intra-VPC traffic is the kernel's business.
    LocalRoute = 2,
    /// Multicast, broadcast, link-local or unspecified destination (DHCP, ND, metadata).
    NotRoutable = 3,
}

impl PassReason {
    pub const ALL: [PassReason; 4] = [
        PassReason::NotIp,
        PassReason::UnknownPort,
        PassReason::LocalRoute,
        PassReason::NotRoutable,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            PassReason::NotIp => "not-ip",
            PassReason::UnknownPort => "unknown-port",
            PassReason::LocalRoute => "local-route",
            PassReason::NotRoutable => "not-routable",
        }
    }

    pub fn from_u32(v: u32) -> Option<PassReason> {
        Self::ALL.iter().copied().find(|r| *r as u32 == v)
    }
}

const _: () = assert!((DropReason::RedirectFailed as usize) < DROP_REASON_SLOTS);
const _: () = assert!((PassReason::NotRoutable as usize) < PASS_REASON_SLOTS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        for (i, a) in DropReason::ALL.iter().enumerate() {
            assert_eq!(DropReason::from_name(a.as_str()), Some(*a));
            for b in &DropReason::ALL[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
                assert_ne!(*a as u32, *b as u32);
            }
        }
    }

    #[test]
    fn values_are_stable() {
        // Pinned counters are indexed by these numbers; changing one mislabels history.
        assert_eq!(DropReason::ParseError as u32, 1);
        assert_eq!(DropReason::PeeringInactive as u32, 6);
        assert_eq!(DropReason::Transitive as u32, 9);
        assert_eq!(DropReason::RateLimited as u32, 14);
        assert_eq!(PassReason::LocalRoute as u32, 2);
    }
}

//! Why a packet was dropped or handed to the kernel. Append-only: the values are stored
//! in pinned counter maps, so renumbering would mislabel counters across an upgrade.

/// Slots reserved for drop reasons in every counter array (room to append).
pub const DROP_REASON_SLOTS: usize = 32;
/// Slots reserved for pass reasons.
pub const PASS_REASON_SLOTS: usize = 8;

/// A reason enum, each variant declared once: its stable number and its counter name.
/// Generates the enum, `ALL` (in declaration order), `as_str`, `from_name` and `from_u32`.
macro_rules! reasons {
    ($(#[$meta:meta])* pub enum $name:ident {
        $($(#[doc = $doc:literal])* $variant:ident = $value:literal => $text:literal,)*
    }) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $($(#[doc = $doc])* $variant = $value,)*
        }

        impl $name {
            pub const ALL: [$name; [$($value),*].len()] = [$($name::$variant),*];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            pub fn from_name(s: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|r| r.as_str() == s)
            }

            pub fn from_u32(v: u32) -> Option<$name> {
                Self::ALL.iter().copied().find(|r| *r as u32 == v)
            }
        }
    };
}

reasons! {
    /// Why a packet was dropped.
    pub enum DropReason {
        /// Truncated frame, bad IP version or header length, total length past the frame, or a
        /// first fragment too short to hold its transport header.
        ParseError = 1 => "parse-error",
        /// Stacked VLAN tags (QinQ) or 802.1ad: never forwarded across a peering.
        UnsupportedEncap = 2 => "unsupported-encap",
        /// IPv4 TTL or IPv6 hop limit would reach 0.
        TtlExceeded = 3 => "ttl-exceeded",
        /// The sender's route table has no route for the destination.
        NoRoute = 4 => "no-route",
        /// The matching route's target is `blackhole`.
        Blackhole = 5 => "blackhole",
        /// The route's target peering is not `active` (or not installed).
        PeeringInactive = 6 => "peering-inactive",
        /// The route's target peering does not join the sender's VPC.
        PeeringMismatch = 7 => "peering-mismatch",
        /// The destination is not inside the peer VPC's CIDRs.
        OutsidePeer = 8 => "outside-peer",
        /// The source is not inside the sender's VPC: the packet entered it from elsewhere
        /// (another peering or a gateway) and may not leave over a peering.
        Transitive = 9 => "transitive",
        /// The receiver's route table has no route back to the source through the same peering.
        NoReturnRoute = 10 => "no-return-route",
        /// The destination is inside the peer VPC but no instance has that address.
        NoEndpoint = 11 => "no-endpoint",
        /// A network ACL rule (or the implicit final deny) refused it.
        NaclDeny = 12 => "nacl-deny",
        /// No security group rule of the sender (egress) or receiver (ingress) allows it.
        SgDeny = 13 => "sg-deny",
        /// Over the peering's bandwidth cap in this direction.
        RateLimited = 14 => "rate-limited",
        /// The devmap had no entry for the destination port.
        RedirectFailed = 15 => "redirect-failed",
        /// Toward another host: the underlay has no route or no resolved neighbour for the
        /// destination host (the agent keeps the neighbours of known hosts resolved).
        UnderlayUnreachable = 16 => "underlay-unreachable",
        /// Toward another host: the packet would not fit the underlay once encapsulated; the
        /// sender got ICMP "fragmentation needed" (IPv4) or "packet too big" (IPv6).
        MtuExceeded = 17 => "mtu-exceeded",
        /// Geneve to this host that is not what peers send: bad version, protocol, option
        /// lengths, an OAM frame, a fragmented tunnel packet, or no peering option.
        GeneveMalformed = 18 => "geneve-malformed",
        /// Geneve with a critical option this host does not understand.
        GeneveUnknownOption = 19 => "geneve-unknown-option",
        /// Geneve from an underlay address that is no host of the fleet.
        UnknownHost = 20 => "unknown-host",
        /// Geneve whose inner source is not an instance the sending host carries in the VPC
        /// the option names: a host speaking for instances it does not carry.
        SpoofedSource = 21 => "spoofed-source",
        /// Geneve whose VNI is not the VPC its peering leads to from the source VPC.
        VniMismatch = 22 => "vni-mismatch",
    }
}

reasons! {
    /// Why a packet was handed to the kernel's own stack.
    pub enum PassReason {
        /// Not IPv4/IPv6 (ARP, LLDP, ...).
        NotIp = 0 => "not-ip",
        /// The ingress interface is not a port this program serves.
        UnknownPort = 1 => "unknown-port",
        /// The route target is `local`: intra-VPC traffic is the kernel's business.
        LocalRoute = 2 => "local-route",
        /// Multicast, broadcast, link-local or unspecified destination (DHCP, ND, metadata).
        NotRoutable = 3 => "not-routable",
        /// Arrived on the uplink and is not Geneve to this host: the underlay's own traffic.
        Underlay = 4 => "underlay",
    }
}

/// The drop reasons only a host of a fleet gives: its overlay's (docs/datapath.md §7).
pub const FLEET_DROPS: [DropReason; 7] = [
    DropReason::UnderlayUnreachable,
    DropReason::MtuExceeded,
    DropReason::GeneveMalformed,
    DropReason::GeneveUnknownOption,
    DropReason::UnknownHost,
    DropReason::SpoofedSource,
    DropReason::VniMismatch,
];

const _: () = assert!((DropReason::VniMismatch as usize) < DROP_REASON_SLOTS);
const _: () = assert!((PassReason::Underlay as usize) < PASS_REASON_SLOTS);

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

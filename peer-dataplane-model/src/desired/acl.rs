//! Network ACL compilation (docs/datapath.md §4.8): a rule list becomes per-dimension
//! lookups whose values are rule bitmaps, so that the per-packet cost does not grow with
//! the number of rules.
//!
//! Rules are sorted by number; bit `i` stands for the `i`-th rule. For a packet:
//! - **address**: the longest stored prefix `P` containing the address. Every rule CIDR
//!   is stored, and the entry for `P` holds every rule whose CIDR contains `P`. The rule
//!   CIDRs containing an address are nested prefixes of it, each containing `P`, so this is
//!   exactly the set of rules matching the address;
//! - **protocol**: the rules for that protocol number, plus the `all` rules;
//! - **destination port** (TCP, UDP): each rule's port range is split into aligned
//!   prefixes, and the same longest-prefix argument applies. Packets without a port (other
//!   protocols, later fragments) use a separate bitmap of rules that need no port;
//! - the AND of the three, lowest set bit first: that rule decides (`allow` bitmap);
//!   no bit set is the implicit final deny.
//!
//! [`evaluate_naive`] is the rule-by-rule definition the compiled form must agree with.

use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Most rules one ACL direction may hold (bitmap width).
pub const MAX_RULES: usize = 1024;
pub const BITMAP_WORDS: usize = MAX_RULES / 64;

pub type Bitmap = [u64; BITMAP_WORDS];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    All,
    Number(u8),
}

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

impl Protocol {
    fn has_ports(self) -> bool {
        matches!(self, Protocol::Number(TCP) | Protocol::Number(UDP))
    }
}

/// One rule of one direction, as the compiler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub number: u32,
    pub protocol: Protocol,
    /// Inclusive destination port range (TCP/UDP only); `None` = every port.
    pub ports: Option<(u16, u16)>,
    /// Source CIDR for ingress rules, destination CIDR for egress rules.
    pub cidr: IpNet,
    pub allow: bool,
}

/// The compiled form of one ACL direction: what the maps hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// Rule numbers by bit, for hit counters and traces.
    pub numbers: Vec<u32>,
    pub allow: Bitmap,
    /// Address prefix -> rules whose CIDR contains it.
    pub addresses: BTreeMap<IpNet, Bitmap>,
    /// Protocol number -> rules for it or for `all`.
    pub protocols: BTreeMap<u8, Bitmap>,
    /// Rules for `all` protocols (protocols with no entry above).
    pub any_protocol: Bitmap,
    /// Port prefix (value, length in bits) -> rules whose port range contains it.
    pub ports: BTreeMap<(u16, u8), Bitmap>,
    /// Rules that match a packet without a port.
    pub portless: Bitmap,
}

/// A packet as the ACL stage sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Source address for ingress, destination for egress.
    pub addr: IpAddr,
    pub protocol: u8,
    /// Destination port, when the packet has one (TCP/UDP, not a later fragment).
    pub port: Option<u16>,
}

/// Which rule decided, and how. `None` rule = the implicit final deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub rule: Option<u32>,
    pub allow: bool,
}

pub const IMPLICIT_DENY: Decision = Decision {
    rule: None,
    allow: false,
};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CompileError {
    #[error("{0} rules in one direction; at most {MAX_RULES}")]
    TooMany(usize),
    #[error("rule {0}: port range {1}-{2} is reversed")]
    Reversed(u32, u16, u16),
}

fn set(b: &mut Bitmap, bit: usize) {
    b[bit / 64] |= 1 << (bit % 64);
}

pub fn and(a: &Bitmap, b: &Bitmap) -> Bitmap {
    let mut out = [0u64; BITMAP_WORDS];
    for i in 0..BITMAP_WORDS {
        out[i] = a[i] & b[i];
    }
    out
}

pub fn lowest_bit(b: &Bitmap) -> Option<usize> {
    b.iter()
        .enumerate()
        .find(|(_, w)| **w != 0)
        .map(|(i, w)| i * 64 + w.trailing_zeros() as usize)
}

fn has(b: &Bitmap, bit: usize) -> bool {
    b[bit / 64] & (1 << (bit % 64)) != 0
}

/// Splits `[lo, hi]` into the fewest aligned prefixes (value, length in bits of 16).
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (lo as u32, hi as u32);
    while lo <= hi {
        // The largest aligned block starting at lo that stays within hi.
        let mut size = if lo == 0 {
            1u32 << 16
        } else {
            1u32 << lo.trailing_zeros().min(16)
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, (16 - size.trailing_zeros()) as u8));
        lo += size;
    }
    out
}

fn prefix_contains(outer: (u16, u8), inner: (u16, u8)) -> bool {
    if outer.1 > inner.1 {
        return false;
    }
    let mask = if outer.1 == 0 {
        0
    } else {
        u16::MAX << (16 - outer.1)
    };
    inner.0 & mask == outer.0 & mask
}

pub fn compile(rules: &[Rule]) -> Result<Compiled, CompileError> {
    if rules.len() > MAX_RULES {
        return Err(CompileError::TooMany(rules.len()));
    }
    let mut sorted: Vec<&Rule> = rules.iter().collect();
    sorted.sort_by_key(|r| r.number);
    let mut c = Compiled {
        numbers: sorted.iter().map(|r| r.number).collect(),
        allow: [0; BITMAP_WORDS],
        addresses: BTreeMap::new(),
        protocols: BTreeMap::new(),
        any_protocol: [0; BITMAP_WORDS],
        ports: BTreeMap::new(),
        portless: [0; BITMAP_WORDS],
    };
    for r in &sorted {
        if let Some((lo, hi)) = r.ports {
            if lo > hi {
                return Err(CompileError::Reversed(r.number, lo, hi));
            }
        }
        c.addresses
            .entry(r.cidr.trunc())
            .or_insert([0; BITMAP_WORDS]);
    }
    // Port prefixes: each rule's range split; rules without a range cover 0/0.
    let every_port = (0u16, 0u8);
    c.ports.insert(every_port, [0; BITMAP_WORDS]);
    let ranges: Vec<Vec<(u16, u8)>> = sorted
        .iter()
        .map(|r| match r.ports {
            Some((lo, hi)) if r.protocol.has_ports() => port_prefixes(lo, hi),
            _ => vec![every_port],
        })
        .collect();
    for rs in &ranges {
        for p in rs {
            c.ports.entry(*p).or_insert([0; BITMAP_WORDS]);
        }
    }
    for (bit, r) in sorted.iter().enumerate() {
        if r.allow {
            set(&mut c.allow, bit);
        }
        // Stored prefixes inside the rule's CIDR sit in one key range (networks between its
        // first and last address, any longer length).
        let cidr = r.cidr.trunc();
        let last = IpNet::new(cidr.broadcast(), cidr.max_prefix_len()).unwrap();
        for (prefix, bits) in c.addresses.range_mut(cidr..=last) {
            if cidr.contains(prefix) {
                set(bits, bit);
            }
        }
        match r.protocol {
            Protocol::All => set(&mut c.any_protocol, bit),
            Protocol::Number(n) => {
                c.protocols.entry(n).or_insert([0; BITMAP_WORDS]);
            }
        }
        for outer in &ranges[bit] {
            let end = outer.0 as u32 + (1u32 << (16 - outer.1)) - 1;
            for (prefix, bits) in c.ports.range_mut(*outer..=(end as u16, 16)) {
                if prefix_contains(*outer, *prefix) {
                    set(bits, bit);
                }
            }
        }
        if r.ports.is_none() || !r.protocol.has_ports() {
            set(&mut c.portless, bit);
        }
    }
    let any = c.any_protocol;
    for (n, bits) in c.protocols.iter_mut() {
        *bits = any;
        for (bit, r) in sorted.iter().enumerate() {
            if r.protocol == Protocol::Number(*n) {
                set(bits, bit);
            }
        }
    }
    Ok(c)
}

/// The compiled form's answer, computed the way the program computes it.
pub fn evaluate(c: &Compiled, p: &Packet) -> Decision {
    // Longest-prefix matches, probing from the longest prefix down as a trie would.
    let host = IpNet::from(p.addr);
    let addr_bits = (0..=host.max_prefix_len())
        .rev()
        .find_map(|len| c.addresses.get(&IpNet::new(p.addr, len).unwrap().trunc()))
        .copied()
        .unwrap_or([0; BITMAP_WORDS]);
    let proto_bits = c
        .protocols
        .get(&p.protocol)
        .copied()
        .unwrap_or(c.any_protocol);
    let port_bits = match p.port {
        Some(port) if p.protocol == TCP || p.protocol == UDP => (0..=16u8)
            .rev()
            .find_map(|len| {
                c.ports.get(&(
                    if len == 0 {
                        0
                    } else {
                        port & (u16::MAX << (16 - len))
                    },
                    len,
                ))
            })
            .copied()
            .unwrap_or([0; BITMAP_WORDS]),
        _ => c.portless,
    };
    match lowest_bit(&and(&and(&addr_bits, &proto_bits), &port_bits)) {
        None => IMPLICIT_DENY,
        Some(bit) => Decision {
            rule: Some(c.numbers[bit]),
            allow: has(&c.allow, bit),
        },
    }
}

/// The definition: rules in number order, first match decides, else deny.
pub fn evaluate_naive(rules: &[Rule], p: &Packet) -> Decision {
    let mut sorted: Vec<&Rule> = rules.iter().collect();
    sorted.sort_by_key(|r| r.number);
    for r in sorted {
        let proto_ok = match r.protocol {
            Protocol::All => true,
            Protocol::Number(n) => n == p.protocol,
        };
        let port_ok = match (r.ports, r.protocol.has_ports()) {
            (Some((lo, hi)), true) => matches!(p.port, Some(x) if lo <= x && x <= hi),
            _ => true,
        };
        if proto_ok && port_ok && r.cidr.contains(&p.addr) {
            return Decision {
                rule: Some(r.number),
                allow: r.allow,
            };
        }
    }
    IMPLICIT_DENY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_split_into_aligned_prefixes() {
        assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(1024, 2047), vec![(1024, 6)]);
        let ps = port_prefixes(3, 10);
        assert_eq!(ps, vec![(3, 16), (4, 14), (8, 15), (10, 16)]);
        // Every port of a random range is covered exactly once.
        let mut seed = 0x1234_5678_u64;
        for _ in 0..200 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let a = (seed >> 16) as u16;
            let b = (seed >> 40) as u16;
            let (lo, hi) = (a.min(b), a.max(b));
            let ps = port_prefixes(lo, hi);
            for probe in [
                lo,
                hi,
                lo.saturating_sub(1),
                hi.saturating_add(1),
                lo / 2 + hi / 2,
            ] {
                let n = ps
                    .iter()
                    .filter(|p| prefix_contains(**p, (probe, 16)))
                    .count();
                assert_eq!(
                    n,
                    (lo <= probe && probe <= hi) as usize,
                    "{lo}-{hi} at {probe}: {ps:?}"
                );
            }
        }
    }

    fn rule(
        number: u32,
        protocol: Protocol,
        ports: Option<(u16, u16)>,
        cidr: &str,
        allow: bool,
    ) -> Rule {
        Rule {
            number,
            protocol,
            ports,
            cidr: cidr.parse().unwrap(),
            allow,
        }
    }

    #[test]
    fn lowest_number_wins_and_final_deny() {
        let rules = vec![
            rule(200, Protocol::All, None, "0.0.0.0/0", true),
            rule(
                100,
                Protocol::Number(TCP),
                Some((22, 22)),
                "10.0.0.0/8",
                false,
            ),
        ];
        let c = compile(&rules).unwrap();
        let ssh = Packet {
            addr: "10.1.2.3".parse().unwrap(),
            protocol: TCP,
            port: Some(22),
        };
        assert_eq!(
            evaluate(&c, &ssh),
            Decision {
                rule: Some(100),
                allow: false
            }
        );
        let web = Packet {
            port: Some(443),
            ..ssh
        };
        assert_eq!(
            evaluate(&c, &web),
            Decision {
                rule: Some(200),
                allow: true
            }
        );
        let only_tcp =
            compile(&[rule(10, Protocol::Number(TCP), None, "0.0.0.0/0", true)]).unwrap();
        let udp = Packet {
            protocol: UDP,
            ..ssh
        };
        assert_eq!(evaluate(&only_tcp, &udp), IMPLICIT_DENY);
        assert_eq!(evaluate(&compile(&[]).unwrap(), &udp), IMPLICIT_DENY);
    }

    /// The compiled form agrees with the definition on random rule sets and packets.
    #[test]
    fn compiled_agrees_with_naive_on_random_rule_sets() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let cidrs = [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.1.2.3/32",
            "172.16.0.0/12",
            "fd00::/8",
            "::/0",
        ];
        let addrs = [
            "10.1.2.3",
            "10.1.2.4",
            "10.1.9.9",
            "10.200.0.1",
            "172.20.0.1",
            "8.8.8.8",
            "fd00::1",
            "2001:db8::1",
        ];
        let protos = [
            Protocol::All,
            Protocol::Number(TCP),
            Protocol::Number(UDP),
            Protocol::Number(1),
            Protocol::Number(58),
        ];
        for round in 0..300 {
            let n = (next() % 40) as usize + if round % 10 == 0 { 900 } else { 0 };
            let rules: Vec<Rule> = (0..n)
                .map(|i| {
                    let protocol = protos[(next() % protos.len() as u64) as usize];
                    let ports = if next() % 2 == 0 {
                        let a = (next() % 70000).min(65535) as u16;
                        let b = (next() % 70000).min(65535) as u16;
                        Some((a.min(b), a.max(b)))
                    } else {
                        None
                    };
                    let ports = if protocol.has_ports() { ports } else { None };
                    rule(
                        i as u32 * 3 + 1,
                        protocol,
                        ports,
                        cidrs[(next() % cidrs.len() as u64) as usize],
                        next() % 2 == 0,
                    )
                })
                .collect();
            let c = compile(&rules).unwrap();
            for _ in 0..50 {
                let protocol = [TCP, UDP, 1, 58, 47][(next() % 5) as usize];
                let port = if (protocol == TCP || protocol == UDP) && next() % 8 != 0 {
                    Some((next() % 65536) as u16)
                } else {
                    None
                };
                let p = Packet {
                    addr: addrs[(next() % addrs.len() as u64) as usize]
                        .parse()
                        .unwrap(),
                    protocol,
                    port,
                };
                assert_eq!(
                    evaluate(&c, &p),
                    evaluate_naive(&rules, &p),
                    "round {round}, {p:?}"
                );
            }
        }
    }
}

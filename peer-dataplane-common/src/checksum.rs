//! Incremental Internet checksum update (RFC 1624, eqn. 3): HC' = ~(~HC + ~m + m').
//! Values are 16-bit words read big-endian from the packet.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New checksum after one 16-bit word of the covered data changes from `old` to `new`.
#[inline(always)]
pub fn replace_u16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32) + (new as u32);
    !fold(sum)
}

/// Full checksum of an IPv4 header (the checksum field is summed as found; pass a header
/// whose checksum field is zero to compute one, or a valid header to get 0).
pub fn ipv4_header(header: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i + 1 < header.len() {
        sum += u16::from_be_bytes([header[i], header[i + 1]]) as u32;
        i += 2;
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ttl: u8) -> [u8; 20] {
        let mut h = [
            0x45, 0, 0, 84, 0x12, 0x34, 0x40, 0, ttl, 1, 0, 0, 10, 0, 2, 10, 172, 16, 2, 20,
        ];
        let c = ipv4_header(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    #[test]
    fn ttl_decrement_matches_full_recompute() {
        for ttl in [2u8, 64, 128, 255] {
            let h = header(ttl);
            let old = u16::from_be_bytes([h[8], h[9]]);
            let new = u16::from_be_bytes([ttl - 1, h[9]]);
            let check = u16::from_be_bytes([h[10], h[11]]);
            let updated = replace_u16(check, old, new);
            assert_eq!(
                updated,
                u16::from_be_bytes(header(ttl - 1)[10..12].try_into().unwrap())
            );
            let mut out = h;
            out[8] = ttl - 1;
            out[10..12].copy_from_slice(&updated.to_be_bytes());
            assert_eq!(ipv4_header(&out), 0, "header must verify after the update");
        }
    }
}

//! 128-bit address encoding used by every map key: IPv6 as is, IPv4 as the IPv4-mapped
//! IPv6 address `::ffff:a.b.c.d`, so that one LPM trie and one endpoint map serve both
//! families. The agent refuses IPv6 CIDRs inside `::ffff:0:0/96` so the two never meet.

/// Leading bits shared by every mapped IPv4 address.
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

/// `::ffff:a.b.c.d`, built as one number: the XDP program's compiler then stores it as
/// words (ten zero bytes written one by one become a call to a byte loop).
#[inline(always)]
pub const fn from_v4(v4: [u8; 4]) -> [u8; 16] {
    ((0xffff_u128 << 32) | u32::from_be_bytes(v4) as u128).to_be_bytes()
}

#[inline(always)]
pub fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff
}

/// Clears every bit after the first `bits` (0..=128).
#[inline(always)]
pub fn mask(a: &[u8; 16], bits: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    let bits = if bits > 128 { 128 } else { bits };
    let full = (bits / 8) as usize;
    let mut i = 0;
    while i < full {
        out[i] = a[i];
        i += 1;
    }
    let rem = bits % 8;
    if rem != 0 && full < 16 {
        out[full] = a[full] & (0xffu8 << (8 - rem));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_v4() {
        let a = from_v4([192, 168, 1, 2]);
        assert!(is_v4_mapped(&a));
        assert_eq!(&a[12..], &[192, 168, 1, 2]);
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        assert!(!is_v4_mapped(&v6));
    }

    #[test]
    fn mask_bits() {
        let a = [0xffu8; 16];
        assert_eq!(mask(&a, 0), [0; 16]);
        assert_eq!(mask(&a, 128), a);
        let m = mask(&a, 13);
        assert_eq!(&m[..3], &[0xff, 0xf8, 0]);
        assert_eq!(mask(&a, 200), a);
    }
}

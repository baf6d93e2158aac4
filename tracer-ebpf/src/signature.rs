//! NAT-invariant packet signatures.
//!
//! SNAT/DNAT rewrite addresses, ports and checksums, but not the IPv4 ID, the IPv6 flow label,
//! L4 length, TCP seq/ack/flags/window or the first payload bytes. Hashing those gives the same
//! value for one packet at every hook of the node, so two sightings can be tied together, and a
//! different value for (almost) every other packet. The hash also drives sampling: the same
//! packet is sampled at every hook or at none.

/// Mixes one 64-bit word into the running hash (splitmix64 finaliser).
#[inline(always)]
pub fn mix(h: u64, v: u64) -> u64 {
    let mut z = h ^ v.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::mix;

    /// `mix(0, k · golden)` is the (k+1)-th output of splitmix64 seeded with 0; the values are
    /// those of the reference implementation (Vigna, splitmix64.c).
    #[test]
    fn mix_is_the_splitmix64_finaliser() {
        let golden = 0x9e37_79b9_7f4a_7c15u64;
        assert_eq!(mix(0, 0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(mix(0, golden), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(mix(0, golden.wrapping_mul(2)), 0x06c4_5d18_8009_454f);
    }
}

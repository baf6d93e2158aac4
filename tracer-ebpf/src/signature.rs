//! NAT-invariant packet signatures.
//!
//! SNAT/DNAT rewrite addresses, ports and checksums, but not the IPv4 ID, the IPv6 flow label,
//! L4 length, TCP seq/ack/flags/window or the first payload bytes. Hashing those gives the same
//! value for one packet at every hook of the node, so two sightings can be tied together, and a
//! different value for (almost) every other packet.
//!
//! The parser only packs those fields into three words ([`Invariants`]), which is nearly free.
//! Every packet needs a sampling decision, and one multiply over the folded words makes it:
//! the same packet is sampled at every hook or at none. The full hash (three rounds of mixing,
//! ~40 cycles of dependent multiplies) is computed only for the packets that need it: the
//! sampled ones, and captured ones.

/// A packet's NAT-invariant fields, packed. Equal for one packet at every hook of the node.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Invariants {
    /// IPv4: L4 length, IP id, fragment field, protocol, family. IPv6: L4 length, flow label,
    /// next header, family.
    pub l3: u64,
    /// TCP: seq and ack. UDP: the first 8 payload bytes. ICMP: sequence, type and code.
    pub l4: u64,
    /// TCP: window and flags; 0 otherwise.
    pub l4_extra: u64,
}

/// Fibonacci hashing's multiplier (2^64 / φ): the top bits of `x * K` depend on every bit of x.
pub const FIBONACCI: u64 = 0x9e37_79b9_7f4a_7c15;

impl Invariants {
    /// IPv4's `l3` word.
    #[inline(always)]
    pub fn v4_l3(l4_len: u64, id: u16, frag: u16, proto: u8) -> u64 {
        (l4_len << 48) | ((id as u64) << 32) | ((frag as u64) << 16) | ((proto as u64) << 8) | 4
    }

    /// IPv6's `l3` word.
    #[inline(always)]
    pub fn v6_l3(l4_len: u64, flow_label: u32, next: u8) -> u64 {
        (l4_len << 48) | ((flow_label as u64) << 16) | ((next as u64) << 8) | 6
    }

    /// A TCP segment's invariants.
    #[inline(always)]
    pub fn tcp(l3: u64, seq: u32, ack: u32, window: u16, flags: u8) -> Invariants {
        Invariants {
            l3,
            l4: ((seq as u64) << 32) | ack as u64,
            l4_extra: ((window as u64) << 8) | flags as u64,
        }
    }

    /// A UDP datagram's invariants (`head`: its first 8 payload bytes, as loaded).
    #[inline(always)]
    pub fn udp(l3: u64, head: u64) -> Invariants {
        Invariants { l3, l4: head, l4_extra: 0 }
    }

    /// Whether this packet is sampled under `mask` (a power of two minus one, at most 0xffff):
    /// the top 16 bits of one multiply over the folded words.
    #[inline(always)]
    pub fn sampled(&self, mask: u64) -> bool {
        let folded = self.l3 ^ self.l4 ^ self.l4_extra.rotate_left(29);
        (folded.wrapping_mul(FIBONACCI) >> 48) & mask == 0
    }

    /// The signature that ties a packet's sightings at two hooks (a 64-bit hash of every
    /// invariant field; the cheap fold above collides too easily for that).
    #[inline(always)]
    pub fn signature(&self) -> u64 {
        mix(mix(mix(0, self.l3), self.l4), self.l4_extra)
    }
}

/// Mixes one 64-bit word into the running hash (splitmix64 finaliser).
#[inline(always)]
pub fn mix(h: u64, v: u64) -> u64 {
    let mut z = h ^ v.wrapping_add(FIBONACCI);
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

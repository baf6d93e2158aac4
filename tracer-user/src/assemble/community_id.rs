//! Community ID v1 (https://github.com/corelight/community-id-spec): a flow hash any tool can
//! compute from the same 5-tuple, so that podtrace's flows join with those of other nodes'
//! agents, Zeek, Suricata or a packet capture.
use base64::Engine;
use sha1::{Digest, Sha1};
use tracer_common::{FAMILY_V4, PROTO_TCP, PROTO_UDP, Tuple};

const PROTO_SCTP: u8 = 132;

/// `1:<base64 of SHA-1>` of a TCP, UDP or SCTP tuple with seed 0; `None` for other protocols
/// (ICMP's needs the type and code, which podtrace does not keep).
pub fn community_id(t: &Tuple) -> Option<String> {
    if !matches!(t.proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) {
        return None;
    }
    let len = if t.family == FAMILY_V4 { 4 } else { 16 };
    let (src, dst) = (&t.src[..len], &t.dst[..len]);
    // The spec orders the endpoints so that both directions give the same ID.
    let ((a, pa), (b, pb)) = if (src, t.sport) <= (dst, t.dport) {
        ((src, t.sport), (dst, t.dport))
    } else {
        ((dst, t.dport), (src, t.sport))
    };
    let mut h = Sha1::new();
    h.update(0u16.to_be_bytes());
    h.update(a);
    h.update(b);
    h.update([t.proto, 0]);
    h.update(pa.to_be_bytes());
    h.update(pb.to_be_bytes());
    Some(format!("1:{}", base64::engine::general_purpose::STANDARD.encode(h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::addr;

    /// Vectors computed with the spec's reference implementation (PyPI `communityid` 1.5:
    /// `CommunityID().calc(FlowTuple.make_tcp(...))`), the first one also in the spec.
    #[test]
    fn matches_the_reference_implementation_in_both_directions() {
        let cases = [
            (PROTO_TCP, "128.232.110.120:34855", "66.35.250.204:80", "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
            (PROTO_UDP, "198.18.2.11:40000", "198.18.3.10:8080", "1:g4WhFgsgZBjO0PRA+mrbsM/sCyE="),
            (PROTO_TCP, "[2001:2::1:11]:40000", "[2001:2:0:3::10]:8080", "1:QXteI8GdPPKFEMOmUF9wEOSakWU="),
        ];
        for (proto, a, b, want) in cases {
            let (a, b) = (a.parse().unwrap(), b.parse().unwrap());
            assert_eq!(community_id(&addr::tuple(proto, a, b)).as_deref(), Some(want));
            assert_eq!(community_id(&addr::tuple(proto, b, a)).as_deref(), Some(want));
        }
    }
}

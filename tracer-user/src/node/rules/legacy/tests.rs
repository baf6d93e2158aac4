use super::*;

/// An x_tables entry: IP header match (destination, protocol), matches, target.
fn entry(dst: Option<([u8; 4], [u8; 4])>, proto: u16, matches: &[Vec<u8>], target: Vec<u8>) -> Vec<u8> {
    let mut e = vec![0u8; IPV4.entry_size];
    if let Some((addr, mask)) = dst {
        e[IPV4.dst..IPV4.dst + 4].copy_from_slice(&addr);
        e[IPV4.dmsk..IPV4.dmsk + 4].copy_from_slice(&mask);
    }
    e[IPV4.proto..IPV4.proto + 2].copy_from_slice(&proto.to_ne_bytes());
    for m in matches {
        e.extend(m);
    }
    let target_offset = e.len() as u16;
    e.extend(target);
    let next = e.len() as u16;
    e[IPV4.target_offset..IPV4.target_offset + 2].copy_from_slice(&target_offset.to_ne_bytes());
    e[IPV4.target_offset + 2..IPV4.target_offset + 4].copy_from_slice(&next.to_ne_bytes());
    e
}

/// `{ u16 size; char name[29]; u8 revision; data }`, padded to 8 bytes.
fn xt(name: &str, revision: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 32];
    v[2..2 + name.len()].copy_from_slice(name.as_bytes());
    v[31] = revision;
    v.extend(data);
    while !v.len().is_multiple_of(8) {
        v.push(0);
    }
    let size = v.len() as u16;
    v[..2].copy_from_slice(&size.to_ne_bytes());
    v
}

fn standard(verdict: i32) -> Vec<u8> {
    xt("", 0, &verdict.to_ne_bytes())
}

fn error(name: &str) -> Vec<u8> {
    let mut data = name.as_bytes().to_vec();
    data.resize(32, 0);
    xt("ERROR", 0, &data)
}

#[test]
fn a_nat_table_blob_gives_chains_jumps_comments_and_targets() {
    // POSTROUTING: jump AWS-SNAT-CHAIN-0, policy ACCEPT; AWS-SNAT-CHAIN-0: RETURN for
    // 198.18.0.0/16, SNAT to 198.18.1.10 --random-fully, the chain's own RETURN; table end.
    let mut comment = b"AWS, SNAT".to_vec();
    comment.resize(256, 0);
    let mut snat = 1u32.to_ne_bytes().to_vec();
    snat.extend((1u32 | 16).to_ne_bytes());
    snat.extend([198, 18, 1, 10, 198, 18, 1, 10, 0, 0, 0, 0]);
    let head = error("AWS-SNAT-CHAIN-0");
    let mut blob = Vec::new();
    let jump_at = blob.len();
    let jump_len = entry(None, 0, &[], standard(0)).len();
    let policy_at = jump_at + jump_len;
    let head_at = policy_at + entry(None, 0, &[], standard(-2)).len();
    let first_rule_at = head_at + entry(None, 0, &[], head.clone()).len();
    blob.extend(entry(None, 0, &[], standard(first_rule_at as i32)));
    blob.extend(entry(None, 0, &[], standard(-2)));
    blob.extend(entry(None, 0, &[], head));
    blob.extend(entry(Some(([198, 18, 0, 0], [255, 255, 0, 0])), 0, &[], standard(-5)));
    blob.extend(entry(None, 6, &[xt("comment", 0, &comment)], xt("SNAT", 0, &snat)));
    // libiptc's own RETURN at the end of the user chain.
    blob.extend(entry(None, 0, &[], standard(-5)));
    blob.extend(entry(None, 0, &[], error("ERROR")));
    let hooks = Hooks {
        valid: 1 << 4,
        entry: [0, 0, 0, 0, jump_at as u32],
        underflow: [0, 0, 0, 0, policy_at as u32],
    };
    let rules = parse_table(&blob, &hooks, false, "nat");
    assert_eq!(rules.len(), 3, "{rules:#?}");
    assert_eq!(
        (rules[0].chain.as_str(), &rules[0].action),
        ("POSTROUTING", &Action::Jump("AWS-SNAT-CHAIN-0".into()))
    );
    assert_eq!(rules[1].chain, "AWS-SNAT-CHAIN-0");
    assert_eq!(rules[1].dst, Some(("198.18.0.0".parse().unwrap(), 16)));
    assert_eq!(rules[1].action, Action::Return);
    assert_eq!(rules[2].comment.as_deref(), Some("AWS, SNAT"));
    assert_eq!(rules[2].proto, Some(6));
    let Action::Snat(t) = &rules[2].action else { panic!() };
    assert!(t.maps_addr("198.18.1.10".parse().unwrap()) && t.fully_random);
    assert!(rules.iter().all(|r| r.backend == Backend::IptablesLegacy));
    // A truncated blob gives a prefix of the rules, never a panic.
    for cut in 0..blob.len() {
        assert!(parse_table(&blob[..cut], &hooks, false, "nat").len() <= 4);
    }
}

//! Malformed and unusual packets through the real classifier with BPF_PROG_TEST_RUN: every
//! packet is passed on unchanged with TC_ACT_UNSPEC (TCX_NEXT), and exactly the expected
//! counters and flow entry change. The table (`test_frames::malformed`) is the one the parser's
//! host unit tests in tracer-ebpf run too.
use std::collections::HashSet;

use anyhow::Result;
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use podtrace::kernel::{
    attach::{AttachMode, Tracer},
    load::LoadOptions,
    maps,
};
use test_frames::malformed::cases;
use tracer_common::{FlowKey, counter, names};

#[test]
fn odd_packets_pass_unchanged_and_are_accounted_for() -> Result<()> {
    let cases = cases();
    assert!(cases.len() >= 30, "the issue asks for at least 30 cases");
    let tracer = Tracer::load(&LoadOptions::default(), AttachMode::Auto)?;
    let prog: &SchedClassifier = tracer.ebpf.program(names::PROG_TC_INGRESS).unwrap().try_into()?;
    let mut failures = Vec::new();
    for c in cases {
        let before = maps::read_counters(&tracer.ebpf)?;
        let keys_before: HashSet<FlowKey> =
            maps::read_flows(&tracer.ebpf)?.into_iter().map(|(k, _)| k).collect();
        let mut out = vec![0u8; c.frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&c.frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .map_err(|e| anyhow::anyhow!("{}: {e}: {:?}", c.name, std::error::Error::source(&e)))?;
        // TC_ACT_UNSPEC (= TCX_NEXT): the packet goes on; and it is byte for byte the same.
        if r.return_value as i32 != -1 {
            failures.push(format!("{}: verdict {}", c.name, r.return_value as i32));
        }
        if out[..r.data_size_out as usize] != c.frame[..] {
            failures.push(format!("{}: packet changed", c.name));
        }
        let after = maps::read_counters(&tracer.ebpf)?;
        let mut want = [0u64; counter::COUNT as usize];
        want[counter::PACKETS as usize] = 1;
        if c.entry.is_some() {
            want[counter::TRACKED as usize] = 1;
        }
        for i in &c.counters {
            want[*i as usize] += 1;
        }
        let got: Vec<u64> = after.iter().zip(before.iter()).map(|(a, b)| a - b).collect();
        // Samples of new flows are expected; they are not what this test is about.
        let mut got_cmp = got.clone();
        got_cmp[counter::SAMPLES as usize] = 0;
        if got_cmp != want {
            let diff: Vec<String> = counter::NAMES
                .iter()
                .enumerate()
                .filter(|(i, _)| got_cmp[*i] != want[*i])
                .map(|(i, n)| format!("{n}: got +{} want +{}", got_cmp[i], want[i]))
                .collect();
            failures.push(format!("{}: counters {}", c.name, diff.join(", ")));
        }
        let new: Vec<FlowKey> = maps::read_flows(&tracer.ebpf)?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !keys_before.contains(k))
            .collect();
        match c.entry {
            None if !new.is_empty() => failures.push(format!("{}: unexpected entry {:?}", c.name, new)),
            Some(entry) => {
                let want = entry.tuple();
                if new.len() != 1 || new[0].tuple != want {
                    failures.push(format!("{}: entry {:?}, want {:?}", c.name, new, want));
                }
            }
            None => {}
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}

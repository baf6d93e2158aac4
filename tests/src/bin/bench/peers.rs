//! Figure 8: podtrace's figures of this run beside the figures netobserv-ebpf-agent and Retina
//! publish. Theirs are quoted from their own sources (defaults, resource settings, maintainers'
//! measurements on their clusters), never measured here; the sources are listed with them.
use std::fmt::Write as _;

use super::{AGENT_MAX_FLOWS, Run, spread};

pub fn table(s: &mut String, run: &Run) {
    let a = &run.agent;
    let m = &run.million;
    // The column is the agent's: figure 3's row at the agent's sample rate.
    let k = &run.kernel_agent_rate;
    let extra_ns = spread(&k.podtrace).0 - spread(&k.empty).0;
    let _ = writeln!(s, "## 8. Beside netobserv-ebpf-agent and Retina\n");
    let _ = writeln!(
        s,
        "The podtrace column is this run's; the others are what those projects publish (not measured here; sources below).\n"
    );
    let _ = writeln!(
        s,
        "| | podtrace agent (this run, lab) | netobserv-ebpf-agent (published) | Retina agent (published) |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    let _ = writeln!(
        s,
        "| packets counted | every packet; 1 in 64 sampled for per-hop latency (`--sample-rate`) | 1 in 50 sampled (operator default `sampling: 50`) [1] | every packet (`dataSamplingRate: 1`) [4] |"
    );
    let _ = writeln!(
        s,
        "| kernel flow table | {AGENT_MAX_FLOWS} entries (DaemonSet `--max-flows`), full table counted, never evicted silently | `cacheMaxFlows` 120 000 (operator ≥ 1.11; 100 000 before) [1] | conntrack LRU hash of 262 144 entries [5] |"
    );
    let _ = writeln!(
        s,
        "| memory | RSS {:.1} MiB with {:.0} flows, {:.1} MiB with {:.0} flows tracked | limit 800 Mi by default, 1 600 Mi recommended at 250 nodes [1][2]; ~340 MB for all agent pods of a 6-node cluster at `cacheMaxFlows` 100 K [3] | request = limit 300 Mi (standard chart) [4] |",
        a.rss_100k_kb as f64 / 1024.0,
        a.flows_100k,
        m.rss_kb as f64 / 1024.0,
        m.flows,
    );
    let _ = writeln!(
        s,
        "| CPU | {:.2} % of a core at {:.0} kpps | request 100 m [1]; ~0.08 CPU for all agent pods of that 6-node cluster at ~3.5 K flows/s [3] | request = limit 500 m [4] |",
        a.cpu.percent_of_a_core(&run.clock),
        a.pps / 1e3,
    );
    let _ = writeln!(
        s,
        "| per-packet kernel cost | {extra_ns:.1} ns over an empty TC program (figure 3, at the agent's sample rate) | not published (1.8 release notes: kernel CPU −20 % against 1.7, relative only) [6] | not published |"
    );
    let million_mib = m.hwm_kb as f64 / 1024.0;
    let _ = writeln!(
        s,
        "\nWhere podtrace stands: holding {:.0} flows, its agent peaked at {million_mib:.1} MiB in this run, {:.0} % of netobserv's default memory limit (800 Mi) and {:.0} % of Retina's (300 Mi); it counts every packet where netobserv samples one in 50 by default. Its per-packet kernel cost is published (figure 3), theirs is not, so that comparison cannot be made. The peers do more per flow in their default configurations (netobserv exports every flow record; Retina's plugins run on every packet), and their figures come from real clusters, ours from the lab: read the table as orders of magnitude, not a race.\n",
        m.flows,
        million_mib / 800.0 * 100.0,
        million_mib / 300.0 * 100.0,
    );
    let _ = writeln!(
        s,
        "Sources: [1] netobserv/network-observability-operator `api/flowcollector/v1beta2/flowcollector_types.go` (agent resources, `sampling`, `cacheMaxFlows`), commit d438271659af. \
         [2] OpenShift docs, Network Observability, \"Resource recommendations\" (`modules/network-observability-resources-table.adoc`, openshift/openshift-docs). \
         [3] netobserv/documents `blogs/agent_metrics_perf/index.md` (netobserv.io, 2024-04-05), commit 189a1b9f0c44. \
         [4] microsoft/retina v1.2.6 `deploy/standard/manifests/controller/helm/retina/values.yaml`. \
         [5] microsoft/retina v1.2.6 `pkg/plugin/conntrack/_cprog/conntrack.h` (`CT_MAP_SIZE`). \
         [6] netobserv.io, \"Performance improvements in 1.8\" (2025-02-13).\n"
    );
}

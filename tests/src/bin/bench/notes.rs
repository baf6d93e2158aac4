//! The hand-written, dated section at the end of BENCHMARKS.md.
/// Hand-written and dated: the profile behind the figures, measured on builds and runs that are
/// not the one above. Never regenerated from a run; edit it (and its date) by hand.
pub(crate) const DEVELOPMENT_NOTES: &str = r#"## Notes from development (hand-written, dated, not regenerated)

**2026-12-03 (evening): hop events through a per-CPU log read in place.** The hop events
left the 1 MiB ring buffer for `HOP_LOG`, an mmapped array in which each CPU writes its own
records in turn (64–4096 per CPU, 2 MiB over the CPUs) and user space reads them where they
are, every 20 ms, counting what was overwritten before it got there (`hop_events_lost`). A
record is a sequence word with a busy bit, the event, and the sequence word again, all plain
stores on x86-64 (atomic exchanges on CPUs that do not keep stores in order). Gone per hop
event: the reserve and submit helper calls, the ring's spinlock, the read of the consumer
position (a line user space writes), the header exchange and the wake-up check. Same method as
the note below (two builds at once, chain order swapped every round), 4 pairs of rounds:

| candidate | ns per run, mean of pairs (pairs) |
|---|---|
| the hop log, against the ring buffer (43713f2) | −3.9 (−4.6, −1.0, −4.6, −5.2) |
| sampling at 1 in 16 with the hop log, against `--sample-rate 65536` | +3.9 (+5.7, +2.6, +3.1, +4.3) |

In these runs the build second in the chain measured ~6 ns per run more than the first.
Figure 3's own method (`--kernel-cost-only`), the same hour: the ring-buffer build 1.46×
(rounds 1.38–1.70), the hop-log build 1.40× (1.32–1.58) and 1.41× (1.36–1.60) in two runs.
The ratios of both builds were lower than in the full run at 198b87e (1.57×), so only
differences measured side by side say what the change did.

Throughput was checked the same way after the full run at ee0160f put podtrace at 0.970 of
untraced TCP: untraced, the ring-buffer build and the hop-log build in rotating order, 4 s of
iperf3 each, the hop-log build's figure divided by the ring-buffer build's of the same round.
UDP 64-byte packet rate: medians 0.945 (9 rounds, 7 below 1) and then 0.997 (12 rounds, range
0.910–1.132); TCP: 1.026 (9 rounds, 0.963–1.159). A hop-log build draining every 100 ms
instead of 20 ms against the 20 ms one: 0.999 (9 rounds). No difference shows above the
rounds' spread.

**2026-12-03 (afternoon): a parser for the common case, one counters lookup per run, and what
sampling costs.** Candidates are now compared the way figure 3 compares podtrace with the empty
program: two podtrace builds trace web-2 at once, on the same six hooks, and each round
divides run times measured over the same packets. The build attached second in a chain
measured ~12 ns per run more than the first in every round, whichever it was, so the builds
swap places every round and only the mean of each pair of rounds is used. The runs below have
two podtraces on every packet, so their ns are larger than figure 3's; read them as
differences between builds, 4–6 pairs of rounds each (the range is over the pairs). In the runs
of the parser and counters rows, of the sampling cut-off and of the sampling figures below,
two more copies of an older build, left attached by an interrupted run, sat ahead of both
builds in every chain; both ran behind them alike:

| candidate, against the build before it | ns per run saved, median of pairs (range) |
|---|---|
| the common case (untagged Ethernet, IPv4 without options or IPv6 without extension headers, TCP or UDP) parsed behind one bounds check with plain loads, everything else through the general parser, unchanged | 16.4 (13.4 – 22.1) |
| one `COUNTERS` entry per CPU, looked up once per run (was: one lookup per count)¹ | 3.1 (2.1 – 3.2) |
| `PACKETS` and `TRACKED` in one cache line (the counter index skewed by one) | −0.4 (−1.3 – +4.2): not kept |

¹ The build it was measured against still had four never-taken test branches (a load and a
compare each), so part of the 3.1 ns is theirs.

The general parser checks every read against the packet's end, reloads the packet pointers
for each, and keeps values on the stack for its helper-call fallback; the common case now
needs ~75 BPF instructions. A host test runs both parsers over every test frame, cut at every
length and with every byte corrupted (over 15 000 frames), and requires identical counters,
tuples and invariants. Cutting the build before these changes off after each stage in turn
(same method) put ~52 ns per run after the entry: parsing ~24, the flow cache and its counters
~12, sampling at 1 in 16 ~23. After them, sampling at 1 in 16 is the largest part: 20 ns per
run against `--sample-rate 65536` (about 320 ns per sampled run, both programs sampling the
same packets), and 14 of those 20 go away when the ring-buffer record is left out (the
sighting still found). That record (lock, header exchange, and two cache lines of a 1 MiB ring
that user space last read) is what is left to make cheaper; a per-CPU log user space reads in
place would avoid the lock and the exchange, and is not built.

Figure 3's own method (`--kernel-cost-only`), the same hour: the build before 1.76× (rounds
1.60–1.88) at 1 in 16 and 1.69× (1.54–1.89) at 1 in 64; with the parser 1.58× (1.49–1.78) and
1.42× (1.39–1.57); with both changes 1.60× (1.47–1.70) and 1.52× (1.37–1.78). The empty
program measured 70–78 ns per run that hour against 58 ns in the morning's full run: the
ratios move with the machine's state, which is why every one of them is taken within a run.

**2026-12-03: figure 3 measured on the same packets, and the sample rate's share.** Until
this run, each round measured podtrace for 2 s and then the empty program for 2 s; the
machine's drift between the two windows went straight into the round's ratio (rounds of
1.54–2.60× in the run of 1d61ad6). Both are now attached to the same six hooks at once, the
empty program first in the chain in even rounds and last in odd ones, and each round's ratio
divides run times measured over the same packets. Six runs of 11 rounds on c44c5ca's
programs, the same morning: 1.68× (rounds 1.64–1.84), 1.68× (1.61–1.91), 1.70× (1.58–1.90),
1.66× (1.58–1.83), 1.75× (1.61–1.96), 1.77× (1.64–1.84) at the default 1 in 16; with
`--sample-rate 64`, 1.61× (1.47–1.73) and 1.54× (1.51–1.74). The medians now stay within
1.66–1.77 from run to run where they used to move by ±0.3, and they still miss 1.5×: sampling 1 in 16 costs ~10 ns per run
(~320 ns per sampled packet), and the rest is ~38 ns after the entry.

A new profile of the same load (same method as the afternoon note of 2026-12-02): 19–22 % of
the programs' samples on their entry, 7–9 % on the first load of the `COUNTERS` line, 6–10 % on
the flow-cache slot's first word, and `bpf_ringbuf_submit` at ~6 % of the programs' own
samples (its `xchg` on the record header waits for the record's stores to lines that the
consumer last held). The kernel places an array's values 56 bytes into a cache line unless
the array is mappable, so a CPU's `PACKETS` and `TRACKED` counters sit in two lines and every
64-byte sighting slot straddles two. `COUNTERS` and `SIGHTINGS` made mappable (page-aligned)
measured 1.64×, 1.72× and 1.67× against the unchanged build's 1.66×, 1.75× and 1.77× in
interleaved runs: within the runs' spread, and a mappable array moves from the linear map to
4 KiB vmalloc pages, so it was not kept.

**2026-12-02 (late): a parser whose outputs are all defined, BPF CPU v3, and the ring
buffer's share.** The parser now writes its result through a reference and returns a plain
verdict (c2b05ec). With that change, a BPF CPU v3 build (ALU32/JMP32, `-C target-cpu=v3`,
built by hand because `aya_build` passes no extra flags) passes the verifier and could be
measured. A/B runs as in the next note (baseline − candidate, positive: the candidate is cheaper;
median over rounds, with the rounds' range):

| candidate | baseline | rounds | baseline − candidate, ns per run |
|---|---|---|---|
| the parser with a verdict and an out-parameter (committed) | the commit before | 18 | +2.7 (−14 to +30) |
| the same, built for BPF CPU v3 (JIT image 10.1 → 9.8 KB) | the parser above | 18 | −4.5 (−22 to +16) |
| no ring-buffer record (sightings still paired, nothing reserved) | the parser above | 11 | +5.7 (−4 to +18) |
| one `COUNTERS` lookup per run (a CPU's counters as one entry, each count a store at a constant offset) | the parser above | 26 | +2.3 (−52 to +36) |

Neither v3 nor the single lookup is kept: no gain stood out of the noise, and v3 would also
need our own cargo invocation for the eBPF crate. The baseline's median was 116 ns per run in
the first of these runs and 152 ns an hour later, on the same build. The ring-buffer record
(~6 ns per run) is the largest single piece measured so far, and the hop events need it. A new
profile (same method as the afternoon note) put ~29 % of both programs' samples on their first
instructions. The empty program pays that entry too: this kernel calls BPF programs through a
retpoline. An estimate from that share: ~20 ns of the empty program's ~67 ns per run is the
entry, the rest the dispatch and the statistics' own clock reads. For 1.5×, podtrace would have
~33 ns per run for everything after its entry; it spends ~49 ns.

**2026-12-02 (evening): the SYN flood's peak RSS, over its budget and back.** The run at
8d38360 measured 279.3 MiB against the 265 MiB that `user_space_budget` allots the DaemonSet's
flags, and an `--only agent` run the same hour 290.8 MiB (earlier runs: 217 and 234). The
agent's RSS logged at each stage of its polls put the jump inside the conntrack refresh. A full
dump of node-a's table, which the flood had filled, was inserted into the conntrack view before
the view was trimmed back to its 131 072 entries. The map grew to the dump's size for that
moment, and it kept that capacity afterwards. The view now stays within its cap while merging:
a new entry displaces the one seen longest ago, or is left out, and both are counted in
`conntrack_evicted`. With that change, an `--only agent` run gave 214.9 MiB; the run above gives
the figure in its table.

**2026-12-02 (evening): candidates that did not move the figure.** A/B runs of whole
`podtrace --pod web-2` builds under the benchmark's UDP load (9 rounds, builds interleaved with
the order rotated, run time per run summed over both TC programs from
`kernel.bpf_stats_enabled`); the figure is the median over rounds of the baseline's ns per run
minus the candidate's (positive: the candidate is cheaper), with the rounds' range:

| candidate | baseline − candidate, ns per run |
|---|---|
| no per-packet counters at all (`PACKETS`, `TRACKED` not counted) | −5.4 (−71 to +13) |
| flow-cache slot count and sample mask as constants (no `.rodata` load on the slot's address) | +1.2 (−26 to +10) |
| `cold_path()` on every rare branch, so that the hot path is laid out contiguously | −2.5 (−17 to +10) |
| IPv6 parsing removed (JIT image 9.7 → 7.4 KB per program) | −0.2 (−6 to +9) |
| sampling off (`--sample-rate 65536`, same build; 7 rounds) against the default 1 in 16 | +10.5 (−8 to +22) |

A `perf` profile of the same load (cpu-clock at 20 kHz) put 25 % of the programs' samples on
their first instructions, 9 % of the ingress program's on the first load of the `COUNTERS`
line, 8–10 % on the flow-cache slot's first word and 5 % of the ingress program's on the
`.rodata` load; removing the counters or the
`.rodata` load did not lower the run time, so those stalls overlap with others rather than add.
The hints did not make the hot path contiguous (it still touched 49 distinct 64-byte lines of
the JIT image), and the smaller image measured the same, so code size is not where the time
goes either. Only sampling is a measurable piece (~10 ns per run at the default rate, which
stays: the trace's hop latencies need it). Two builds could not be measured: BPF CPU v3
(ALU32/JMP32) and a cold hint on the non-linear read fallback; in both, LLVM copied a register
that is undefined on an error path (the payload of `Result<Parsed, u32>`), and the verifier
rejects that read (`R1 !read_ok`). Measuring them first needs a parser whose outputs are
defined on every path. The baseline's own median moved between 114 and 137 ns per run from one
A/B run to the next on this day: more than the ~18 ns the 1.5× target still needs.

**2026-12-02 (afternoon): where the kernel time went, and what came off.** The stage profile
below says *what* costs, not *why*; this time the programs were profiled under the benchmark's
UDP load: `perf record -a -e cpu-clock` (this VM has no hardware PMU), samples inside the
JITed programs mapped to offsets of their JIT image (dumped with `BPF_OBJ_GET_INFO_BY_FD`,
disassembled with `objdump`). Under real traffic the warm-cache instruction count matters
little (a BPF_PROG_TEST_RUN loop of the same packet: ~21 ns over the empty program); the time
sits on loads that miss, one per distinct cache line or page the program touches, because the
network stack between two hooks evicts whatever is not touched on every packet. In the
committed programs before this round, the samples piled up on:

| where | share of the ingress program's samples | change |
|---|---|---|
| the sighting slot of a sampled packet (8 192 slots, 512 KiB per CPU, random by signature) | ~20 % (two misses: per-CPU array pointer table, then the slot) | `SIGHTINGS`: each CPU's last 8 ingress sightings written in turn (512 bytes per CPU, stays cached), the egress hook takes the newest with its signature; a plain array with a CPU stride, no pointer table |
| `COUNTERS[PACKETS]`, the first access (per-CPU array: pointer table, then the value) | ~14 % | a plain array, 32 entries per CPU: one cache line |
| `skb->dev->ifindex`: the device struct's line | ~6 % | at an ingress hook the skb's own `skb_iif` (set just before the hook) |
| loading the key as words right after the parser's 1-, 2- and 4-byte stores (no store-to-load forwarding) | ~7 % | each key word written with one 8-byte store |
| the flow-cache slot | ~13 % | (unchanged: the one line a packet must touch) |
| the program's entry | ~12 % | (unchanged: the empty program pays it too) |

Also: the sampling decision is one multiply over the packed NAT-invariant fields (the
three-round hash is computed only for sampled packets); the flow-cache slot hash is one
multiply; the ring buffer's fill level is read every 64th hop event instead of every event.
Measured by hand in A/B runs (the benchmark's UDP load, the two builds interleaved with the
order rotated, run time per run from `kernel.bpf_stats_enabled`, which includes the stats' own
~60 ns):
11 rounds, the commit before this round against this round's: median 162.6 ns per run
(148–191) against 137.5 (119–164); per round, the difference has a median of 29 ns (−10 to
66). Tried and dropped: the hot path's rare branches (new flows, sampling) as BPF
functions of their own, to shrink the hot code (no gain measured, and LLVM then left an
uninitialised register copy on one path that the verifier rejects). Left: the flow-cache slot
and the entry, and the noise: the same build measures ±15 ns from one run of 11 rounds to the
next on this machine, more than any single change left to make.

**2026-12-02: the kernel cost on this machine, stage by stage.** `cargo xtask bench --only
kernel-cost` (11 rounds each) on builds with one stage cut at a time, same machine, same day;
not figures of the run above. The program as committed: 158–159 ns per run against an empty
program's 62–67 ns (2.2–2.5×). The commit whose run gave 1.93× on 2026-11-22 (b242110),
rebuilt and measured here the same hour: 161 ns, 2.47×. The code did not regress; this machine
runs the same program ~30 ns slower than that day's. Cumulative stages:

| build | ns per run | ratio |
|---|---|---|
| count the packet, return | 73 | 1.12× |
| parse (key zeroed, frame classified), return | 104 | 1.62× |
| + count in the flow cache / table, no sampling beyond each flow's first packet | 129 | 2.11× |
| + sampling 1 in 16 without the ring-buffer record | 141 | 2.09× |
| + the ring-buffer record (as committed) | 158 | 2.23× |

Candidates measured and not kept: a parser specialised for Ethernet + IPv4/IPv6 without
options + TCP/UDP, one bounds check for the whole window and constant offsets everywhere, the
general parser out of line (158.2 against 159.4 ns: within noise; the reads' bounds checks
are not where the time goes); a sightings table of 1 024 slots per CPU instead of 8 192 (152
against 158 ns, within the rounds' spread). What is left is spread over every stage: parsing
alone already measures 1.6×, above the 1.5× target, and sampling at the default 1 in 16 costs
~30 ns amortized (its clock read, sightings slot and ring-buffer record are several hundred ns
per sampled packet).

**2026-11-22: how the earlier figures came down** (commits 483c75a to b242110). With a lookup
in the per-CPU flow hash table for every packet (48-byte key: hash, bucket walk, key compare,
per-CPU value) counting cost ~100 ns and the ratio was 3×; a per-CPU, direct-mapped flow cache
(an inlined array access and a six-word compare) took it to 2.3×, the coarse clock read (a
helper call, ~20 ns) being the largest piece left; reading that clock only when jiffies moved (a
load the JIT inlines; the coarse clock changes only then) brought it under 2× (1.93× in the run
of b242110, on that day's machine). The table takes only a flow's first packet on each CPU and
flows whose slot is taken. Done before: direct packet access with wide loads instead of
`bpf_skb_load_bytes`, the address filter consulted only for new flows, per-CPU direct-mapped
sightings instead of an LRU hash, batched ring-buffer wake-ups, no `memset`/`memmove` calls.

**Attach latency.** Veths created at once are attached at ~15 ms each because the kernel
serializes tcx attachment: two links per veth, each waiting for an RCU grace period under RTNL,
not podtrace (200 veths took 5 950 ms in the run of b242110).
"#;

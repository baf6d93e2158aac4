//! `podtrace agent`: the node agent of the DaemonSet. Traces every pod veth and every ENI,
//! follows pods as they come and go (netlink link events, periodic reconcile), names them from
//! the Kubernetes API or a pods file, and serves flows and metrics on a read-only API.
//!
//! Memory is bounded: flows idle longer than `--idle-timeout` expire (their counts move into
//! per-pod totals), at most `--max-tracked-flows` flows are kept (oldest evicted, counted), the
//! kernel table holds `--max-flows` entries (map-full counted), and the hop-event and conntrack
//! buffers are capped.
pub mod api;
pub mod auth;
pub mod capture_route;
pub mod client;
pub mod export_rounds;
pub mod flows;
pub mod listener;
pub mod metrics;
pub mod node_api;
pub mod otlp;
pub mod otlp_record;
pub mod poll_times;
pub mod socket;
pub mod state;
pub mod tls;
pub mod totals;
pub mod tracker;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;

use super::options::{deadline_after, parse_bytes, parse_duration};
use crate::{
    assemble::{
        context::NodeContext,
        session::{Session, SessionOptions, Wake},
    },
    kernel::{
        attach::AttachMode,
        leftovers,
        load::{self, CaptureLoad, SampleRate},
        preflight,
    },
    node::{inventory::Inventory, link_events, pod_source, rules::Ruleset},
};
use poll_times::PollTimes;
use state::{Interner, Shared, State};
use tracker::Agent;

#[derive(Args, Clone, Debug)]
pub struct AgentArgs {
    /// Unix socket of the API (mode 0600).
    #[arg(long, default_value = "/run/podtrace/agent.sock")]
    pub socket: PathBuf,
    /// Also serve the API on this TCP address (e.g. 127.0.0.1:9090). Off unless given.
    /// Addresses other than loopback need --authenticate (or --insecure-listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Allow --listen on a non-loopback address: every flow is served, unauthenticated, to
    /// anyone who can reach it.
    #[arg(long, requires = "listen")]
    pub insecure_listen: bool,
    /// Pods from a `kubectl get pods -A -o json` file (a regular file of at most 1 GiB, re-read
    /// when it changes) instead of the API.
    #[arg(long, value_name = "FILE")]
    pub pods_file: Option<PathBuf>,
    /// This node's name, to watch its pods (the DaemonSet passes it from the downward API);
    /// with --pods-file, only this node's pods are kept from the file.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Flows without a packet for this long expire.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// At most this many flows are tracked (1 to 1 000 000); the oldest are evicted (and
    /// counted) beyond it. The agent's memory grows with it (see deploy/README.md).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_tracked_flows: u32,
    /// Capacity of the kernel flow table (per flow, interface and hook). Its memory is taken
    /// at start for every CPU: refused beyond 1 GiB.
    #[arg(long, default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(16..))]
    pub max_flows: u32,
    /// Use these interfaces as ENIs instead of discovering them.
    #[arg(long = "eni", value_name = "IFACE")]
    pub enis: Vec<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub attach_mode: AttachMode,
    /// Memory budget of the kernel's flow cache over all CPUs (fewer slots per CPU on big
    /// nodes): bytes, or with KiB/MiB/GiB.
    #[arg(long, default_value = "16MiB", value_parser = parse_bytes)]
    pub flow_cache_bytes: u64,
    /// Sample one packet in N (a power of two) for per-hop latency.
    #[arg(long, default_value = "64")]
    pub sample_rate: SampleRate,
    /// How often flows are read from the kernel and assembled. Stretched while polls are long
    /// (many flows), so that polling never takes more than 10 % of a core.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Load the programs without their capture path: no `GET /capture`, and not even the one
    /// array lookup per packet an idle capture path costs.
    #[arg(long)]
    pub no_capture: bool,
    /// Safety net: full re-scan of links and rules this often.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub reconcile_interval: Duration,
    #[command(flatten)]
    pub auth: auth::AuthArgs,
    #[command(flatten)]
    pub otlp: otlp::OtlpArgs,
}

/// User-space memory the agent needs with `max_tracked_flows` and a kernel flow table of
/// `max_flows` entries, as measured on the lab: a base for the runtime, BTF offsets, buffers
/// and a conntrack read at its cap; per tracked flow its summary and its share of a poll's
/// assembly (tests/tests/hostile.rs: 94 MiB peak with 50 000 flows and ten clients that never
/// read `/flows`); per kernel-table entry its share of a poll over a full table (a SYN flood
/// through the lab with the DaemonSet's flags filled the 262 144 entries and node-a's
/// conntrack: 234 MiB peak, where tracked flows alone account for 137 MiB).
pub fn user_space_budget(max_tracked_flows: u32, max_flows: u32) -> u64 {
    (64 << 20) + max_tracked_flows as u64 * 1536 + max_flows as u64 * 512
}

/// Everything the agent's memory cgroup is charged with on a node of `cpus` CPUs: user space
/// and the kernel maps (created by the agent, so charged to its container).
pub fn memory_budget(
    max_tracked_flows: u32,
    max_flows: u32,
    flow_cache_bytes: u64,
    capture: Option<CaptureLoad>,
    cpus: usize,
) -> u64 {
    user_space_budget(max_tracked_flows, max_flows)
        + load::flow_table_bytes(max_flows, cpus)
        + load::other_maps_bytes(cpus, flow_cache_bytes, capture)
}

/// A `GET /flows` asking the agent loop, which owns the data flows are built from, for a view
/// of them to assemble elsewhere.
pub struct ViewRequest {
    pub reply: tokio::sync::oneshot::Sender<flows::FlowView>,
}

/// Starts following the pods' metadata: a pods file, the API (this node's pods), or nothing.
async fn pod_source(args: &AgentArgs) -> Result<pod_source::PodCache> {
    let cache = pod_source::PodCache::default();
    match (&args.pods_file, &args.node_name) {
        (Some(f), node) => {
            pod_source::load_file(&cache, f, node.as_deref())?;
            pod_source::follow_file(f.clone(), node.clone(), cache.clone())?;
        }
        (None, Some(node)) => {
            let client = kube::Client::try_default().await.context(
                "no --pods-file and no Kubernetes API reachable (in-cluster config or KUBECONFIG)",
            )?;
            let (node, c) = (node.clone(), cache.clone());
            tokio::spawn(async move {
                if let Err(e) = pod_source::follow_api(client, node, c).await {
                    log::error!("pod watch ended: {e:#}");
                }
            });
        }
        (None, None) => log::warn!("no --pods-file and no NODE_NAME: pods are named by IP"),
    }
    Ok(cache)
}

/// The API's listeners, bound before anything is attached: a busy socket or address is
/// refused while nothing has been touched yet.
struct Listeners {
    unix: tokio::net::UnixListener,
    _socket: socket::OwnSocket,
    tcp: Option<tokio::net::TcpListener>,
}

async fn bind_listeners(args: &AgentArgs) -> Result<Listeners> {
    let access =
        args.listen.map(|a| api::tcp_access(a, args.insecure_listen, args.auth.authenticate)).transpose()?;
    let (unix, own) = socket::bind(&args.socket)?;
    unix.set_nonblocking(true)?;
    let unix = tokio::net::UnixListener::from_std(unix)?;
    let tcp = match args.listen {
        Some(addr) => {
            Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?)
        }
        None => None,
    };
    if access == Some(api::TcpAccess::Insecure) {
        log::warn!(
            "--insecure-listen: every flow is served unauthenticated on {} to anyone who can reach it",
            args.listen.map(|a| a.to_string()).unwrap_or_default()
        );
    }
    Ok(Listeners { unix, _socket: own, tcp })
}

pub async fn run(args: AgentArgs) -> Result<()> {
    // Everything that can be refused is checked, and the API's socket taken, before anything
    // is loaded or attached.
    load::check_flow_table(args.max_flows)?;
    preflight::check_privileges()?;
    preflight::check_btf()?;
    let listeners = bind_listeners(&args).await?;
    let fd_limit = listener::raise_fd_limit();
    let cap = listener::connection_cap(fd_limit, 1 + listeners.tcp.is_some() as usize);
    let inv = Inventory::read(&args.enis)?;
    if inv.enis.is_empty() {
        anyhow::bail!("no ENI found: no interface carries a VPC address on this node (use --eni IFACE)");
    }
    let cache = pod_source(&args).await?;
    // Before attaching anything: a bad export or auth configuration is a one-line error.
    let protection = match args.auth.authenticate {
        true => Some(auth::Protection::new(&args.auth, args.node_name.clone()).await?),
        false => None,
    };
    let export = otlp::OtlpExport::start(&args.otlp, args.node_name.clone())?;
    let opts = SessionOptions {
        sample_rate: args.sample_rate,
        max_flows: args.max_flows,
        attach_mode: args.attach_mode,
        flow_cache_bytes: args.flow_cache_bytes,
        filter: None,
        capture: (!args.no_capture).then_some(CaptureLoad { ring_bytes: CaptureLoad::DEFAULT_RING_BYTES }),
    };
    let session = Session::load(&opts)?;
    leftovers::clean(&tracker::wanted_links(&inv));
    // Subscribe before the first scan so that no link created in between is missed.
    let (tx, mut link_events) = tokio::sync::mpsc::unbounded_channel();
    link_events::watch(tx)?;
    let state: Shared = Arc::new(RwLock::new(State::default()));
    let ctx = Arc::new(NodeContext::new(&inv, Ruleset::read()));
    let mut agent = Agent {
        args: args.clone(),
        session,
        cache,
        state: state.clone(),
        ctx,
        inv,
        pods: Vec::new(),
        interner: Interner::default(),
        last: None,
        totals: Default::default(),
        blind: Default::default(),
        export: None,
    };
    if let Some(e) = export {
        state.write().expect("state").export = Some(e.counters.clone());
        agent.export = Some(export_rounds::ExportRounds::new(e));
    }
    let (mut captures, mut capture_rx) = capture_route::Captures::new(&mut agent, !args.no_capture)?;
    let mut capture_tick = tokio::time::interval(Duration::from_millis(100));
    agent.reconcile()?;
    // A first snapshot before the API answers: /healthz is true from the first request on.
    agent.poll()?;
    state.write().expect("state").poll_interval_seconds = args.poll_interval.as_secs_f64();
    // Signals are caught from here on, before the line that tells the world we run.
    let mut events = agent.session.events(None)?;

    let (views_tx, mut views_rx) = tokio::sync::mpsc::channel::<ViewRequest>(16);
    let node = node_api::NodeSource { enis: args.enis.clone(), cache: agent.cache.clone() };
    let api_state = api::ApiState::new(state.clone(), views_tx, node);
    let app = api::router(api_state.clone());
    // Packet payloads (`/capture`) only on the unix socket.
    let unix_app = app.clone().merge(capture_route::router());
    tokio::spawn(listener::serve(listeners.unix, unix_app, cap, api_state.counters.unix.clone()));
    if let Some(tcp) = listeners.tcp {
        let counters = api_state.counters.tcp.clone();
        match &protection {
            Some(p) => {
                tokio::spawn(listener::serve(
                    tls::accepting(tcp, p.tls.clone()),
                    p.guard(app),
                    cap,
                    counters,
                ));
            }
            None => {
                tokio::spawn(listener::serve(tcp, app, cap, counters));
            }
        }
    }
    let scheme = if protection.is_some() { "https (authenticated)" } else { "http" };
    eprintln!(
        "podtrace: agent tracing {} interfaces, API on {}{}",
        agent.session.attached().count(),
        args.socket.display(),
        args.listen.map(|a| format!(" and {scheme}://{a}")).unwrap_or_default()
    );
    let mut next_poll = deadline_after(args.poll_interval);
    let mut poll_times = PollTimes::default();
    let mut last_reconcile = Instant::now();
    loop {
        tokio::select! {
            wake = events.next() => match wake {
                Wake::Stop => break,
                Wake::Hops | Wake::Tick => agent.session.drain_hops(),
            },
            Some(req) = views_rx.recv() => {
                let _ = req.reply.send(agent.view());
            }
            Some(req) = capture_rx.recv() => captures.start(&mut agent, req),
            _ = capture_tick.tick(), if captures.running() => captures.tick(&mut agent),
            Some(ev) = link_events.recv() => {
                // Take every event already queued: a burst of new pods is attached together.
                let mut batch = vec![ev];
                while let Ok(more) = link_events.try_recv() {
                    batch.push(more);
                }
                agent.on_links(batch);
            }
            _ = tokio::time::sleep_until(next_poll) => {
                if last_reconcile.elapsed() >= args.reconcile_interval {
                    last_reconcile = Instant::now();
                    if let Err(e) = agent.reconcile() {
                        log::warn!("reconcile: {e:#}");
                    }
                }
                let started = Instant::now();
                if let Err(e) = agent.poll() {
                    log::warn!("poll: {e:#}");
                }
                let took = started.elapsed();
                let interval = poll_times.next_interval(args.poll_interval, took);
                next_poll = deadline_after(interval);
                let mut st = state.write().expect("state");
                st.poll_seconds = took.as_secs_f64();
                st.poll_interval_seconds = interval.as_secs_f64();
            }
        }
    }
    eprintln!("podtrace: agent stopping, detaching");
    Ok(())
}

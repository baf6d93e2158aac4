//! `podtrace agent`: the node agent of the DaemonSet. Traces every pod veth and every ENI,
//! follows pods as they come and go (netlink link events, periodic reconcile), names them from
//! the Kubernetes API or a pods file, and serves flows and metrics on a read-only API.
//!
//! Memory is bounded: flows idle longer than `--idle-timeout` expire (their counts move into
//! per-pod totals), at most `--max-tracked-flows` flows are kept (oldest evicted, counted), the
//! kernel table holds `--max-flows` entries (map-full counted), and the hop-event and conntrack
//! buffers are capped.
pub mod api;
pub mod capture_route;
pub mod client;
pub mod metrics;
pub mod poll_times;
pub mod state;
pub mod tracker;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;

use super::options::parse_duration;
use crate::{
    assemble::{
        context::NodeContext,
        session::{Session, SessionOptions, Wake},
    },
    kernel::{
        attach::AttachMode,
        leftovers,
        load::{CaptureLoad, SampleRate},
        preflight,
    },
    node::{inventory::Inventory, link_events, pod_source, pods, rules::Ruleset},
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
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Pods from a `kubectl get pods -A -o json` file (re-read when it changes) instead of the API.
    #[arg(long, value_name = "FILE")]
    pub pods_file: Option<PathBuf>,
    /// This node's name, to watch its pods (the DaemonSet passes it from the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Flows without a packet for this long expire.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// At most this many flows are tracked; the oldest are evicted (and counted) beyond it.
    #[arg(long, default_value_t = 50_000)]
    pub max_tracked_flows: usize,
    /// Capacity of the kernel flow table (per flow, interface and hook).
    #[arg(long, default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(16..))]
    pub max_flows: u32,
    /// Use these interfaces as ENIs instead of discovering them.
    #[arg(long = "eni", value_name = "IFACE")]
    pub enis: Vec<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub attach_mode: AttachMode,
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
}

/// A `GET /flows` for the agent loop, which owns the data flows are built from.
pub struct FlowsRequest {
    pub query: api::FlowQuery,
    pub reply: tokio::sync::oneshot::Sender<String>,
}

/// Starts following the pods' metadata: a pods file, the API (this node's pods), or nothing.
async fn pod_source(args: &AgentArgs) -> Result<pod_source::PodCache> {
    let cache = pod_source::PodCache::default();
    match (&args.pods_file, &args.node_name) {
        (Some(f), _) => {
            cache.replace(pods::load_file(f)?);
            tokio::spawn(pod_source::follow_file(f.clone(), cache.clone()));
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

pub async fn run(args: AgentArgs) -> Result<()> {
    preflight::check_privileges()?;
    preflight::check_btf()?;
    let inv = Inventory::read(&args.enis)?;
    if inv.enis.is_empty() {
        anyhow::bail!("no ENI found: no interface carries a VPC address on this node (use --eni IFACE)");
    }
    let cache = pod_source(&args).await?;
    let opts = SessionOptions {
        sample_rate: args.sample_rate,
        max_flows: args.max_flows,
        attach_mode: args.attach_mode,
        filter: None,
        capture: (!args.no_capture).then_some(CaptureLoad { ring_bytes: CaptureLoad::DEFAULT_RING_BYTES }),
    };
    let session = Session::load(&opts)?;
    leftovers::clean(&tracker::wanted_links(&inv));
    // Subscribe before the first scan so that no link created in between is missed.
    let (tx, mut link_events) = tokio::sync::mpsc::unbounded_channel();
    link_events::watch(tx)?;
    let state: Shared = Arc::new(RwLock::new(State::default()));
    let ctx = NodeContext::new(&inv, Ruleset::read());
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
        blind: Default::default(),
    };
    let (mut captures, mut capture_rx) = capture_route::Captures::new(&mut agent, !args.no_capture)?;
    let mut capture_tick = tokio::time::interval(Duration::from_millis(100));
    agent.reconcile()?;
    // A first snapshot before the API answers: /healthz is true from the first request on.
    agent.poll()?;
    state.write().expect("state").poll_interval_seconds = args.poll_interval.as_secs_f64();

    let (flows_tx, mut flows_rx) = tokio::sync::mpsc::channel::<FlowsRequest>(16);
    let api_state = api::ApiState { state: state.clone(), flows: flows_tx };
    api::serve_unix(&args.socket, api_state.clone()).await?;
    let _socket_file = api::SocketFile(args.socket.clone());
    if let Some(addr) = args.listen {
        api::serve_tcp(addr, api_state).await?;
    }
    // Signal handlers before the readiness line (a script may signal at once).
    let mut events = agent.session.events(None)?;
    eprintln!(
        "podtrace: agent tracing {} interfaces, API on {}{}",
        agent.session.attached().count(),
        args.socket.display(),
        args.listen.map(|a| format!(" and http://{a}")).unwrap_or_default()
    );
    let mut next_poll = tokio::time::Instant::now() + args.poll_interval;
    let mut poll_times = PollTimes::default();
    let mut last_reconcile = Instant::now();
    loop {
        tokio::select! {
            wake = events.next() => match wake {
                Wake::Stop => break,
                Wake::Hops | Wake::Tick => agent.session.drain_hops(),
            },
            Some(req) = flows_rx.recv() => {
                let _ = req.reply.send(agent.answer(&req.query));
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
                next_poll = tokio::time::Instant::now() + interval;
                let mut st = state.write().expect("state");
                st.poll_seconds = took.as_secs_f64();
                st.poll_interval_seconds = interval.as_secs_f64();
            }
        }
    }
    eprintln!("podtrace: agent stopping, detaching");
    Ok(())
}

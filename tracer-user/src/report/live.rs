//! What `podtrace trace` prints while it runs and when it ends, by output and terminal:
//!
//! * a terminal on stdin and stdout, `-o table`: the live view ([`super::tui`]), then the
//!   plain summary once the terminal is given back;
//! * `-o table` elsewhere (pipe, file): the plain summary of the paths every `--interval` and
//!   at the end (`--group-by flow`: one line per flow);
//! * `-o json`: one object per flow (the contract) or, with `--group-by path`, per path, every
//!   `--interval` and at the end.
//!
//! The diagram files are drawn from the final paths.
use std::{
    io::{self, IsTerminal, Write},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{
    diagram::{self, NodePicture},
    group::{GroupBy, GroupOptions, PathGroup, RateMeter, group},
    json::FlowReport,
    path_json, path_text,
    table::{self, Format, Style},
    tui::{Control, Status, Tui},
};
use crate::assemble::model::Flow;

/// The live view refreshes this often.
const TUI_REFRESH: Duration = Duration::from_secs(1);

/// Where the path diagram goes when the trace ends.
#[derive(Clone, Debug, Default)]
pub struct DiagramFiles {
    pub html: Option<PathBuf>,
    pub svg: Option<PathBuf>,
    pub node: NodePicture,
}

pub struct LiveOptions {
    pub format: Format,
    pub group_by: GroupBy,
    /// Plain and JSON output: also print every `interval` (zero: only at the end).
    pub interval: Duration,
    /// `default/web-2`
    pub pods: String,
    /// `eth0, eth1, eni9fb0db7f13e`
    pub interfaces: String,
    pub start_ms: u64,
    pub diagram: DiagramFiles,
}

pub struct LiveOutput {
    opts: LiveOptions,
    tui: Option<Tui>,
    meter: RateMeter,
    last: Instant,
    style: Style,
    started: Instant,
}

/// Whether the live view can run: a terminal to draw on and one to read keys from.
pub fn on_terminal() -> bool {
    io::stdout().is_terminal() && io::stdin().is_terminal()
}

impl LiveOutput {
    /// Starts the output; takes over the terminal for the live view when there is one.
    pub fn start(opts: LiveOptions) -> Result<LiveOutput> {
        let tui = if opts.format == Format::Table && on_terminal() {
            let colour = std::env::var_os("NO_COLOR").is_none();
            let mut tui = Tui::enter(colour).context("starting the live view")?;
            let title = format!("{} on {}", opts.pods, opts.interfaces);
            tui.update(Vec::new(), Status { title, now_ms: opts.start_ms, ..Default::default() })?;
            Some(tui)
        } else {
            None
        };
        let now = Instant::now();
        Ok(LiveOutput {
            meter: RateMeter::starting_at(opts.start_ms),
            opts,
            tui,
            last: now,
            style: Style::detect(),
            started: now,
        })
    }

    /// Whether a snapshot is wanted now (so the caller polls only when it is).
    pub fn due(&self, now: Instant) -> bool {
        let every = if self.tui.is_some() { TUI_REFRESH } else { self.opts.interval };
        !every.is_zero() && now.duration_since(self.last) >= every
    }

    /// The user's next key in the live view; never returns without one.
    pub async fn next_input(&mut self) -> io::Result<Control> {
        match self.tui.as_mut() {
            Some(t) => t.next_input().await,
            None => std::future::pending().await,
        }
    }

    /// A remark for the user: above the live view's footer, else on stderr.
    pub fn note(&mut self, note: String) -> io::Result<()> {
        match self.tui.as_mut() {
            Some(t) => t.note(note),
            None => {
                eprintln!("{note}");
                Ok(())
            }
        }
    }

    fn paths(&mut self, flows: &[Flow], by: GroupBy, now_ms: u64) -> Vec<PathGroup> {
        let mut groups = group(flows, &GroupOptions::new(by, now_ms));
        self.meter.measure(&mut groups, now_ms);
        groups
    }

    fn heading(&self) -> String {
        format!("paths of {} after {:.0} s", self.opts.pods, self.started.elapsed().as_secs_f64())
    }

    /// Prints (or draws) a snapshot of the flows.
    pub fn refresh(&mut self, flows: &[Flow], losses: Vec<(&'static str, u64)>, now_ms: u64) -> Result<()> {
        self.last = Instant::now();
        let by = self.opts.group_by;
        if self.tui.is_some() {
            let groups = self.paths(flows, by, now_ms);
            let title = format!("{} on {}", self.opts.pods, self.opts.interfaces);
            if let Some(t) = self.tui.as_mut() {
                t.update(groups, Status { title, losses, now_ms, notes: t.notes() })?;
            }
            return Ok(());
        }
        self.print(flows, now_ms)
    }

    fn print(&mut self, flows: &[Flow], now_ms: u64) -> Result<()> {
        let mut out = io::stdout().lock();
        match (self.opts.format, self.opts.group_by) {
            (Format::Json, GroupBy::Flow) => {
                let reports: Vec<FlowReport> = flows.iter().map(FlowReport::from).collect();
                table::json_lines(&mut out, &reports)?;
            }
            (Format::Json, GroupBy::Path) => {
                let groups = self.paths(flows, GroupBy::Path, now_ms);
                path_json::json_lines(&mut out, &groups)?;
            }
            (Format::Table, GroupBy::Flow) => {
                let reports: Vec<FlowReport> = flows.iter().map(FlowReport::from).collect();
                table::table(&mut out, &reports, self.style)?;
                out.flush()?;
            }
            (Format::Table, GroupBy::Path) => {
                let groups = self.paths(flows, GroupBy::Path, now_ms);
                let heading = self.heading();
                path_text::write_summary(&mut out, &heading, &groups, now_ms)?;
            }
        }
        Ok(())
    }

    /// The end: gives the terminal back, prints the final snapshot, writes the diagrams.
    pub fn finish(mut self, flows: &[Flow], now_ms: u64) -> Result<()> {
        drop(self.tui.take());
        self.print(flows, now_ms)?;
        let d = &self.opts.diagram;
        if d.html.is_none() && d.svg.is_none() {
            return Ok(());
        }
        // The diagram always shows paths: one arrow per flow would be unreadable.
        let groups = group(flows, &GroupOptions::new(GroupBy::Path, now_ms));
        let title = format!("podtrace: paths of {} through this node", self.opts.pods);
        if let Some(path) = &d.svg {
            std::fs::write(path, diagram::svg(&d.node, &groups, &title))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(path) = &d.html {
            std::fs::write(path, diagram::html(&d.node, &groups, &title, now_ms))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

//! The live view on a terminal (ratatui + crossterm): paths refreshed in place, sorted by
//! bytes or rate, Enter expands a path into its connections, q quits. The terminal is given
//! back however the view ends (see [`terminal`]).
mod draw;
mod terminal;
mod view;

use std::io::{self, Stdout};

use crossterm::event::{Event, EventStream};
use futures::StreamExt;
use ratatui::{Terminal, backend::CrosstermBackend, widgets::TableState};

pub use draw::Status;
pub use view::Control;
use view::View;

use super::{group::PathGroup, summary::KERNEL_LOSSES};
use crate::{assemble::session::UserCounters, kernel::maps::Counters};

/// The loss counters the footer shows: the kernel's and user space's.
pub fn losses(counters: &Counters, user: &UserCounters) -> Vec<(&'static str, u64)> {
    let mut out: Vec<(&'static str, u64)> = KERNEL_LOSSES
        .iter()
        .map(|name| {
            let at = tracer_common::counter::NAMES.iter().position(|n| n == name);
            (*name, at.map_or(0, |i| counters[i]))
        })
        .collect();
    out.push(("hop_events_lost", user.hop_events_lost));
    out.push(("hop_events_evicted", user.hop_events_evicted));
    out.push(("conntrack_evicted", user.conntrack_evicted));
    out.push(("conntrack_events_dropped", user.conntrack_events_dropped));
    out
}

pub struct Tui {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    input: EventStream,
    view: View,
    status: Status,
    table: TableState,
    colour: bool,
    // Last: restores the terminal after everything else is gone.
    _guard: terminal::Guard,
}

impl Tui {
    /// Takes over the terminal (raw mode, alternate screen) until dropped.
    pub fn enter(colour: bool) -> io::Result<Tui> {
        let guard = terminal::Guard::enter()?;
        let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
        terminal.clear()?;
        Ok(Tui {
            terminal,
            input: EventStream::new(),
            view: View::default(),
            status: Status::default(),
            table: TableState::default(),
            colour,
            _guard: guard,
        })
    }

    /// New paths and counters: redrawn at once.
    pub fn update(&mut self, groups: Vec<PathGroup>, status: Status) -> io::Result<()> {
        self.view.set_groups(groups);
        self.status = status;
        self.draw()
    }

    /// The remarks shown so far (a new status keeps them).
    pub fn notes(&self) -> Vec<String> {
        self.status.notes.clone()
    }

    /// Adds a remark shown above the footer (instead of writing over the screen).
    pub fn note(&mut self, note: String) -> io::Result<()> {
        self.status.notes.push(note);
        self.draw()
    }

    pub fn draw(&mut self) -> io::Result<()> {
        let Tui { terminal, view, status, table, colour, .. } = self;
        // Resizes are picked up here: ratatui compares the terminal's size on every draw.
        terminal.draw(|f| draw::render(f, view, status, table, *colour))?;
        Ok(())
    }

    /// Waits for the next key or resize and applies it. Cancel-safe: it can lose a race in a
    /// `select!` without losing input.
    pub async fn next_input(&mut self) -> io::Result<Control> {
        match self.input.next().await {
            None => Ok(Control::Quit),
            Some(Err(e)) => Err(e),
            Some(Ok(Event::Key(k))) => {
                let c = self.view.key(k);
                if c == Control::Continue {
                    self.draw()?;
                }
                Ok(c)
            }
            Some(Ok(Event::Resize(..))) => {
                self.draw()?;
                Ok(Control::Continue)
            }
            Some(Ok(_)) => Ok(Control::Continue),
        }
    }
}

//! The terminal while the live view runs: raw mode and the alternate screen, always given
//! back. The guard restores on drop (quit, SIGTERM, an error returned through it), and a panic
//! hook restores before the panic message is printed, so the message lands on the normal
//! screen and nothing is left in raw mode.
use std::{
    io::{self, Write},
    sync::Once,
};

use crossterm::{
    cursor, execute,
    terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
};

/// Puts the terminal back as it was; harmless when it already is.
pub fn restore() {
    let _ = terminal::disable_raw_mode();
    let mut out = io::stdout();
    let _ = execute!(out, LeaveAlternateScreen, cursor::Show);
    let _ = out.flush();
}

fn restore_on_panic() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Raw mode and the alternate screen for as long as it lives.
pub struct Guard(());

impl Guard {
    pub fn enter() -> io::Result<Guard> {
        restore_on_panic();
        // Made before the first change: if entering fails half-way, dropping it undoes the rest.
        let guard = Guard(());
        terminal::enable_raw_mode()?;
        execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)?;
        Ok(guard)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}

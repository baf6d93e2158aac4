//! Drawing the live view with ratatui: a title line, the paths table (expanded paths followed
//! by their connections) and a footer with the loss counters, red when any is non-zero.
use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::{Line as TextLine, Span},
    widgets::{Cell, Paragraph, Row, Table, TableState},
};

use super::view::{Line, View};
use crate::report::{
    group::SortBy,
    path_text::{self, DROPS_COLUMN, HEADERS, NUMERIC},
};

/// What the view shows besides the paths.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// `default/web-2 on eth0, eth1, eni9fb0db7f13e`
    pub title: String,
    /// Counters of what was lost (kernel maps full, samples dropped, ...), by name.
    pub losses: Vec<(&'static str, u64)>,
    /// Unix ms of the data shown.
    pub now_ms: u64,
    /// Passing remarks, e.g. an interface that disappeared.
    pub notes: Vec<String>,
}

/// Styles that vanish without colour (NO_COLOR): emphasis stays, colours go.
#[derive(Clone, Copy)]
struct Paint {
    colour: bool,
}

impl Paint {
    fn fg(self, c: Color) -> Style {
        if self.colour { Style::new().fg(c) } else { Style::new() }
    }
    fn alarm(self) -> Style {
        let s = Style::new().add_modifier(Modifier::BOLD);
        if self.colour { s.fg(Color::White).bg(Color::Red) } else { s }
    }
}

/// Widest cell per column, long text columns capped (ratatui cuts what does not fit).
fn widths(rows: &[[String; 14]]) -> [u16; 14] {
    let mut w = HEADERS.map(|h| h.chars().count());
    for r in rows {
        for (w, cell) in w.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    w[2] = w[2].min(64);
    w[3] = w[3].min(72);
    w.map(|x| x as u16)
}

fn cell(text: String, column: usize, style: Style) -> Cell<'static> {
    let line = TextLine::from(text);
    let line = if NUMERIC[column] { line.right_aligned() } else { line };
    Cell::from(line).style(style)
}

fn loss_line(status: &Status, paint: Paint) -> TextLine<'static> {
    let lost = status.losses.iter().any(|(_, v)| *v > 0);
    let text = status.losses.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
    if lost {
        TextLine::from(Span::styled(format!("⚠ LOSSES: {text} (some traffic is not shown)"), paint.alarm()))
    } else {
        TextLine::from(Span::styled(format!("losses: {text}"), paint.fg(Color::DarkGray)))
    }
}

pub fn render(f: &mut Frame, view: &View, status: &Status, state: &mut TableState, colour: bool) {
    let paint = Paint { colour };
    let [top, body, notes, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(status.notes.len().min(3) as u16),
        Constraint::Length(1),
    ])
    .areas(f.area());

    let sort = match view.sort {
        SortBy::Bytes => "bytes",
        SortBy::Rate => "rate",
    };
    let title = TextLine::from(vec![
        Span::styled(format!("podtrace {}", status.title), Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!("  {}  sorted by {sort}", path_text::totals_text(&view.groups))),
        Span::styled("  ↑↓ select  Enter expand  s sort  q quit", paint.fg(Color::DarkGray)),
    ]);
    f.render_widget(Paragraph::new(title), top);

    let lines = view.lines();
    let now = status.now_ms;
    let cells: Vec<[String; 14]> = lines
        .iter()
        .map(|l| match *l {
            Line::Path(i) => path_text::path_cells(&view.groups[i], now),
            Line::Connection(i, j) => {
                let g = &view.groups[i];
                path_text::connection_cells(g, &g.connections[j], now)
            }
            Line::More(_, n) => {
                let mut c: [String; 14] = Default::default();
                c[2] = format!("  … and {n} more connections");
                c
            }
        })
        .collect();
    let widths = widths(&cells);
    let rows: Vec<Row> = lines
        .iter()
        .zip(cells)
        .map(|(l, cells)| {
            let path_row = matches!(l, Line::Path(_));
            let base = if path_row { Style::new() } else { paint.fg(Color::DarkGray) };
            Row::new(cells.into_iter().enumerate().map(|(i, text)| {
                let style = if i == DROPS_COLUMN && !text.is_empty() && text != "0" {
                    paint.fg(Color::Red).add_modifier(Modifier::BOLD)
                } else if i == 3 && path_row && text != "-" {
                    paint.fg(Color::Yellow)
                } else {
                    base
                };
                cell(text, i, style)
            }))
        })
        .collect();
    let header = Row::new(HEADERS.iter().enumerate().map(|(i, h)| cell(h.to_string(), i, Style::new())))
        .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let table = Table::new(rows, widths.map(Constraint::Length))
        .header(header)
        .column_spacing(2)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    state.select(view.selected_line(&lines));
    f.render_stateful_widget(table, body, state);

    let shown: Vec<TextLine> = status
        .notes
        .iter()
        .rev()
        .take(3)
        .map(|n| TextLine::from(Span::styled(n.clone(), paint.fg(Color::Yellow))))
        .collect();
    f.render_widget(Paragraph::new(shown), notes);
    f.render_widget(Paragraph::new(loss_line(status, paint)), bottom);
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend, buffer::Buffer};

    use super::*;
    use crate::report::group::{
        GroupBy, GroupOptions,
        fixtures::{DEMO_WEB_2, RECORDED_NOW_MS, recorded},
        group,
    };

    fn screen(view: &View, status: &Status, colour: bool) -> Buffer {
        let mut term = Terminal::new(TestBackend::new(220, 20)).unwrap();
        let mut state = TableState::default();
        term.draw(|f| render(f, view, status, &mut state, colour)).unwrap();
        term.backend().buffer().clone()
    }

    fn text(b: &Buffer) -> Vec<String> {
        (0..b.area.height)
            .map(|y| (0..b.area.width).map(|x| b[(x, y)].symbol().to_string()).collect::<String>())
            .collect()
    }

    fn demo() -> (View, Status) {
        let (_, flows) = recorded(DEMO_WEB_2);
        let mut v = View::default();
        v.set_groups(group(&flows, &GroupOptions::new(GroupBy::Path, RECORDED_NOW_MS)));
        let status = Status {
            title: "default/web-2".into(),
            losses: vec![("flow_map_full", 0), ("hop_events_lost", 0)],
            now_ms: RECORDED_NOW_MS,
            notes: vec![],
        };
        (v, status)
    }

    #[test]
    fn one_row_per_path_and_a_quiet_footer_without_losses() {
        let (view, status) = demo();
        let lines = text(&screen(&view, &status, true));
        assert!(
            lines[0]
                .starts_with("podtrace default/web-2  6 paths, 25 connections (0 active)  sorted by bytes")
        );
        assert!(lines[1].starts_with("DIR"));
        let rows: Vec<&String> =
            lines.iter().filter(|l| l.starts_with("egress") || l.starts_with("ingress")).collect();
        assert_eq!(rows.len(), 6);
        assert!(
            rows.iter()
                .any(|r| r.contains("web-2 → eth0 ⇒ 203.0.113.10:80") && r.contains("SNAT → 198.18.1.10:*"))
        );
        let footer = lines.last().unwrap();
        assert!(footer.starts_with("losses: flow_map_full=0 hop_events_lost=0"), "{footer}");
    }

    #[test]
    fn a_loss_turns_the_footer_red_and_says_so_without_colour_too() {
        let (view, mut status) = demo();
        status.losses[1].1 = 3;
        let b = screen(&view, &status, true);
        let y = b.area.height - 1;
        assert!(text(&b)[y as usize].starts_with("⚠ LOSSES: flow_map_full=0 hop_events_lost=3"));
        assert_eq!(b[(0, y)].bg, Color::Red);
        let plain = screen(&view, &status, false);
        assert!(text(&plain)[y as usize].starts_with("⚠ LOSSES"));
        assert!(
            (0..plain.area.height).all(|y| (0..plain.area.width)
                .all(|x| plain[(x, y)].fg == Color::Reset && plain[(x, y)].bg == Color::Reset)),
            "no colour at all without colour"
        );
    }

    #[test]
    fn an_expanded_path_lists_its_connections_under_it() {
        let (mut view, status) = demo();
        view.toggle_expanded();
        let lines = text(&screen(&view, &status, true));
        let first = lines.iter().position(|l| l.starts_with("egress") || l.starts_with("ingress")).unwrap();
        let under: Vec<&String> = lines[first + 1..].iter().take_while(|l| l.contains("└")).collect();
        assert_eq!(under.len(), view.groups[0].connections.len());
    }
}

//! What the live view shows and where the user is in it: the sorted paths, the selected path
//! and the expanded ones (both by key, so a refresh that reorders rows moves the selection
//! with its path), and what each key does. No terminal here: tested as plain data.
use std::collections::BTreeSet;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::report::group::{PathGroup, PathKey, SortBy, sort};

/// Connections listed under an expanded path; the rest are counted in one line.
pub const MAX_LISTED_CONNECTIONS: usize = 100;

/// What the loop does after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    Quit,
}

/// One line of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line {
    Path(usize),
    /// (path, connection)
    Connection(usize, usize),
    /// Connections of an expanded path beyond [`MAX_LISTED_CONNECTIONS`].
    More(usize, usize),
}

#[derive(Debug)]
pub struct View {
    pub sort: SortBy,
    pub groups: Vec<PathGroup>,
    selected: Option<PathKey>,
    expanded: BTreeSet<PathKey>,
}

impl Default for View {
    fn default() -> View {
        View { sort: SortBy::Bytes, groups: Vec::new(), selected: None, expanded: BTreeSet::new() }
    }
}

impl View {
    /// New data: sorted, selection and expansions kept where their paths still exist.
    pub fn set_groups(&mut self, groups: Vec<PathGroup>) {
        self.groups = groups;
        sort(&mut self.groups, self.sort);
        let keys: BTreeSet<&PathKey> = self.groups.iter().map(|g| &g.key).collect();
        self.expanded.retain(|k| keys.contains(k));
        if self.selected.as_ref().is_none_or(|k| !keys.contains(k)) {
            self.selected = self.groups.first().map(|g| g.key.clone());
        }
    }

    pub fn selected_path(&self) -> Option<usize> {
        let key = self.selected.as_ref()?;
        self.groups.iter().position(|g| &g.key == key)
    }

    #[cfg(test)]
    pub fn is_expanded(&self, path: usize) -> bool {
        self.groups.get(path).is_some_and(|g| self.expanded.contains(&g.key))
    }

    /// The table's lines: every path, each expanded one followed by its connections.
    pub fn lines(&self) -> Vec<Line> {
        let mut out = Vec::with_capacity(self.groups.len());
        for (i, g) in self.groups.iter().enumerate() {
            out.push(Line::Path(i));
            if self.expanded.contains(&g.key) {
                let listed = g.connections.len().min(MAX_LISTED_CONNECTIONS);
                out.extend((0..listed).map(|j| Line::Connection(i, j)));
                if g.connections.len() > listed {
                    out.push(Line::More(i, g.connections.len() - listed));
                }
            }
        }
        out
    }

    /// The selected path's line in [`View::lines`].
    pub fn selected_line(&self, lines: &[Line]) -> Option<usize> {
        let path = self.selected_path()?;
        lines.iter().position(|l| *l == Line::Path(path))
    }

    fn select(&mut self, path: usize) {
        self.selected = self.groups.get(path).map(|g| g.key.clone());
    }

    fn move_by(&mut self, delta: isize) {
        if self.groups.is_empty() {
            return;
        }
        let at = self.selected_path().unwrap_or(0) as isize;
        let last = self.groups.len() as isize - 1;
        self.select((at + delta).clamp(0, last) as usize);
    }

    pub fn toggle_sort(&mut self) {
        self.sort = match self.sort {
            SortBy::Bytes => SortBy::Rate,
            SortBy::Rate => SortBy::Bytes,
        };
        sort(&mut self.groups, self.sort);
    }

    pub fn toggle_expanded(&mut self) {
        if let Some(key) = self.selected.clone()
            && !self.expanded.remove(&key)
        {
            self.expanded.insert(key);
        }
    }

    /// Applies a key press.
    pub fn key(&mut self, k: KeyEvent) -> Control {
        if k.kind != KeyEventKind::Press {
            return Control::Continue;
        }
        match k.code {
            KeyCode::Char('q') | KeyCode::Esc => return Control::Quit,
            // Raw mode turns Ctrl-C into a key: it quits as it would without raw mode.
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return Control::Quit,
            KeyCode::Up | KeyCode::Char('k') => self.move_by(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_by(1),
            KeyCode::PageUp => self.move_by(-10),
            KeyCode::PageDown => self.move_by(10),
            KeyCode::Home => self.move_by(isize::MIN / 2),
            KeyCode::End => self.move_by(isize::MAX / 2),
            KeyCode::Enter | KeyCode::Char(' ') => self.toggle_expanded(),
            KeyCode::Char('s') => self.toggle_sort(),
            _ => {}
        }
        Control::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::group::{
        GroupBy, GroupOptions,
        fixtures::{DEMO_WEB_2, RECORDED_NOW_MS, recorded},
        group,
    };

    fn press(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn demo() -> View {
        let (_, flows) = recorded(DEMO_WEB_2);
        let mut v = View::default();
        v.set_groups(group(&flows, &GroupOptions::new(GroupBy::Path, RECORDED_NOW_MS)));
        v
    }

    #[test]
    fn enter_expands_the_selected_path_into_its_connections() {
        let mut v = demo();
        assert_eq!(v.lines().len(), 6);
        v.key(press(KeyCode::Down));
        let path = v.selected_path().unwrap();
        assert_eq!(path, 1);
        v.key(press(KeyCode::Enter));
        let lines = v.lines();
        let connections = v.groups[path].connections.len();
        assert_eq!(lines.len(), 6 + connections);
        assert!((0..connections).all(|j| lines.contains(&Line::Connection(path, j))));
        assert_eq!(v.selected_line(&lines), Some(1));
        v.key(press(KeyCode::Char(' ')));
        assert_eq!(v.lines().len(), 6, "toggled back");
    }

    #[test]
    fn selection_and_expansion_follow_their_path_across_refreshes() {
        let mut v = demo();
        v.key(press(KeyCode::End));
        v.key(press(KeyCode::Enter));
        let key = v.groups[v.selected_path().unwrap()].key.clone();
        // The same data again, in another order: the selection stays on its path.
        let mut again = v.groups.clone();
        again.reverse();
        v.set_groups(again);
        assert_eq!(v.groups[v.selected_path().unwrap()].key, key);
        assert!(v.is_expanded(v.selected_path().unwrap()));
        // The path is gone: the first one is selected.
        let rest: Vec<PathGroup> = v.groups.iter().filter(|g| g.key != key).cloned().collect();
        v.set_groups(rest);
        assert_eq!(v.selected_path(), Some(0));
        assert_eq!(v.lines().len(), 5);
    }

    #[test]
    fn keys_quit_sort_and_stay_in_bounds() {
        let mut v = demo();
        assert_eq!(v.key(press(KeyCode::Char('q'))), Control::Quit);
        assert_eq!(v.key(press(KeyCode::Esc)), Control::Quit);
        assert_eq!(v.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Control::Quit);
        assert_eq!(v.key(press(KeyCode::Char('c'))), Control::Continue);
        v.key(press(KeyCode::Up));
        assert_eq!(v.selected_path(), Some(0));
        v.key(press(KeyCode::PageDown));
        assert_eq!(v.selected_path(), Some(5));
        assert_eq!(v.sort, SortBy::Bytes);
        v.key(press(KeyCode::Char('s')));
        assert_eq!(v.sort, SortBy::Rate);
        let empty = &mut View::default();
        empty.key(press(KeyCode::Down));
        empty.key(press(KeyCode::Enter));
        assert_eq!(empty.lines(), []);
    }

    #[test]
    fn a_path_with_very_many_connections_lists_the_first_and_counts_the_rest() {
        let mut v = demo();
        let mut big = v.groups[0].clone();
        let one = big.connections[0].clone();
        big.connections = (0..MAX_LISTED_CONNECTIONS + 7)
            .map(|i| crate::report::group::Connection { id: format!("c{i}"), ..one.clone() })
            .collect();
        v.set_groups(vec![big]);
        v.key(press(KeyCode::Enter));
        let lines = v.lines();
        assert_eq!(lines.len(), 1 + MAX_LISTED_CONNECTIONS + 1);
        assert_eq!(lines.last(), Some(&Line::More(0, 7)));
    }
}

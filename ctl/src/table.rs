//! Aligned text tables sized to the terminal, and the small formatters the
//! views share (ages, times).

/// The width to fit tables to: `COLUMNS` when set, the terminal's when
/// stdout is one; unlimited otherwise (a pipe or file gets whole lines).
pub fn width() -> usize {
    use std::io::IsTerminal;
    if let Some(w) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
    {
        return w.max(40);
    }
    if !std::io::stdout().is_terminal() {
        return usize::MAX;
    }
    crossterm::terminal::size()
        .map(|(w, _)| w as usize)
        .unwrap_or(120)
        .max(40)
}

/// Column alignment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table: headers, rows, and which column gives up width first when the
/// terminal is too narrow (the last left-aligned column).
pub struct Table {
    pub headers: Vec<&'static str>,
    pub align: Vec<Align>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(cols: &[(&'static str, Align)]) -> Table {
        Table {
            headers: cols.iter().map(|c| c.0).collect(),
            align: cols.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders within `width` columns: every column as wide as its widest
    /// cell; when that is too wide, left-aligned columns are cut (with `…`,
    /// to no less than 8) from the right, so the first column (an id or a
    /// destination) stays whole and the last (free text) gives way first.
    pub fn render(&self, width: usize) -> String {
        let n = self.headers.len();
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * n.saturating_sub(1);
        for i in (1..n).rev() {
            if total(&w) <= width {
                break;
            }
            if self.align[i] == Align::Left && w[i] > 8 {
                w[i] -= (total(&w) - width).min(w[i] - 8);
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let mut l = String::new();
            for (i, c) in cells.iter().enumerate().take(n) {
                let c = cut(c, w[i]);
                let pad = w[i] - c.chars().count();
                if i > 0 {
                    l.push_str("  ");
                }
                if self.align[i] == Align::Right {
                    l.push_str(&" ".repeat(pad));
                    l.push_str(&c);
                } else {
                    l.push_str(&c);
                    if i + 1 < n {
                        l.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        let head: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        line(&mut out, &head);
        for r in &self.rows {
            line(&mut out, r);
        }
        out
    }
}

/// `s` cut to `w` characters, ending in `…` when cut.
pub fn cut(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        return s.to_string();
    }
    let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// A duration in seconds as `42s`, `17m`, `5h03m`, `3d04h`.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Seconds since the epoch, now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_the_width_by_cutting_the_widest_text_column() {
        let mut t = Table::new(&[
            ("ID", Align::Left),
            ("N", Align::Right),
            ("WHO", Align::Left),
            ("TEXT", Align::Left),
        ]);
        t.row(vec![
            "abc".into(),
            "7".into(),
            "w".repeat(20),
            "x".repeat(100),
        ]);
        let s = t.render(40);
        assert!(s.lines().all(|l| l.chars().count() <= 40), "{s}");
        assert!(s.contains('…'));
        assert!(
            s.contains(&format!("abc  7  {}  xxx", "w".repeat(20))),
            "{s}"
        );
        let narrow = t.render(20);
        assert!(narrow.contains("abc  7  wwwwwww…  xxxxxxx…"), "{narrow}");
        assert_eq!(age(59), "59s");
        assert_eq!(age(3 * 86_400 + 4 * 3600), "3d04h");
    }
}

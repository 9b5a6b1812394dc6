//! Aligned text tables in zpool's style, and the scripted (`-H`) tab-separated form.

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table: a header row and data rows of the same width.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[(&str, Align)]) -> Self {
        Table {
            headers: headers
                .iter()
                .map(|(h, a)| ((*h).to_string(), *a))
                .collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    /// Renders the table; `scripted` drops the header and separates cells with one tab.
    pub fn render(&self, scripted: bool) -> String {
        let mut out = String::new();
        if scripted {
            for row in &self.rows {
                out.push_str(&row.join("\t"));
                out.push('\n');
            }
            return out;
        }
        let widths: Vec<usize> = self
            .headers
            .iter()
            .enumerate()
            .map(|(i, (h, _))| {
                self.rows
                    .iter()
                    .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                    .chain(std::iter::once(h.len()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let header: Vec<String> = self.headers.iter().map(|(h, _)| h.clone()).collect();
        for row in std::iter::once(&header).chain(self.rows.iter()) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i].saturating_sub(cell.chars().count());
                match self.headers[i].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&" ".repeat(pad));
                    }
                    Align::Right => {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(&[("NAME", Align::Left), ("SIZE", Align::Right)]);
        t.row(vec!["demo".into(), "4G".into()]);
        t.row(vec!["longername".into(), "1.50T".into()]);
        let text = t.render(false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAME         SIZE");
        assert_eq!(lines[1], "demo           4G");
        assert_eq!(lines[2], "longername  1.50T");
        assert_eq!(t.render(true), "demo\t4G\nlongername\t1.50T\n");
    }
}

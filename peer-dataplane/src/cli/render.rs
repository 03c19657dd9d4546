//! The one renderer of the CLI: padded tables, units for people, and the one format of a
//! bandwidth cap.

use peer_dataplane_common::DIRECTIONS;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Renders rows with columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                let _ = write!(out, "{c}");
            } else {
                let _ = write!(out, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(|s| s.as_str()).collect(), &mut out);
    }
    out
}

/// A table of `items`, one row each.
pub fn table_of<T>(header: &[&str], items: &[T], row: impl Fn(&T) -> Vec<String>) -> String {
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    table(header, &rows)
}

/// A peering's two directions for a table: (direction, from VPC, to VPC, that direction's
/// view).
pub fn directions<'a, D>(
    requester: &'a str,
    accepter: &'a str,
    requester_to_accepter: &'a D,
    accepter_to_requester: &'a D,
) -> [(&'static str, String, &'a D); 2] {
    [
        (
            DIRECTIONS[0],
            format!("{requester} -> {accepter}"),
            requester_to_accepter,
        ),
        (
            DIRECTIONS[1],
            format!("{accepter} -> {requester}"),
            accepter_to_requester,
        ),
    ]
}

/// `1.2 Mpps`-style numbers for people.
pub fn si(v: f64, unit: &str) -> String {
    let (d, p) = if v >= 1e9 {
        (1e9, "G")
    } else if v >= 1e6 {
        (1e6, "M")
    } else if v >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    format!("{:.1} {p}{unit}", v / d)
}

/// A bandwidth cap, everywhere the CLI prints one: `100 Mbit/s`, `2.5 Gbit/s`, or `-`
/// when uncapped.
pub fn bits_per_second(bps: Option<u64>) -> String {
    match bps {
        None => "-".into(),
        Some(b) if b >= 1_000_000_000 => format!("{} Gbit/s", b as f64 / 1e9),
        Some(b) if b >= 1_000_000 => format!("{} Mbit/s", b as f64 / 1e6),
        Some(b) => format!("{} kbit/s", b as f64 / 1e3),
    }
}

/// `reason=count,…` of the reasons with drops, or `-`.
pub fn reasons_cell(d: &BTreeMap<&'static str, u64>) -> String {
    if d.is_empty() {
        return "-".into();
    }
    d.iter()
        .map(|(r, n)| format!("{r}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// An optional cell: its text, or `-`.
pub fn dash(o: &Option<String>) -> String {
    o.clone().unwrap_or_else(|| "-".into())
}

/// How a command prints: a table for people or JSON for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Prints `value` as a table for people or as JSON for scripts.
pub fn show<T: serde::Serialize + ?Sized>(
    output: Output,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    match output {
        Output::Table => print!("{}", table(value)),
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

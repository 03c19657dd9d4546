//! Every `§` reference in the repository's code and docs names a section of
//! `docs/datapath.md` that exists: `§N` a `## N.` heading, `§N.M` a `### N.M` heading or
//! item `M.` of section N's numbered list (the promises of §3). Runs anywhere (no root).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The sections `docs/datapath.md` holds, as "N" and "N.M".
fn sections() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docs/datapath.md")).unwrap();
    let mut out = BTreeSet::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            let n = h.split('.').next().unwrap_or_default().trim();
            if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() {
                out.insert(n.to_string());
                current = Some(n.to_string());
            } else {
                current = None;
            }
        } else if let Some(h) = line.strip_prefix("### ") {
            if let Some(n) = h.split_whitespace().next() {
                out.insert(n.to_string());
            }
        } else if let Some(sec) = &current {
            // A numbered item at the start of a line: `7. **Caps.** …`.
            if let Some((n, _)) = line.split_once(". ") {
                if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) {
                    out.insert(format!("{sec}.{n}"));
                }
            }
        }
    }
    out
}

/// Files tracked by git under the repository (source and docs).
fn files() -> Vec<PathBuf> {
    let out = std::process::Command::new("git")
        .args(["ls-files", "*.rs", "*.md", "*.toml", "*.sh"])
        .current_dir(root())
        .output()
        .expect("git ls-files");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| root().join(l))
        .collect()
}

#[test]
fn every_section_reference_exists() {
    let known = sections();
    assert!(known.contains("4.19") && known.contains("3.8"), "{known:?}");
    let mut missing = Vec::new();
    let mut seen = 0;
    for f in files() {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            for (at, _) in line.match_indices('§') {
                let rest = &line[at + '§'.len_utf8()..];
                let n: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.')
                    .collect();
                let n = n.trim_end_matches('.');
                if n.is_empty() || !n.starts_with(|c: char| c.is_ascii_digit()) {
                    continue;
                }
                seen += 1;
                if !known.contains(n) {
                    let rel = f.strip_prefix(root()).unwrap_or(&f);
                    missing.push(format!("{}:{}: §{n}", rel.display(), i + 1));
                }
            }
        }
    }
    assert!(
        seen > 100,
        "only {seen} references found: is the scan right?"
    );
    assert!(
        missing.is_empty(),
        "sections docs/datapath.md does not have:\n{}",
        missing.join("\n")
    );
}

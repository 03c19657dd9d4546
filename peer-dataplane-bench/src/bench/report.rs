//! Where a benchmark ran, and its figures as JSON under `target/bench/`.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::process::Command;

fn first_line(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    })
}

/// Kernel, CPU model and count, and the commit measured.
pub fn environment() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    json!({
        "kernel": first_line(Command::new("uname").arg("-r")).unwrap_or_default(),
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "commit": first_line(Command::new("git").args(["rev-parse", "--short", "HEAD"])).unwrap_or_else(|| "unknown".into()),
    })
}

/// Prints the environment line every report starts with.
pub fn print_environment(env: &Value) {
    println!(
        "kernel {}, {} x {}, commit {}",
        env["kernel"].as_str().unwrap_or("?"),
        env["cpus"],
        env["cpu"].as_str().unwrap_or("?"),
        env["commit"].as_str().unwrap_or("?")
    );
}

/// Writes `target/bench/NAME.json`; returns its path.
pub fn write(name: &str, figures: &Value) -> Result<std::path::PathBuf> {
    let dir = std::path::PathBuf::from("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(figures)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

//! The comparison's table, the scaling table and its JSON, and the SVG plot.

use super::*;

/// pps at each thread count, the scaling against the first, and the sink's split over
/// CPUs.
pub(super) fn scaling_report(rows: &[ScalingRow]) {
    println!(
        "\nscaling: generator threads, each on its own CPU and TX queue of port A's peer; per-CPU split of the frames counted at the sink"
    );
    println!(
        "{:<34} {:>7} {:>9} {:>10} {:>7} {:>8} {:>8} {:>11} {:>11}",
        "CONFIGURATION",
        "THREADS",
        "PDP KPPS",
        "LINUX KPPS",
        "RATIO",
        "PDP xN",
        "LINUX xN",
        "PDP CPUS %",
        "LINUX CPUS %"
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|b| b.label == r.label)
            .and_then(|b| b.result.as_ref().ok());
        match (&r.result, base) {
            (Ok((p, l)), Some((bp, bl))) => println!(
                "{:<34} {:>7} {:>9.1} {:>10.1} {:>6.2}x {:>7.2}x {:>7.2}x {:>11} {:>11}",
                r.label,
                r.threads,
                p.pps / 1e3,
                l.pps / 1e3,
                p.pps / l.pps,
                p.pps / bp.pps,
                l.pps / bl.pps,
                spread(&p.per_cpu),
                spread(&l.per_cpu)
            ),
            (Err(e), _) => println!("{:<34} {:>7} not run: {e}", r.label, r.threads),
            _ => println!("{:<34} {:>7} (no baseline)", r.label, r.threads),
        }
    }
}

pub(super) fn scaling_json(rows: &[ScalingRow]) -> serde_json::Value {
    serde_json::json!(rows
        .iter()
        .map(|r| match &r.result {
            Ok((p, l)) => serde_json::json!({
                "configuration": r.label, "threads": r.threads,
                "pdp_pps": p.pps, "linux_pps": l.pps, "ratio": p.pps / l.pps,
                "pdp_sink_frames_per_cpu": p.per_cpu, "linux_sink_frames_per_cpu": l.per_cpu,
                "pdp_offered_pps": p.offered_pps, "linux_offered_pps": l.offered_pps,
            }),
            Err(e) =>
                serde_json::json!({"configuration": r.label, "threads": r.threads, "not_run": e}),
        })
        .collect::<Vec<_>>())
}

/// The table of both paths per configuration, and the headline ratios.
pub(super) fn e2e_report(rows: &[Row], policers: &[&str]) {
    println!(
        "{:<46} {:>9} {:>10} {:>7}   {:>10} {:>12}   {:>17}",
        "CONFIGURATION",
        "PDP KPPS",
        "LINUX KPPS",
        "RATIO",
        "PDP Mbit/s",
        "LINUX Mbit/s",
        "OFFERED KPPS"
    );
    for r in rows {
        let Ok((pdp, linux)) = &r.result else {
            println!(
                "{:<46} not run: {}",
                r.config.label,
                r.result.as_ref().err().unwrap()
            );
            continue;
        };
        println!(
            "{:<46} {:>9.1} {:>10.1} {:>6.2}x   {:>10.1} {:>12.1}   {:>8.0} / {:>6.0}",
            r.config.label,
            pdp.pps / 1e3,
            linux.pps / 1e3,
            pdp.pps / linux.pps,
            pdp.bps / 1e6,
            linux.bps / 1e6,
            pdp.offered_pps / 1e3,
            linux.offered_pps / 1e3,
        );
    }
    let find = |label: &str| {
        rows.iter()
            .find(|r| r.config.label == label)
            .and_then(|r| r.result.as_ref().ok())
    };
    for label in [
        "10 routes",
        "10 routes, groups + 40-rule NACL",
        "1,000,000 routes, groups + 40-rule NACL",
    ] {
        if let Some((p, l)) = find(label) {
            println!(
                "ratio, {label}: {:.2}x ({:.0} vs {:.0} kpps)",
                p.pps / l.pps,
                p.pps / 1e3,
                l.pps / 1e3
            );
        }
    }
    if let Some(p) = policers.first() {
        println!("Linux cap: {p}");
    }
    for r in rows {
        let (Some(mbps), Ok((pdp, linux))) = (r.config.cap_mbps, &r.result) else {
            continue;
        };
        let over = |bps: f64| 100.0 * (bps / (mbps as f64 * 1e6) - 1.0);
        if linux.bps < mbps as f64 * 1e6 * 0.9 {
            continue; // not reached
        }
        println!(
            "cap {mbps} Mbit/s: this data plane delivered {:+.1} %, Linux {:+.1} % against it",
            over(pdp.bps),
            over(linux.bps)
        );
    }
}

/// Two panels: throughput vs routes, and vs ACL rules; one line per data plane.
pub(super) fn write_svg(path: &Path, rows: &[Row]) -> Result<()> {
    let plain = |r: &&Row| !r.config.groups && r.config.cap_mbps.is_none() && r.result.is_ok();
    let routes: Vec<&Row> = rows
        .iter()
        .filter(|r| plain(r) && r.config.rules == 0)
        .collect();
    anyhow::ensure!(!routes.is_empty(), "no route row ran");
    let fig = |r: &Row| r.result.clone().unwrap();
    let mut rules: Vec<&Row> = vec![routes[0]];
    rules.extend(rows.iter().filter(|r| plain(r) && r.config.rules > 0));
    // The top of the y axis: the highest figure plus room for the legend, in 500s of kpps.
    let top = rows
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .flat_map(|(p, l)| [p.pps, l.pps])
        .fold(0.0, f64::max)
        * 1.15
        / 1e3;
    let ymax = (top / 500.0).ceil().max(1.0) * 500.0;
    let mut svg = String::from(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"960\" height=\"420\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"960\" height=\"420\" fill=\"white\"/>\n",
    );
    let rp: Vec<(f64, f64, f64)> = routes
        .iter()
        .map(|r| {
            let (p, l) = fig(r);
            (r.config.routes as f64, p.pps / 1e3, l.pps / 1e3)
        })
        .collect();
    let ap: Vec<(f64, f64, f64)> = rules
        .iter()
        .map(|r| {
            let (p, l) = fig(r);
            (r.config.rules.max(1) as f64, p.pps / 1e3, l.pps / 1e3)
        })
        .collect();
    svg_panel(
        &mut svg,
        ymax,
        0.0,
        "Throughput vs routes (no ACL)",
        "routes in the sender's table",
        &rp,
    );
    svg_panel(
        &mut svg,
        ymax,
        480.0,
        "Throughput vs NACL rules (10 routes)",
        "egress NACL rules on /24s and port ranges (1 = none)",
        &ap,
    );
    svg.push_str("</svg>\n");
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

/// One panel of the plot at `x0`: axes up to `ymax` kpps, and both paths' series over
/// `pts` (x value, this data plane's kpps, Linux's kpps), x on a log scale.
pub(super) fn svg_panel(
    svg: &mut String,
    ymax: f64,
    x0: f64,
    title: &str,
    xlabel: &str,
    pts: &[(f64, f64, f64)],
) {
    // pts: (x value, pdp kpps, linux kpps); x on a log scale.
    let (w, h, top, left) = (380.0, 300.0, 50.0, x0 + 60.0);
    let lx: Vec<f64> = pts.iter().map(|p| p.0.max(1.0).log10()).collect();
    let (xmin, xmax) = (
        lx.iter().cloned().fold(f64::MAX, f64::min),
        lx.iter().cloned().fold(f64::MIN, f64::max),
    );
    let sx = |v: f64| left + (v.max(1.0).log10() - xmin) / (xmax - xmin).max(1e-9) * w;
    let sy = |v: f64| top + h - v / ymax * h;
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"25\" font-size=\"14\" text-anchor=\"middle\">{title}</text>\n",
        left + w / 2.0
    ));
    svg.push_str(&format!(
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n",
        top + h, left + w, top + h, top + h
    ));
    for i in 0..=4 {
        let v = ymax * i as f64 / 4.0;
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.0}</text>\n<line x1=\"{left}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/>\n",
            left - 6.0,
            sy(v) + 4.0,
            v,
            left + w,
            y = sy(v)
        ));
    }
    for p in pts {
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            sx(p.0),
            top + h + 18.0,
            p.0
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{xlabel} (log scale)</text>\n<text x=\"{}\" y=\"{}\" transform=\"rotate(-90 {} {})\" text-anchor=\"middle\">kpps received</text>\n",
        left + w / 2.0,
        top + h + 40.0,
        x0 + 16.0,
        top + h / 2.0,
        x0 + 16.0,
        top + h / 2.0
    ));
    for (which, color, name) in [
        (1, "#1f77b4", "peer-dataplane (XDP)"),
        (2, "#d62728", "Linux (ip route + nftables)"),
    ] {
        let line: Vec<String> = pts
            .iter()
            .map(|p| {
                let y = if which == 1 { p.1 } else { p.2 };
                format!("{:.1},{:.1}", sx(p.0), sy(y))
            })
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            line.join(" ")
        ));
        for pt in &line {
            let (x, y) = pt.split_once(',').unwrap();
            svg.push_str(&format!(
                "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{color}\"/>\n"
            ));
        }
        let ly = top + 12.0 + 16.0 * (which as f64 - 1.0);
        svg.push_str(&format!(
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{name}</text>\n",
            left + w - 210.0,
            ly - 4.0,
            left + w - 192.0,
            ly
        ));
    }
}

//! `bench prog`, frames really forwarded: the cost of a frame that is transmitted. Batched
//! BPF_PROG_RUN (the rows above) times the program alone: its redirect only records the
//! target, and nothing is transmitted, so "redirect only" there is a near-empty program
//! (6 ns). Here frames come from `bench e2e`'s generator (live frames behind
//! `pdp_loadgen` where the kernel runs them, else AF_XDP or AF_PACKET from the port's
//! veth peer, see `gen`), and each frame is transmitted on port B's veth and counted by
//! the sink behind it: redirect-only (frames received on B, sent back out of B) against the whole
//! job of row (t) on one flow, with its kept decision and without. Then the same job over
//! 100,000 flows, each frame the next flow: 100,000 flows do not fit the 16,384-slot
//! decision table, so nearly every frame misses, looks its slot up and keeps its
//! decision for nothing (a flood of new flows), against the same frames with kept
//! decisions off. A figure is the time per frame on one CPU, 1 / (frames counted per
//! second), the generator's own cost included (the same in every row).

use super::gen::BENCH_DPORT;
use super::gen::{BenchGen, Next, Shape};
use super::rows::{a_to_b_frame, FRAME_BYTES};
use anyhow::Result;
use peer_dataplane::desired::document::Document;
use peer_dataplane_common::program_names;
use peer_dataplane_tests::harness::TestDataplane;
use peer_dataplane_tests::seed::{A, B};

const SECONDS: f64 = 1.0;
const ROUNDS: usize = 5;
/// Flows of the rows where nearly every frame misses (more than the table's slots).
const MANY_FLOWS: u32 = 100_000;

pub struct Figures {
    /// The generator, as `gen` names it.
    pub generator: String,
    pub redirect_ns: f64,
    pub kept_ns: f64,
    pub whole_ns: f64,
    /// 100,000 flows, kept decisions on: nearly every frame misses.
    pub missing_ns: f64,
    /// 100,000 flows, kept decisions off.
    pub missing_off_ns: f64,
}

impl Figures {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "generator": self.generator,
            "seconds": SECONDS,
            "rounds": ROUNDS,
            "frame_bytes": FRAME_BYTES,
            "redirect_only_ns": self.redirect_ns,
            "job_kept_ns": self.kept_ns,
            "job_whole_pipeline_ns": self.whole_ns,
            "job_kept_over_redirect_only": self.kept_ns / self.redirect_ns,
            "job_whole_over_redirect_only": self.whole_ns / self.redirect_ns,
            "many_flows": MANY_FLOWS,
            "job_many_flows_kept_decisions_on_ns": self.missing_ns,
            "job_many_flows_kept_decisions_off_ns": self.missing_off_ns,
            "job_many_flows_on_over_off": self.missing_ns / self.missing_off_ns,
        })
    }
}

/// Medians over alternating rounds, with `job` installed.
pub fn measure(dp: &mut TestDataplane, job: &Document, gen: &mut BenchGen) -> Result<Figures> {
    dp.install(job)?;
    dp.installed.maps.conntrack_flush(|_, _| true)?;
    dp.sink_match_udp_dports(BENCH_DPORT, BENCH_DPORT + 1)?;
    let template = a_to_b_frame(dp)?;
    // ns per frame of `next` with frames received on `port`.
    let mut run_flows = |dp: &mut TestDataplane, next: &str, port: &str, flows| -> Result<f64> {
        let shape = Shape {
            flows,
            threads: 1,
            seconds: SECONDS,
        };
        let r = gen.run(dp, &template, port, Next::Program(next), shape)?;
        anyhow::ensure!(r.received > 0, "no frame reached the sink behind port B");
        Ok(1e9 * r.sent.seconds / r.received as f64)
    };
    let (mut redirect, mut kept, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    let (mut missing, mut missing_off) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        eprint!("\r  frames really forwarded, round {}/{ROUNDS}", round + 1);
        redirect.push(run_flows(dp, program_names::REDIRECT_ONLY, B.port, 1)?);
        kept.push(run_flows(dp, program_names::PIPELINE, A.port, 1)?);
        dp.installed.maps.set_flow_cache(false)?;
        let r = run_flows(dp, program_names::PIPELINE, A.port, 1);
        let r_many = r.and_then(|r| {
            run_flows(dp, program_names::PIPELINE, A.port, MANY_FLOWS).map(|m| (r, m))
        });
        dp.installed.maps.set_flow_cache(true)?;
        let (r, m) = r_many?;
        whole.push(r);
        missing_off.push(m);
        missing.push(run_flows(dp, program_names::PIPELINE, A.port, MANY_FLOWS)?);
    }
    eprintln!();
    Ok(Figures {
        generator: gen.label(),
        redirect_ns: super::median(redirect),
        kept_ns: super::median(kept),
        whole_ns: super::median(whole),
        missing_ns: super::median(missing),
        missing_off_ns: super::median(missing_off),
    })
}

pub fn report(f: &Figures) {
    println!(
        "\nframes really forwarded (generator: {}; each frame transmitted on port B and counted behind it; one CPU; median of {ROUNDS} rounds of {SECONDS} s)",
        f.generator
    );
    println!("{:<48} {:>10} {:>8}", "PATH", "NS/FRAME", "RATIO");
    for (name, ns) in [
        ("(a\") redirect only, transmitted", f.redirect_ns),
        ("(t\") the job of (t), kept decision", f.kept_ns),
        ("(t\"-) the job of (t), whole pipeline", f.whole_ns),
        (
            "(m\") the job, 100,000 flows, kept decisions on",
            f.missing_ns,
        ),
        ("(m\"-) the same, kept decisions off", f.missing_off_ns),
    ] {
        println!("{name:<48} {ns:>10.1} {:>7.2}x", ns / f.redirect_ns);
    }
    println!(
        "t\"/a\" (the whole job on an established flow vs a redirect that transmits) = {:.2}",
        f.kept_ns / f.redirect_ns
    );
    println!(
        "m\"/m\"- (a flood of new flows: nearly every frame misses, with kept decisions on vs off) = {:.2}",
        f.missing_ns / f.missing_off_ns
    );
}

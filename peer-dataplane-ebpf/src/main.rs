//! peer-dataplane XDP program: forwards traffic between peered VPCs.
//!
//! `pdp_xdp` is a thin entry: it runs [`pipeline::run`] and counts the outcome. Every
//! stage lives in its own module and returns `Err(Outcome::drop(..))` to drop a packet under a reason;
//! nothing is passed to the kernel by accident.
#![no_std]
#![no_main]
// Atomic intrinsics for the bandwidth-cap buckets (see `cap`).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod acl;
mod cap;
mod clock;
mod conntrack;
mod counters;
mod decap;
mod deliver;
mod encap;
mod flowcache;
mod groups;
mod icmp;
mod loadgen;
mod maps;
mod parse;
mod peering;
mod pipeline;
mod port;
mod rewrite;
mod route;
mod sg;
mod sink;
mod trace;
mod words;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn pdp_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (outcome, seen) = pipeline::run::<false>(&ctx);
    counters::record(len, &outcome, &seen)
}

/// `peer-dataplane trace`: the same pipeline with side effects off, noting each stage in
/// this CPU's trace record. Never attached; the CLI runs it with BPF_PROG_RUN. Returns
/// the action `pdp_xdp` would (and rewrites the frame as it would).
#[xdp]
pub fn pdp_trace(ctx: XdpContext) -> u32 {
    let (outcome, _) = pipeline::run::<true>(&ctx);
    let action = match outcome.verdict {
        counters::Verdict::Pass => xdp_action::XDP_PASS,
        counters::Verdict::Redirect => outcome.action,
        counters::Verdict::Drop => outcome.drop_action(),
    };
    trace::note::<true>(|r| {
        r.verdict = outcome.verdict as u32;
        r.reason = outcome.reason;
        r.action = action;
    });
    action
}

/// Benchmark baseline: redirect every frame back to its ingress port through the devmap,
/// doing nothing else. `cargo xtask bench prog` divides the pipeline's cost by this one's.
#[xdp]
pub fn pdp_redirect_only(ctx: XdpContext) -> u32 {
    match maps::DEVMAP.redirect(ctx.ingress_ifindex() as u32, 0) {
        Ok(action) => action,
        Err(_) => xdp_action::XDP_ABORTED,
    }
}

/// Load generation toward the Linux kernel (`cargo xtask bench e2e`): with BPF_PROG_RUN
/// live frames, every frame is handed to the kernel's stack as if received on the port.
#[xdp]
pub fn pdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Benchmarks: gives each live frame its own flow, then hands it to the pipeline or to
/// the kernel (see `loadgen`).
#[xdp]
pub fn pdp_loadgen(ctx: XdpContext) -> u32 {
    loadgen::next(&ctx)
}

/// Benchmark and test sink, attached behind the destination port: counts and drops every
/// frame, so that both forwarding paths of `bench e2e` are measured at the same point (see
/// `sink` for which frames count).
#[xdp]
pub fn pdp_sink(ctx: XdpContext) -> u32 {
    sink::count(&ctx);
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

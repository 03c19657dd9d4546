//! `bench prog`, the overlay's rows: on host 1 of the three-host seed, the same pipeline
//! toward an instance on the same host (A -> B2), toward one on another host (A -> B:
//! checks and encapsulation), and for a tunnel frame from that host (B -> A: the tunnel's
//! checks, decapsulation, the receiver's checks).
//!
//! The encapsulation grows the frame in place and BPF_PROG_RUN repeats a program on the
//! same buffer, so a repeated run would encapsulate its own output: every figure here is a
//! single run per syscall (the kernel times the program alone, with its timer), median of
//! many, interleaved. The redirect-only program is timed the same way, so that the fixed
//! cost of a timed single run can be taken out of the ratios.

use super::median;
use anyhow::{bail, Result};
use peer_dataplane_common::program_names;
use peer_dataplane_tests::fleet::{self, B2};
use peer_dataplane_tests::harness::{action_name, TestDataplane, XDP_REDIRECT};
use peer_dataplane_tests::netns;
use peer_dataplane_tests::packets::{self, geneve4, peering_option, Outer, L2};
use peer_dataplane_tests::seed::{A, B, ROUTER_MAC};
use std::path::Path;

pub struct Figures {
    pub baseline: f64,
    pub same_host: f64,
    pub encap: f64,
    pub decap: f64,
}

/// One timed single run; fails unless the program redirects.
fn once(dp: &TestDataplane, program: &str, ifindex: u32, frame: &[u8]) -> Result<f64> {
    let out = dp.run_on(program, ifindex, frame, 1)?;
    if out.action != XDP_REDIRECT {
        bail!(
            "{program} returned {}: not the path to measure",
            action_name(out.action)
        );
    }
    Ok(out.duration.as_nanos() as f64)
}

pub fn measure(object: &Path, runs: usize) -> Result<Figures> {
    let ns = fleet::host1_alone("pdp-bench-ovl", 1600)?;
    netns::enter(&ns.path())?;
    let mut dp = TestDataplane::load_from(object)?;
    dp.install(&fleet::host_document(0))?;
    // The whole pipeline on each path: kept decisions serve the same-host path only, so
    // with them (g) would be a lookup while (h) and (i) run every stage.
    dp.installed.maps.set_flow_cache(false)?;
    let from_a = L2 {
        src: A.mac,
        dst: ROUTER_MAC,
        vlan: None,
    };
    let payload = [0u8; 18];
    let same_host = packets::udp4(from_a, A.ipv4, B2.ipv4, 64, 40000, 7000, &payload);
    let to_b = packets::udp4(from_a, A.ipv4, B.ipv4, 64, 40000, 7000, &payload);
    let inner = packets::udp4(
        L2 {
            src: ROUTER_MAC,
            dst: A.mac,
            vlan: None,
        },
        B.ipv4,
        A.ipv4,
        64,
        7000,
        40000,
        &payload,
    );
    let tunnel = geneve4(
        Outer::geneve(
            fleet::uplink_mac(1),
            fleet::uplink_mac(0),
            fleet::underlay(1),
            fleet::underlay(0),
            fleet::vni("vpc-a"),
        ),
        &peering_option(fleet::vni("vpc-b"), fleet::tunnel_key("pcx-ab")),
        &inner,
    );
    let (a_if, b2_if, up_if) = (
        netns::ifindex(A.port),
        netns::ifindex(B2.port),
        netns::ifindex(fleet::UPLINK),
    );
    let baseline = packets::forwarded(&same_host, B2.mac, ROUTER_MAC);
    let (mut base, mut same, mut enc, mut dec) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        if i % 5000 == 0 {
            eprint!("\r  overlay single runs {i}/{runs}");
        }
        // Interleaved so that drift on a shared machine hits all four alike.
        base.push(once(&dp, program_names::REDIRECT_ONLY, b2_if, &baseline)?);
        same.push(once(&dp, program_names::PIPELINE, a_if, &same_host)?);
        enc.push(once(&dp, program_names::PIPELINE, a_if, &to_b)?);
        dec.push(once(&dp, program_names::PIPELINE, up_if, &tunnel)?);
    }
    eprintln!("\r  overlay single runs {runs}/{runs}");
    Ok(Figures {
        baseline: median(base),
        same_host: median(same),
        encap: median(enc),
        decap: median(dec),
    })
}

//! `bench e2e`, the cross-host row: the sending host's whole path, this data plane against
//! Linux doing the same job, on host 1 of the three-host seed (A's port and the uplink,
//! whose veth peer runs `pdp_sink` and counts what leaves toward host 2: UDP to 6081).
//! - This data plane: `pdp_xdp` on port A: the pipeline's checks, Geneve with the peering
//!   option, redirect to the uplink.
//! - Linux: the frames handed to the kernel on port A (`pdp_pass`), routed to VPC B's CIDR
//!   through a UDP tunnel device (VNI of vpc-b, remote host 2) whose packets leave by the
//!   uplink toward host 2's (permanent) neighbour. A Geneve device where the kernel has
//!   one; otherwise VXLAN, its built-in twin (kernels built without modules, such as this
//!   project's machines, have no Geneve): the same UDP encapsulation of an Ethernet frame
//!   with an 8-byte header and a VNI, without our 12-byte option.

use super::gen::{BenchGen, Next, Shape};
use super::rows::{alternating, line, Received, FLOWS};
use anyhow::Result;
use peer_dataplane::loadgen::GeneratorArg;
use peer_dataplane_common::{overlay::GENEVE_PORT, program_names};
use peer_dataplane_tests::fleet::{self, B2};
use peer_dataplane_tests::harness::TestDataplane;
use peer_dataplane_tests::netns;
use peer_dataplane_tests::seed::{mac_str, v4_str, A, B, ROUTER_MAC};
use std::path::Path;

/// Linux's tunnel: `Geneve` or `VXLAN` (to [`VXLAN_PORT`]).
fn linux_sender() -> Result<&'static str> {
    for kv in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ] {
        line(&format!("sysctl -q -w {kv}"))?;
    }
    let router = mac_str(&ROUTER_MAC);
    line(&format!(
        "sysctl -q -w net.ipv4.conf.{}.rp_filter=0",
        A.port
    ))?;
    line(&format!("ip link set {} address {router}", A.port))?;
    line(&format!("ip addr add {}/24 dev {}", v4_str(&A.gw4), A.port))?;
    let (vni, remote) = (fleet::vni("vpc-b"), v4_str(&fleet::underlay(1)));
    let kind = if line(&format!(
        "ip link add gnv0 type geneve id {vni} remote {remote} dstport {GENEVE_PORT}"
    ))
    .is_ok()
    {
        "Geneve"
    } else {
        line(&format!(
            "ip link add gnv0 type vxlan id {vni} remote {remote} dstport {VXLAN_PORT}"
        ))?;
        "VXLAN"
    };
    line("ip link set gnv0 mtu 1500 up")?;
    line("ip route add 172.16.0.0/16 dev gnv0")?;
    // The inner destination MAC is the router's, not B's: the generator's pages come round
    // again with the bytes of their last trip (see `e2e::linux_base`), and a frame must
    // still be addressed to port A then.
    line(&format!(
        "ip neigh replace {} lladdr {router} dev gnv0 nud permanent",
        v4_str(&B.ipv4)
    ))?;
    Ok(kind)
}

const VXLAN_PORT: u16 = 4789;

/// (this data plane, Linux), medians of `rounds`, and Linux's tunnel; with the generator
/// `arg` chooses here.
pub fn measure(
    object: &Path,
    arg: GeneratorArg,
    seconds: f64,
    rounds: usize,
) -> Result<((Received, Received), &'static str)> {
    let ns = fleet::host1_alone("pdp-e2e-fleet", 1600)?;
    netns::enter(&ns.path())?;
    let mut dp = TestDataplane::load_from(object)?;
    dp.install(&fleet::host_document(0))?;
    let kind = linux_sender()?;
    let linux_port = if kind == "Geneve" {
        GENEVE_PORT
    } else {
        VXLAN_PORT
    };
    // Keep the programs in the dispatcher (see `keep_in_dispatcher`); count on the uplink.
    dp.keep_in_dispatcher(program_names::PIPELINE, &format!("{}-peer", B2.port))?;
    dp.keep_in_dispatcher(program_names::SINK, "up0-peer")?;
    let template = super::rows::a_to_b_frame(&dp)?;
    let mut gen = BenchGen::choose(arg, A.port)?;
    eprint!("across hosts (sender): ");
    // Each side's tunnel packets are the sink's to count: ours to 6081, Linux's to its port.
    let figures = alternating(rounds, |linux| {
        let (next, port) = if linux {
            (Next::Kernel, linux_port)
        } else {
            (Next::Program(program_names::PIPELINE), GENEVE_PORT)
        };
        dp.sink_match_udp_dport(port)?;
        let shape = Shape {
            flows: FLOWS,
            threads: 1,
            seconds,
        };
        let r = gen.run(&mut dp, &template, A.port, next, shape)?;
        Ok(Received::of(&r))
    })?;
    eprintln!();
    Ok((figures, kind))
}

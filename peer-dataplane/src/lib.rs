//! peer-dataplane agent and operator CLI, as a library so that the integration tests and
//! benchmarks drive exactly the code the binary runs. Four wings, with one-way seams:
//!
//! - [`bpf`]: the only code that touches the kernel: pinned maps and their snapshot,
//!   program pins, XDP links, BPF_PROG_RUN.
//! - [`cli`]: the operator's commands (stats, inspect, conntrack, trace, loadgen) and the
//!   one renderer they share. Never imports [`agent`].
//! - [`loadgen`]: load generators (live frames, AF_XDP and AF_PACKET sockets) and the
//!   run that drives them; its sockets are the one other place that touches the kernel.
//! - [`agent`]: the run loop, following a file or the control plane, the metrics endpoint.
//!
//! The object model and the reconciler are the pure crate `peer-dataplane-model`,
//! re-exported here as [`desired`] and [`reconcile`].

pub mod agent;
pub mod bpf;
pub mod cli;
pub mod loadgen;
pub mod views;

pub use peer_dataplane_model::{desired, maps, reconcile};

/// The XDP object, when the build embedded one (see build.rs).
pub mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

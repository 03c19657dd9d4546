//! The pure half of peer-dataplane, shared by the agent and the control plane:
//!
//! - [`desired`]: the one object model. The state document, its validation into a
//!   [`desired::Topology`], and the compilation of a topology into the exact contents of
//!   every BPF map.
//! - [`reconcile`]: how installed map contents become the desired ones: the diff, the
//!   write order, table and ACL generations, all-or-nothing apply, and the in-memory map
//!   backend the unit tests plan against.
//!
//! Nothing here touches the kernel; the agent's `bpf` wing implements
//! [`maps::DataplaneMaps`] on the real maps.

pub mod desired;
pub mod maps;
pub mod reconcile;

//! peer-dataplane agent and operator CLI, as a library so that the integration tests and
//! benchmarks drive exactly the code the binary runs.

pub mod acl;
pub mod agent;
pub mod conntrack;
pub mod controlplane;
pub mod desired;
pub mod document;
pub mod ids;
pub mod inspect;
pub mod kernel;
pub mod links;
pub mod loadgen;
pub mod maps;
pub mod metrics;
pub mod progrun;
pub mod stats;
pub mod sync;
pub mod trace;
pub mod validate;

/// The XDP object, when the build embedded one (see build.rs).
pub mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

//! The ABI shared by the XDP program and the agent: map names, map keys and values,
//! drop/pass reasons and counter layouts, plus the small pieces of arithmetic both sides
//! need (address encoding, prefix masking, checksum updates).
//!
//! Every type here is `#[repr(C)]` with explicit padding and its size pinned at compile
//! time: the eBPF object and the agent are built separately and must agree bit for bit.
#![no_std]

pub mod acl;
pub mod addr;
pub mod cap;
pub mod checksum;
pub mod clock;
pub mod conntrack;
pub mod counters;
pub mod endpoint;
pub mod flowcache;
pub mod latency;
pub mod name;
pub mod overlay;
pub mod peering;
pub mod plain;
pub mod port;
pub mod reason;
pub mod registry;
pub mod route;
pub mod trace;

pub use endpoint::*;
pub use name::*;
pub use peering::*;
pub use plain::Plain;
pub use port::*;
pub use reason::{DropReason, PassReason};
pub use route::*;

/// Map names as they appear in the ELF object and as file names under [`PIN_DIR`].
pub use registry::names as map_names;

pub use registry::BPF_F_NO_PREALLOC;

/// Program names (ELF symbols) of the XDP entry points.
pub mod program_names {
    /// The forwarding pipeline.
    pub const PIPELINE: &str = "pdp_xdp";
    /// Benchmark baseline: a program that only redirects.
    pub const REDIRECT_ONLY: &str = "pdp_redirect_only";
    /// The pipeline with side effects off, recording each stage (`peer-dataplane trace`).
    pub const TRACE: &str = "pdp_trace";
    /// The programs the agent pins under `<pin dir>/programs/`, for the CLI's
    /// BPF_PROG_RUN (`trace`, `loadgen`) on the loaded code and its maps.
    pub const PINNED: [&str; 2] = [PIPELINE, TRACE];
    /// Benchmarks: hands every frame to the kernel's stack (`bench e2e`'s Linux run).
    pub const PASS: &str = "pdp_pass";
    /// Benchmarks: a flow of its own for each live frame, then the pipeline or the kernel.
    pub const LOADGEN: &str = "pdp_loadgen";
    /// Benchmarks: counts and drops every frame, behind the destination port.
    pub const SINK: &str = "pdp_sink";
    pub const PIN_SUBDIR: &str = "programs";
}

/// Where the agent pins its maps (bpffs).
pub const PIN_DIR: &str = "/sys/fs/bpf/peer-dataplane";

/// Capacity of each map. Hash maps are preallocated by the kernel, so these sizes are
/// the kernel memory the agent commits to at load time; the LPM trie is not preallocated.
pub const MAX_PORTS: u32 = 4096;
pub const MAX_ROUTES: u32 = 2 * 1024 * 1024;
/// Peerings are addressed by a dense slot so that their counters can live in a per-CPU
/// array (no hashing, no atomics on the hot path).
pub const MAX_PEERINGS: u32 = 1024;
pub const MAX_ENDPOINTS: u32 = 65536;
/// Hosts of the overlay a host may exchange traffic with.
pub const MAX_HOSTS: u32 = 16384;
/// VNIs and peering tunnel keys a host knows.
pub const MAX_OVERLAY_IDS: u32 = 65536;
/// Names of objects, and the rule number behind every ACL hit slot (up to
/// `acl::ACL_HIT_SLOTS` of those alone).
pub const MAX_NAMES: u32 = 65536;
/// Entries in each ACL lookup map (all sets together).
pub const MAX_ACL_ENTRIES: u32 = 262144;

//! Everything that touches the kernel: the pinned maps (typed handles, one snapshot read,
//! the plan writer), loading and pinning the program, XDP links and BPF_PROG_RUN.

pub mod ifindex;
pub mod interfaces;
pub mod links;
pub mod maps;
pub mod object;
pub mod pins;
pub mod probe;
pub mod progrun;
pub mod stored;
pub mod syscall;

/// The loaded XDP program type, for the wings that hand one to `bpf` (loadgen).
pub use aya::programs::Xdp;
pub use ifindex::KernelIfindex;
pub use maps::{monotonic_ns, KernelMaps};

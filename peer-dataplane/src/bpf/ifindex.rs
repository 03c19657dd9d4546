//! Interface names to ifindexes, as the kernel sees them in the agent's namespace.

use crate::desired::IfindexResolver;

/// The kernel's view, in the agent's network namespace.
pub struct KernelIfindex;

impl IfindexResolver for KernelIfindex {
    fn ifindex(&self, name: &str) -> Option<u32> {
        let c = std::ffi::CString::new(name).ok()?;
        // SAFETY: `c` is a valid NUL-terminated string.
        let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
        (idx != 0).then_some(idx)
    }
}

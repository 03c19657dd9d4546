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

    fn mtu(&self, name: &str) -> Option<u32> {
        let bytes = name.as_bytes();
        if bytes.len() >= libc::IFNAMSIZ {
            return None;
        }
        // SAFETY: a plain socket for the ioctl, closed below; `req` is a zeroed ifreq
        // holding the NUL-terminated name, which SIOCGIFMTU fills in.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return None;
            }
            let mut req: libc::ifreq = std::mem::zeroed();
            for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
                *d = *s as libc::c_char;
            }
            let rc = libc::ioctl(fd, libc::SIOCGIFMTU, &mut req);
            libc::close(fd);
            (rc == 0).then_some(req.ifr_ifru.ifru_mtu as u32)
        }
    }
}

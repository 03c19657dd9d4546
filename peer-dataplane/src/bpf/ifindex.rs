//! Interface names to ifindexes, as the kernel sees them in the agent's namespace, and
//! which interfaces may carry an instance's port.

use super::interfaces::{self, Link};
use crate::desired::IfindexResolver;
use std::sync::OnceLock;

/// The kinds of interface an instance's port is expected on (`--port-kinds`): a veth
/// (containers, namespaces), a tap (`tun`: QEMU, Firecracker), a macvtap, a netkit.
pub const DEFAULT_PORT_KINDS: [&str; 4] = ["veth", "tun", "macvtap", "netkit"];

/// The kernel's view, in the agent's network namespace.
pub struct KernelIfindex {
    /// Link kinds a port may be on (`device`: a driver's own interface, such as a NIC or
    /// an SR-IOV function, which has no kind).
    port_kinds: Vec<String>,
    /// The namespace's interfaces, read once (at the first port checked).
    links: OnceLock<Result<Vec<Link>, String>>,
}

impl KernelIfindex {
    pub fn new(port_kinds: &[String]) -> KernelIfindex {
        KernelIfindex {
            port_kinds: port_kinds.to_vec(),
            links: OnceLock::new(),
        }
    }
}

impl Default for KernelIfindex {
    fn default() -> Self {
        KernelIfindex::new(&DEFAULT_PORT_KINDS.map(String::from))
    }
}

impl IfindexResolver for KernelIfindex {
    /// The loopback, and any interface whose kind is not in `--port-kinds` (the host's
    /// NIC, a bridge, a bond, a VLAN, a tunnel): an XDP program there would take over the
    /// host's own traffic.
    fn refuse_port(&self, name: &str) -> Option<String> {
        let links = self
            .links
            .get_or_init(|| interfaces::list().map_err(|e| format!("{e:#}")));
        let links = match links {
            Ok(l) => l,
            Err(e) => return Some(format!("cannot tell what interface {name} is: {e}")),
        };
        let link = links.iter().find(|l| l.name == name)?;
        if link.flags & libc::IFF_LOOPBACK as u32 != 0 {
            return Some(format!(
                "interface {name} is a loopback; a port is an instance's interface"
            ));
        }
        let kind = link.kind.as_deref().unwrap_or("device");
        if self.port_kinds.iter().any(|k| k == kind) {
            return None;
        }
        let what = match kind {
            "device" => "a device's own interface (a NIC?)".to_string(),
            k => format!("a {k}"),
        };
        Some(format!(
            "interface {name} is {what}; this agent expects ports on {} interfaces (--port-kinds)",
            self.port_kinds.join(", ")
        ))
    }

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

//! The interfaces of a network namespace, as rtnetlink reports them: name, index, flags,
//! kind, queues, and for a veth its peer (index, and the peer's namespace id when the peer lives
//! in another namespace). sysfs cannot be trusted for this: a CLI entered into a namespace
//! with `nsenter --net` still sees the sysfs of the namespace that mounted it.

use anyhow::{bail, Context, Result};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// One interface of the calling thread's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_LINK`: a veth's peer index (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the peer's namespace as this namespace numbers it; absent
    /// when the peer is in this namespace.
    pub peer_netnsid: Option<i32>,
    /// `IFLA_INFO_KIND` (`veth`, `tun`, `bridge`, …); `None` for a device driver's own
    /// interface (a NIC) and the loopback.
    pub kind: Option<String>,
    /// `IFF_*` flags (`IFF_LOOPBACK`, `IFF_UP`, …).
    pub flags: u32,
    pub tx_queues: u32,
    pub rx_queues: u32,
}

const NLMSG_HDR: usize = 16;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWNSID: u16 = 88;
const RTM_GETNSID: u16 = 90;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_NUM_TX_QUEUES: u16 = 31;
const IFLA_NUM_RX_QUEUES: u16 = 32;
const IFLA_LINK_NETNSID: u16 = 37;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;

/// Every interface of the calling thread's namespace.
pub fn list() -> Result<Vec<Link>> {
    let sock = open()?;
    // ifinfomsg: family, pad, type, index, flags, change (all zero: every link).
    let mut req = header(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 16);
    req.extend_from_slice(&[0u8; 16]);
    finish(&mut req);
    send(&sock, &req)?;
    let mut links = Vec::new();
    recv_all(&sock, |kind, body| {
        if kind == RTM_NEWLINK && body.len() >= 16 {
            links.push(parse_link(body));
        }
    })?;
    Ok(links)
}

/// The id the calling thread's namespace gives the namespace behind `ns_fd` (what
/// [`Link::peer_netnsid`] holds for an interface there), if it gave it one.
pub fn netnsid_of(ns_fd: &impl AsRawFd) -> Result<Option<i32>> {
    let sock = open()?;
    // rtgenmsg (family, padded to 4) and NETNSA_FD.
    let mut req = header(RTM_GETNSID, NLM_F_REQUEST, 4);
    req.extend_from_slice(&[0u8; 4]);
    put_attr(
        &mut req,
        NETNSA_FD,
        &(ns_fd.as_raw_fd() as u32).to_ne_bytes(),
    );
    finish(&mut req);
    send(&sock, &req)?;
    let mut id = None;
    recv_all(&sock, |kind, body| {
        if kind == RTM_NEWNSID && body.len() >= 4 {
            for (t, v) in attrs(&body[4..]) {
                if t == NETNSA_NSID && v.len() >= 4 {
                    id = Some(i32::from_ne_bytes(v[..4].try_into().unwrap()));
                }
            }
        }
    })?;
    // -1: NETNSA_NSID_NOT_ASSIGNED.
    Ok(id.filter(|i| *i >= 0))
}

fn open() -> Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) with constant arguments; the fd is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening an rtnetlink socket");
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn header(kind: u16, flags: u16, body_hint: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDR + body_hint + 16);
    m.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel assigns it
    m
}

fn put_attr(m: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    m.extend_from_slice(&(len as u16).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(value);
    m.resize(m.len() + (align4(len) - len), 0);
}

fn finish(m: &mut [u8]) {
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn send(sock: &OwnedFd, req: &[u8]) -> Result<()> {
    // SAFETY: `req` is a valid buffer of its length; the kernel is the destination
    // (an unbound netlink socket sends to pid 0).
    let n = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error()).context("sending an rtnetlink request");
    }
    Ok(())
}

/// Reads answers until the dump's end (or a single answer's end), handing each message's
/// type and body to `each`.
fn recv_all(sock: &OwnedFd, mut each: impl FnMut(u16, &[u8])) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("reading an rtnetlink answer");
        }
        let mut rest = &buf[..n as usize];
        let mut multi = false;
        while rest.len() >= NLMSG_HDR {
            let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
            let flags = u16::from_ne_bytes(rest[6..8].try_into().unwrap());
            if len < NLMSG_HDR || len > rest.len() {
                bail!(
                    "a truncated rtnetlink message ({len} bytes of {})",
                    rest.len()
                );
            }
            let body = &rest[NLMSG_HDR..len];
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(body[..4].try_into().unwrap());
                    if errno == 0 {
                        return Ok(()); // an acknowledgement
                    }
                    return Err(io::Error::from_raw_os_error(-errno))
                        .context("the kernel refused an rtnetlink request");
                }
                _ => each(kind, body),
            }
            multi |= flags & 0x2 != 0; // NLM_F_MULTI: a dump, ended by NLMSG_DONE
            rest = &rest[align4(len).min(rest.len())..];
        }
        if !multi {
            return Ok(());
        }
    }
}

/// The (type, value) pairs of a run of rtattrs.
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff; // without NLA_F_NESTED etc.
        if len < 4 || len > b.len() {
            break;
        }
        out.push((kind, &b[4..len]));
        b = &b[align4(len).min(b.len())..];
    }
    out
}

fn parse_link(body: &[u8]) -> Link {
    let index = u32::from_ne_bytes(body[4..8].try_into().unwrap());
    let mut l = Link {
        index,
        flags: u32::from_ne_bytes(body[8..12].try_into().unwrap()),
        name: String::new(),
        peer_index: None,
        peer_netnsid: None,
        kind: None,
        tx_queues: 1,
        rx_queues: 1,
    };
    let u32_of = |v: &[u8]| (v.len() >= 4).then(|| u32::from_ne_bytes(v[..4].try_into().unwrap()));
    for (t, v) in attrs(&body[16..]) {
        match t {
            IFLA_IFNAME => {
                l.name =
                    String::from_utf8_lossy(v.split(|c| *c == 0).next().unwrap_or(&[])).into_owned()
            }
            IFLA_LINK => l.peer_index = u32_of(v),
            IFLA_LINK_NETNSID => l.peer_netnsid = u32_of(v).map(|n| n as i32),
            IFLA_NUM_TX_QUEUES => l.tx_queues = u32_of(v).unwrap_or(1),
            IFLA_NUM_RX_QUEUES => l.rx_queues = u32_of(v).unwrap_or(1),
            IFLA_LINKINFO => {
                for (it, iv) in attrs(v) {
                    if it == IFLA_INFO_KIND {
                        let k = iv.split(|c| *c == 0).next().unwrap_or(&[]);
                        l.kind = Some(String::from_utf8_lossy(k).into_owned());
                    }
                }
            }
            _ => {}
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed() {
        // Every namespace has `lo`; nothing here needs privileges.
        let links = list().unwrap();
        let lo = links.iter().find(|l| l.name == "lo").expect("lo");
        assert_eq!(lo.index, 1);
        assert!(lo.peer_netnsid.is_none());
        assert!(lo.flags & libc::IFF_LOOPBACK as u32 != 0 && lo.kind.is_none());
    }

    #[test]
    fn attributes_parse_with_padding() {
        let mut m = Vec::new();
        put_attr(&mut m, IFLA_IFNAME, b"veth0\0");
        put_attr(&mut m, IFLA_LINK, &7u32.to_ne_bytes());
        let a = attrs(&m);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0], (IFLA_IFNAME, &b"veth0\0"[..]));
        assert_eq!(a[1].0, IFLA_LINK);
    }
}

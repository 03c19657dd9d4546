//! The last resort: an AF_PACKET socket that hands batches of frames to the interface's
//! driver with `sendmmsg`, bypassing the qdisc layer (`PACKET_QDISC_BYPASS`). Every
//! kernel has it; each frame costs a copy into an skb and each batch one syscall. The
//! kernel picks the TX queue from the sending CPU, so threads pinned to different CPUs
//! use different queues.

use super::{sock, Sender};
use anyhow::{anyhow, bail, Context, Result};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Frames per `sendmmsg`.
const BATCH: usize = 256;
/// `linux/if_packet.h`; not in libc.
const PACKET_QDISC_BYPASS: libc::c_int = 20;
/// How long a send waits for the driver to take a frame before it gives up.
const STALL: Duration = Duration::from_secs(2);

pub struct PacketTx {
    fd: OwnedFd,
    frames: Vec<Vec<u8>>,
    next: usize,
}

impl PacketTx {
    /// A socket bound to `ifindex` in the calling thread's namespace.
    pub fn open(ifindex: u32, frames: &[Vec<u8>]) -> Result<PacketTx> {
        // Protocol 0: this socket receives nothing.
        let fd = sock::open(libc::AF_PACKET, libc::SOCK_RAW, 0)
            .context("AF_PACKET: opening a socket")?;
        sock::set(
            &fd,
            libc::SOL_PACKET,
            PACKET_QDISC_BYPASS,
            &(1 as libc::c_int),
        )
        .context("AF_PACKET: PACKET_QDISC_BYPASS")?;
        // SAFETY: zeroed plain struct, then filled.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("AF_PACKET: binding to ifindex {ifindex}"));
        }
        Ok(PacketTx {
            fd,
            frames: frames.to_vec(),
            next: 0,
        })
    }

    pub fn start_at(&mut self, i: usize) {
        self.next = i % self.frames.len();
    }

    /// One `sendmmsg` of up to `n` frames; returns how many the driver took.
    fn batch(&mut self, n: usize) -> Result<usize> {
        let n = n.min(BATCH);
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(n);
        for k in 0..n {
            let f = &self.frames[(self.next + k) % self.frames.len()];
            iov.push(libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            });
        }
        // SAFETY: zeroed headers, each pointing at one iovec that lives until the call
        // returns; the kernel only reads the frames.
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: `msgs` holds `n` valid headers.
        let rc = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                // The queue is busy or the socket's send buffer full: try again.
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => Ok(0),
                _ => Err(anyhow!(e).context("AF_PACKET: sendmmsg")),
            };
        }
        let sent = rc as usize;
        self.next = (self.next + sent) % self.frames.len();
        Ok(sent)
    }
}

impl Sender for PacketTx {
    fn send(&mut self, n: u64) -> Result<u64> {
        let mut done = 0u64;
        let mut progress = Instant::now();
        while done < n {
            let k = self.batch((n - done).min(BATCH as u64) as usize)?;
            if k > 0 {
                done += k as u64;
                progress = Instant::now();
            } else if progress.elapsed() > STALL {
                bail!(
                    "AF_PACKET: the interface took no frame for {} s: is it up?",
                    STALL.as_secs()
                );
            }
        }
        Ok(done)
    }

    fn finish(&mut self) -> Result<u64> {
        // sendmmsg returns once the driver has each frame: nothing is left in flight.
        Ok(0)
    }
}

//! An AF_XDP socket that only transmits: a UMEM holding every frame template once, a TX
//! ring filled in batches, and the completion ring drained as the kernel finishes frames.
//!
//! Transmitted frames are only read by the kernel (copied into an skb in copy mode, read
//! by the NIC's DMA in zero-copy mode), so many descriptors in flight may point at the
//! same template: nothing is copied per frame in userspace, and the UMEM is as small as
//! the templates (packed at a power-of-two stride, so none crosses a page: unaligned-chunk
//! mode). The kernel uses zero-copy where the driver has it; a driver without it (a veth)
//! gets copy mode, where each `sendto` makes the kernel transmit up to a budget of
//! descriptors.
//!
//! Written against the kernel's UAPI (`linux/if_xdp.h`, through libc) rather than a
//! crate: the TX-only subset is a few hundred lines, the crates that wrap libxdp/libbpf
//! would bring a C build the rest of the project avoids, and the pure-Rust one is under a
//! copyleft licence.

use super::{sock, Sender};
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// TX and completion ring entries (powers of two).
const RING: u32 = 2048;
/// Descriptors written per producer update.
const BATCH: u32 = 64;
/// The largest UMEM a generator thread maps.
const MAX_UMEM: usize = 256 << 20;
/// How long a send waits without any completion before it gives up.
const STALL: Duration = Duration::from_secs(2);

/// Whether the kernel maps the UMEM into the driver (zero-copy) or copies each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    ZeroCopy,
    Copy,
}

/// A memory mapping (the UMEM, or a ring the kernel shares), unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn anonymous(len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh private mapping; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        Self::checked(p, len)
    }

    fn ring(fd: &OwnedFd, len: usize, pgoff: u64) -> io::Result<Mapping> {
        // SAFETY: maps the kernel's ring of this socket at its documented page offset.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                pgoff as libc::off_t,
            )
        };
        Self::checked(p, len)
    }

    fn checked(p: *mut libc::c_void, len: usize) -> io::Result<Mapping> {
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).expect("mmap returned null"),
            len,
        })
    }

    fn at<T>(&self, off: u64) -> *mut T {
        // SAFETY: offsets come from the kernel's XDP_MMAP_OFFSETS, inside the mapping.
        unsafe { self.ptr.as_ptr().add(off as usize).cast() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One side of a ring shared with the kernel: its producer and consumer indexes, flags
/// and entries.
struct Ring<T> {
    _map: Mapping,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    entries: *mut T,
    mask: u32,
}

impl<T> Ring<T> {
    fn map(fd: &OwnedFd, off: &libc::xdp_ring_offset, pgoff: u64) -> io::Result<Ring<T>> {
        let len = off.desc as usize + RING as usize * std::mem::size_of::<T>();
        let m = Mapping::ring(fd, len, pgoff)?;
        Ok(Ring {
            producer: m.at(off.producer),
            consumer: m.at(off.consumer),
            flags: m.at(off.flags),
            entries: m.at(off.desc),
            mask: RING - 1,
            _map: m,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: inside the live mapping, aligned by the kernel.
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { &*self.consumer }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as above.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }
}

/// A transmit-only AF_XDP socket on one queue of one interface.
pub struct XskTx {
    fd: OwnedFd,
    tx: Ring<libc::xdp_desc>,
    completion: Ring<u64>,
    _umem: Mapping,
    /// (UMEM address, length) of each template, in sending order.
    templates: Vec<(u64, u32)>,
    next: usize,
    /// Our copy of the TX producer and the completion consumer.
    tx_head: u32,
    cq_head: u32,
    in_flight: u32,
    /// What the kernel chose at bind time.
    pub mode: Mode,
}

// SAFETY: the raw pointers point into mappings the socket owns; one thread uses it.
unsafe impl Send for XskTx {}

fn sockopt<T>(fd: &OwnedFd, name: i32, value: &T, what: &str) -> Result<()> {
    sock::set(fd, libc::SOL_XDP, name, value).with_context(|| format!("AF_XDP: {what}"))
}

impl XskTx {
    /// Opens a socket on queue `queue` of `ifindex` (in the calling thread's namespace)
    /// with `frames` as its templates. The bind names no mode: the kernel takes zero-copy
    /// where the driver has it and copy mode otherwise (asking for zero-copy first and
    /// then for copy leaves the queue busy for a while on some kernels).
    ///
    /// A queue whose earlier socket was just closed stays busy until the kernel has
    /// released it in the background (EBUSY): the bind is tried again for up to a second.
    pub fn open(ifindex: u32, queue: u32, frames: &[Vec<u8>]) -> Result<XskTx> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match Self::open_mode(ifindex, queue, frames) {
                Ok(x) => return Ok(x),
                Err(BindError::Bind(e))
                    if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(BindError::Bind(e)) => {
                    let busy = if e.raw_os_error() == Some(libc::EBUSY) {
                        " (another AF_XDP socket holds that queue)"
                    } else {
                        ""
                    };
                    return Err(anyhow!(e).context(format!(
                        "AF_XDP: binding to queue {queue} of ifindex {ifindex}{busy}"
                    )));
                }
                Err(BindError::Other(e)) => return Err(e),
            }
        }
    }

    fn open_mode(
        ifindex: u32,
        queue: u32,
        frames: &[Vec<u8>],
    ) -> std::result::Result<XskTx, BindError> {
        let longest = frames.iter().map(|f| f.len()).max().unwrap_or(0);
        if !(14..=4096).contains(&longest) {
            return Err(BindError::Other(anyhow!(
                "AF_XDP sends frames of 14 to 4096 bytes, not {longest}"
            )));
        }
        let stride = longest.next_power_of_two().max(64);
        let size = (frames.len() * stride).next_multiple_of(4096);
        if size > MAX_UMEM {
            return Err(BindError::Other(anyhow!(
                "AF_XDP: {} templates of {stride} bytes need {} MiB of UMEM per thread, more \
                 than {} MiB: use fewer --flows or a smaller --length",
                frames.len(),
                size >> 20,
                MAX_UMEM >> 20
            )));
        }
        let fd = sock::open(libc::AF_XDP, libc::SOCK_RAW, 0)
            .map_err(|e| BindError::Other(anyhow!(e).context("AF_XDP: opening a socket")))?;
        let umem = Mapping::anonymous(size)
            .map_err(|e| BindError::Other(anyhow!(e).context("AF_XDP: mapping the UMEM")))?;
        let mut templates = Vec::with_capacity(frames.len());
        for (i, f) in frames.iter().enumerate() {
            let at = (i * stride) as u64;
            // SAFETY: `at + f.len()` is inside the mapping (stride >= every length).
            unsafe {
                std::ptr::copy_nonoverlapping(f.as_ptr(), umem.at::<u8>(at), f.len());
            }
            templates.push((at, f.len() as u32));
        }
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr.as_ptr() as u64,
            len: size as u64,
            chunk_size: 4096,
            headroom: 0,
            flags: libc::XDP_UMEM_UNALIGNED_CHUNK_FLAG,
            tx_metadata_len: 0,
        };
        let other = BindError::Other;
        sockopt(&fd, libc::XDP_UMEM_REG, &reg, "registering the UMEM").map_err(other)?;
        // The fill ring is never used (nothing is received) but a UMEM must have one.
        for (opt, what) in [
            (libc::XDP_UMEM_FILL_RING, "sizing the fill ring"),
            (libc::XDP_UMEM_COMPLETION_RING, "sizing the completion ring"),
            (libc::XDP_TX_RING, "sizing the TX ring"),
        ] {
            sockopt(&fd, opt, &RING, what).map_err(other)?;
        }
        let off: libc::xdp_mmap_offsets = sock::get(&fd, libc::SOL_XDP, libc::XDP_MMAP_OFFSETS)
            .map_err(|e| other(anyhow!(e).context("AF_XDP: reading ring offsets")))?;
        let tx = Ring::map(&fd, &off.tx, libc::XDP_PGOFF_TX_RING as u64)
            .map_err(|e| other(anyhow!(e).context("AF_XDP: mapping the TX ring")))?;
        let completion = Ring::map(&fd, &off.cr, libc::XDP_UMEM_PGOFF_COMPLETION_RING)
            .map_err(|e| other(anyhow!(e).context("AF_XDP: mapping the completion ring")))?;
        let flags = libc::XDP_USE_NEED_WAKEUP;
        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `addr` is a sockaddr_xdp of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(BindError::Bind(io::Error::last_os_error()));
        }
        let opts = sock::get::<libc::xdp_options>(&fd, libc::SOL_XDP, libc::XDP_OPTIONS);
        let mode = if opts.is_ok_and(|o| o.flags & libc::XDP_OPTIONS_ZEROCOPY != 0) {
            Mode::ZeroCopy
        } else {
            Mode::Copy
        };
        let (tx_head, cq_head) = (
            tx.producer().load(Ordering::Relaxed),
            completion.consumer().load(Ordering::Relaxed),
        );
        Ok(XskTx {
            fd,
            tx,
            completion,
            _umem: umem,
            templates,
            next: 0,
            tx_head,
            cq_head,
            in_flight: 0,
            mode,
        })
    }

    /// Starts the template cycle at `i` (threads start apart).
    pub fn start_at(&mut self, i: usize) {
        self.next = i % self.templates.len();
    }

    /// Writes up to `n` descriptors into the TX ring; returns how many.
    fn submit(&mut self, n: u32) -> u32 {
        let free = RING
            - self
                .tx_head
                .wrapping_sub(self.tx.consumer().load(Ordering::Acquire));
        // Never more in flight than the completion ring can report.
        let n = n.min(free).min(RING - self.in_flight);
        for k in 0..n {
            let (addr, len) = self.templates[self.next];
            self.next += 1;
            if self.next == self.templates.len() {
                self.next = 0;
            }
            let slot = (self.tx_head.wrapping_add(k) & self.tx.mask) as usize;
            // SAFETY: the slot is ours until the producer index passes it.
            unsafe {
                self.tx.entries.add(slot).write(libc::xdp_desc {
                    addr,
                    len,
                    options: 0,
                })
            };
        }
        self.tx_head = self.tx_head.wrapping_add(n);
        self.tx.producer().store(self.tx_head, Ordering::Release);
        self.in_flight += n;
        n
    }

    /// Asks the kernel to transmit (copy mode transmits only when asked).
    fn kick(&self) -> Result<()> {
        if self.mode == Mode::ZeroCopy && !self.tx.needs_wakeup() {
            return Ok(());
        }
        // SAFETY: an empty send on our own socket.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // Busy, or more left than one call's budget: the next kick goes on.
            match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::EINTR) => {}
                _ => return Err(anyhow!(e).context("AF_XDP: transmitting")),
            }
        }
        Ok(())
    }

    /// Frames the kernel finished since the last call.
    fn reap(&mut self) -> u32 {
        let done = self
            .completion
            .producer()
            .load(Ordering::Acquire)
            .wrapping_sub(self.cq_head);
        if done > 0 {
            self.cq_head = self.cq_head.wrapping_add(done);
            self.completion
                .consumer()
                .store(self.cq_head, Ordering::Release);
            self.in_flight -= done;
        }
        done
    }
}

enum BindError {
    /// The bind itself failed (zero-copy refused, or the queue does not exist).
    Bind(io::Error),
    Other(anyhow::Error),
}

impl XskTx {
    /// Queues `n` more frames and, with `drain`, waits until none is in flight; returns
    /// how many frames the kernel finished meanwhile.
    fn pump(&mut self, n: u64, drain: bool) -> Result<u64> {
        let (mut queued, mut done) = (0u64, 0u64);
        let mut progress = Instant::now();
        while queued < n || (drain && self.in_flight > 0) {
            if queued < n {
                queued += self.submit((n - queued).min(BATCH as u64) as u32) as u64;
            }
            self.kick()?;
            let d = self.reap();
            if d > 0 {
                done += d as u64;
                progress = Instant::now();
            } else if progress.elapsed() > STALL {
                bail!(
                    "AF_XDP: no frame completed for {} s ({} in flight): is the interface up?",
                    STALL.as_secs(),
                    self.in_flight
                );
            }
        }
        Ok(done)
    }
}

impl Sender for XskTx {
    fn send(&mut self, n: u64) -> Result<u64> {
        self.pump(n, false)
    }

    fn finish(&mut self) -> Result<u64> {
        self.pump(0, true)
    }
}

/// Checks that `queues` exist for one socket per thread.
pub fn check_queues(ifname: &str, tx_queues: u32, rx_queues: u32, threads: usize) -> Result<()> {
    let have = tx_queues.min(rx_queues) as usize;
    ensure!(
        threads <= have,
        "--threads {threads} needs {threads} queues on {ifname}, which has {have}: AF_XDP \
         binds one socket per queue. Give the veth more (`ethtool -L {ifname} rx {threads} tx \
         {threads}` and the same on its peer, or create it with `numtxqueues {threads} \
         numrxqueues {threads}`), or use fewer threads"
    );
    Ok(())
}

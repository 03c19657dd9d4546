//! BPF_PROG_RUN in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`): the kernel builds real
//! frames from a template, runs the program on them as if received on the port, and
//! carries out its verdict: a redirect is transmitted on the target interface, a pass
//! enters the kernel's stack, a drop is dropped. Each call sends one template `repeat`
//! times; the next call the next template.

use super::Sender;
use crate::bpf::probe::errno_text;
use crate::bpf::progrun::run_live_frames;
use crate::bpf::Xdp;
use anyhow::{anyhow, Result};

/// Uses of each page of a call's pool: each BPF_PROG_RUN call gets a fresh pool of
/// `batch` pages, written from the template once. The kernel resets only a recycled
/// frame's pointers, not its bytes, so a page keeps the previous run's rewrite: the
/// data plane's TTL decrement (or the kernel's, for traffic passed to its stack). Calls
/// of `batch * PAGE_REUSES` frames keep a TTL-64 template above 1 on every page.
pub const PAGE_REUSES: u32 = 60;
pub const MAX_BATCH: u32 = 256;

pub struct LiveTx<'a> {
    prog: &'a Xdp,
    ingress_ifindex: u32,
    batch: u32,
    frames: Vec<(Vec<u8>, [u8; 24])>,
    next: usize,
}

// Threads share `&Xdp` read-only: BPF_PROG_RUN calls on one program may run at once.
impl<'a> LiveTx<'a> {
    pub fn new(
        prog: &'a Xdp,
        ingress_ifindex: u32,
        batch: u32,
        frames: &[Vec<u8>],
        start: usize,
    ) -> LiveTx<'a> {
        LiveTx {
            prog,
            ingress_ifindex,
            batch,
            frames: frames
                .iter()
                .map(|f| {
                    let ctx = crate::bpf::progrun::xdp_md(f.len(), ingress_ifindex);
                    (f.clone(), ctx)
                })
                .collect(),
            next: start % frames.len(),
        }
    }
}

impl Sender for LiveTx<'_> {
    fn send(&mut self, n: u64) -> Result<u64> {
        let mut done = 0;
        while done < n {
            let repeat = (n - done).min((self.batch * PAGE_REUSES) as u64) as u32;
            let (frame, ctx) = &self.frames[self.next];
            self.next = (self.next + 1) % self.frames.len();
            run_live_frames(self.prog, frame, ctx, repeat, self.batch)
                .map_err(|e| refused(e, self.ingress_ifindex))?;
            done += repeat as u64;
        }
        Ok(done)
    }

    fn finish(&mut self) -> Result<u64> {
        // Each call returns once its frames are done.
        Ok(0)
    }
}

/// A failed run, with its errno and the way out.
fn refused(e: std::io::Error, ifindex: u32) -> anyhow::Error {
    anyhow!(
        "BPF_PROG_RUN with live frames on ifindex {ifindex} failed: {}. {}",
        errno_text(&e),
        super::choose::LIVE_FRAMES_HINT
    )
}

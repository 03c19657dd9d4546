//! Load generators: frames into a port of the running data plane, as fast as one or more
//! CPUs can, by whichever mechanism this kernel allows (`peer-dataplane loadgen`, `cargo
//! xtask bench`).
//!
//! - **live frames**: BPF_PROG_RUN of the pinned pipeline with `BPF_F_TEST_XDP_LIVE_FRAMES`,
//!   as if the frames were received on the port; the verdicts are carried out. The
//!   cheapest per frame, and refused by some hardened kernels (EPERM).
//! - **AF_XDP**: a transmit-only XDP socket on the far end of the port (a veth's instance
//!   side, or the interface cabled to a NIC port), one per queue and thread; frames enter
//!   the port and meet its XDP hook, native or generic, as received traffic.
//! - **AF_PACKET**: `sendmmsg` on the same far end, past the qdisc layer; every kernel has it.
//!
//! [`choose`] decides which one runs; [`open`] opens one sender per thread; [`run`] drives
//! them and counts. The frames themselves are the caller's (`cli::loadgen` builds them).

pub mod choose;
pub mod far_end;
mod live;
mod packet;
mod sock;
pub mod xsk;

pub use choose::{choose, Choice, Generator, GeneratorArg};
pub use far_end::FarEnd;

use crate::bpf::Xdp;
use anyhow::{anyhow, ensure, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One generator thread's way of getting frames into the data plane.
pub trait Sender: Send {
    /// Sends `n` frames (the next ones of its templates); returns how many the kernel
    /// finished during the call (frames still in flight come back from later calls or
    /// from [`Sender::finish`]).
    fn send(&mut self, n: u64) -> Result<u64>;
    /// Waits for the frames still in flight; returns how many finished.
    fn finish(&mut self) -> Result<u64>;
}

/// Where the frames go in, by generator.
pub enum Source<'a> {
    /// BPF_PROG_RUN live frames of `prog`, as if received on `ingress_ifindex`, `batch`
    /// frames per kernel batch (at most [`live::MAX_BATCH`]).
    LiveFrames {
        prog: &'a Xdp,
        ingress_ifindex: u32,
        batch: u32,
    },
    /// AF_XDP from the far end of the port.
    AfXdp(FarEnd),
    /// AF_PACKET from the far end of the port.
    AfPacket(FarEnd),
}

impl Source<'_> {
    /// Where frames start: `as if received on ifindex 3`, `from eth0 (netns a)`.
    pub fn describe(&self) -> String {
        match self {
            Source::LiveFrames {
                ingress_ifindex, ..
            } => format!("as if received on ifindex {ingress_ifindex}"),
            Source::AfXdp(f) | Source::AfPacket(f) => format!("from {}", f.describe()),
        }
    }

    /// Frames a generator thread claims at a time.
    fn chunk(&self) -> u64 {
        match self {
            Source::LiveFrames { batch, .. } => (*batch * live::PAGE_REUSES) as u64,
            Source::AfXdp(_) | Source::AfPacket(_) => 4096,
        }
    }
}

/// Senders for `threads` threads (thread `w` on queue `w`), with `frames` as templates.
/// Each starts its cycle through the templates at its own offset.
pub fn open<'a>(source: &Source<'a>, frames: &[Vec<u8>], threads: usize) -> Result<Opened<'a>> {
    ensure!(threads >= 1, "--threads must be at least 1");
    ensure!(!frames.is_empty(), "no frames to send");
    let n = frames.len();
    let start = move |w: usize| w * n / threads;
    match source {
        Source::LiveFrames {
            prog,
            ingress_ifindex,
            batch,
        } => {
            ensure!(
                (1..=live::MAX_BATCH).contains(batch),
                "--batch must be 1 to {} (the kernel's limit)",
                live::MAX_BATCH
            );
            let senders = (0..threads)
                .map(|w| {
                    Box::new(live::LiveTx::new(
                        prog,
                        *ingress_ifindex,
                        *batch,
                        frames,
                        start(w),
                    )) as Box<dyn Sender + 'a>
                })
                .collect();
            Ok(Opened {
                senders,
                mode: None,
            })
        }
        Source::AfXdp(far) => {
            xsk::check_queues(&far.ifname, far.tx_queues, far.rx_queues, threads)?;
            // Sockets belong to the namespace they are created in: open them there.
            let (ifindex, frames) = (far.ifindex, frames.to_vec());
            let socks = far.in_namespace(move || {
                (0..threads)
                    .map(|w| {
                        let mut x = xsk::XskTx::open(ifindex, w as u32, &frames)?;
                        x.start_at(start(w));
                        Ok(x)
                    })
                    .collect::<Result<Vec<_>>>()
            })?;
            let mode = socks.first().map(|x| match x.mode {
                xsk::Mode::ZeroCopy => "zero-copy".to_string(),
                xsk::Mode::Copy => format!("copy mode: {} has no zero-copy", far.ifname),
            });
            Ok(Opened {
                senders: socks
                    .into_iter()
                    .map(|x| Box::new(x) as Box<dyn Sender + 'a>)
                    .collect(),
                mode,
            })
        }
        Source::AfPacket(far) => {
            let (ifindex, frames) = (far.ifindex, frames.to_vec());
            let socks = far.in_namespace(move || {
                (0..threads)
                    .map(|w| {
                        let mut p = packet::PacketTx::open(ifindex, &frames)?;
                        p.start_at(start(w));
                        Ok(p)
                    })
                    .collect::<Result<Vec<_>>>()
            })?;
            Ok(Opened {
                senders: socks
                    .into_iter()
                    .map(|p| Box::new(p) as Box<dyn Sender + 'a>)
                    .collect(),
                mode: Some("sendmmsg, qdisc bypassed".to_string()),
            })
        }
    }
}

/// Whether an AF_XDP socket binds at `far` (queue 0, one small template): `auto`'s probe.
pub fn probe_af_xdp(far: &FarEnd) -> Result<()> {
    let ifindex = far.ifindex;
    far.in_namespace(move || xsk::XskTx::open(ifindex, 0, &[vec![0u8; 64]]).map(|_| ()))
}

/// One sender per thread, ready to run.
pub struct Opened<'a> {
    senders: Vec<Box<dyn Sender + 'a>>,
    /// How the generator runs, where it matters (AF_XDP: zero-copy or copy).
    pub mode: Option<String>,
}

impl Opened<'_> {
    pub fn threads(&self) -> usize {
        self.senders.len()
    }
}

/// How long and how much.
#[derive(Debug, Clone)]
pub struct Load {
    /// Frames in all (`None`: until `duration` is up).
    pub packets: Option<u64>,
    pub duration: Duration,
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sent {
    pub packets: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub pps: f64,
    pub bits_per_second: f64,
    /// Frames each thread sent (thread `w` on CPU `w` and queue `w`).
    pub per_thread: Vec<u64>,
}

/// Drives `opened` (thread `w` pinned to CPU `w`; the senders can run again) under `load`: frames are claimed
/// `source.chunk()` at a time. `bytes_per_frame` is the frames' length (one length per
/// run); `progress` is called about every 200 ms with the frames sent so far.
pub fn run(
    source: &Source,
    opened: &mut Opened,
    bytes_per_frame: usize,
    load: &Load,
    progress: &mut dyn FnMut(u64, Duration),
) -> Result<Sent> {
    let chunk = source.chunk();
    let threads = opened.senders.len();
    let sent: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
    let claimed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let deadline = started + load.duration;
    // The run ends when the last thread's last frame is done (not when it is noticed).
    let ended: Result<Instant> = std::thread::scope(|s| {
        let workers: Vec<_> = opened
            .senders
            .iter_mut()
            .enumerate()
            .map(|(w, sender)| {
                let (sent, claimed, stop) = (&sent[w], &claimed, &stop);
                s.spawn(move || -> Result<Instant> {
                    let sender = sender.as_mut();
                    // Failing to pin only costs evenness.
                    let _ = crate::bpf::progrun::pin_thread_to_cpu(w % cpus);
                    while !stop.load(Ordering::Relaxed) {
                        let n = match load.packets {
                            Some(total) => {
                                let c = claimed.fetch_add(chunk, Ordering::Relaxed);
                                if c >= total {
                                    break;
                                }
                                (total - c).min(chunk)
                            }
                            None => chunk,
                        };
                        sent.fetch_add(sender.send(n)?, Ordering::Relaxed);
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                    sent.fetch_add(sender.finish()?, Ordering::Relaxed);
                    Ok(Instant::now())
                })
            })
            .collect();
        let total = || sent.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>();
        loop {
            std::thread::sleep(Duration::from_millis(200).min(load.duration));
            let done = workers.iter().all(|w| w.is_finished());
            progress(total(), started.elapsed());
            if done {
                break;
            }
            if Instant::now() >= deadline + Duration::from_secs(5) {
                stop.store(true, Ordering::Relaxed);
            }
        }
        let mut last = started;
        for w in workers {
            let end = w
                .join()
                .map_err(|_| anyhow!("a generator thread panicked"))??;
            last = last.max(end);
        }
        Ok(last)
    });
    let seconds = (ended? - started).as_secs_f64();
    let per_thread: Vec<u64> = sent.into_iter().map(|c| c.into_inner()).collect();
    let packets: u64 = per_thread.iter().sum();
    let bytes = packets * bytes_per_frame as u64;
    Ok(Sent {
        packets,
        bytes,
        seconds,
        pps: packets as f64 / seconds,
        bits_per_second: bytes as f64 * 8.0 / seconds,
        per_thread,
    })
}

/// A throttled progress line on stderr (carriage return on a terminal).
pub fn progress_printer(total: Option<u64>, duration: Duration) -> impl FnMut(u64, Duration) {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let mut last = (0u64, Duration::ZERO);
    let mut printed = Duration::ZERO;
    move |sent, elapsed| {
        if elapsed - printed < Duration::from_secs(1) {
            return;
        }
        let rate = (sent - last.0) as f64 / (elapsed - last.1).as_secs_f64().max(1e-9);
        last = (sent, elapsed);
        printed = elapsed;
        let of = match total {
            Some(t) => format!("{sent}/{t} frames"),
            None => format!(
                "{sent} frames, {:.0}/{:.0} s",
                elapsed.as_secs_f64(),
                duration.as_secs_f64()
            ),
        };
        let line = format!("loadgen: {of}, {:.3} Mpps", rate / 1e6);
        let mut e = std::io::stderr();
        if tty {
            let _ = write!(e, "\r{line}   ");
        } else {
            let _ = writeln!(e, "{line}");
        }
        let _ = e.flush();
    }
}

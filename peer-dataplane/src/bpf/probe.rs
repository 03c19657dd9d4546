//! Probes of what this kernel allows, made without side effects: a two-instruction XDP
//! program that drops everything, loaded with the raw `bpf(2)` call (no object, no maps),
//! and one BPF_PROG_RUN of it in live-frames mode on the port's ifindex. The frame is
//! dropped by the program: nothing is sent and no counter of the data plane moves.

use super::syscall::{bpf, put32, put64, ATTR};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// Which call of the probe failed, and how.
#[derive(Debug)]
pub enum Refusal {
    /// The probe program could not even be loaded.
    Load(io::Error),
    /// BPF_PROG_RUN with `BPF_F_TEST_XDP_LIVE_FRAMES` was refused.
    Run(io::Error),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Load(e) => write!(f, "loading a probe XDP program: {}", errno_text(e)),
            Refusal::Run(e) => write!(f, "BPF_PROG_RUN with live frames: {}", errno_text(e)),
        }
    }
}

/// `EPERM (Operation not permitted)`.
pub fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let text = io::Error::from_raw_os_error(n).to_string();
            let text = text.split(" (os error").next().unwrap_or_default();
            format!("{} ({text})", errno_name(n))
        }
        None => e.to_string(),
    }
}

/// The symbolic name of the errnos a BPF call returns.
pub fn errno_name(n: i32) -> String {
    match n {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        524 => "ENOTSUPP", // the kernel's own, not in libc
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::E2BIG => "E2BIG",
        libc::ENOMEM => "ENOMEM",
        libc::ENODEV => "ENODEV",
        libc::ENXIO => "ENXIO",
        libc::EBUSY => "EBUSY",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENOSYS => "ENOSYS",
        _ => return format!("errno {n}"),
    }
    .to_string()
}

/// Whether this kernel runs XDP programs with live frames on `ifindex`.
pub fn live_frames(ifindex: u32) -> Result<(), Refusal> {
    let prog = load_drop_program().map_err(Refusal::Load)?;
    // An Ethernet frame the program drops unread: broadcast, no payload to speak of.
    let mut frame = [0u8; 64];
    frame[..6].fill(0xff);
    frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes()); // a local experimental type
    let ctx = super::progrun::xdp_md(frame.len(), ifindex);
    let mut attr = [0u8; ATTR];
    put32(&mut attr, 0, prog.as_raw_fd() as u32); // prog_fd
    put32(&mut attr, 8, frame.len() as u32); // data_size_in
    put64(&mut attr, 16, frame.as_ptr() as u64); // data_in
    put32(&mut attr, 32, 1); // repeat
    put32(&mut attr, 40, ctx.len() as u32); // ctx_size_in
    put64(&mut attr, 48, ctx.as_ptr() as u64); // ctx_in
    put32(&mut attr, 64, BPF_F_TEST_XDP_LIVE_FRAMES); // flags
    put32(&mut attr, 72, 1); // batch_size
    bpf(BPF_PROG_TEST_RUN, &mut attr).map_err(Refusal::Run)?;
    Ok(())
}

/// `r0 = XDP_DROP; exit`.
fn load_drop_program() -> io::Result<OwnedFd> {
    let insns: [u64; 2] = [
        // BPF_ALU64 | BPF_MOV | BPF_K (0xb7), dst r0, imm = XDP_DROP (1)
        u64::from_le_bytes([0xb7, 0, 0, 0, 1, 0, 0, 0]),
        // BPF_JMP | BPF_EXIT (0x95)
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = b"GPL\0";
    let mut attr = [0u8; ATTR];
    put32(&mut attr, 0, BPF_PROG_TYPE_XDP);
    put32(&mut attr, 4, insns.len() as u32);
    put64(&mut attr, 8, insns.as_ptr() as u64);
    put64(&mut attr, 16, license.as_ptr() as u64);
    attr[48..48 + 9].copy_from_slice(b"pdp_probe"); // prog_name
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: the kernel returned a new program fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

//! Real traffic between instance namespaces: ping, a UDP exchange and a TCP exchange, each
//! reporting whether the reply came back.

use crate::netns::Netns;
use crate::seed::{v4_str, v6_str, Instance};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

fn addr(i: &Instance, v6: bool, port: u16) -> SocketAddr {
    let ip: IpAddr = if v6 { i.ipv6.into() } else { i.ipv4.into() };
    SocketAddr::new(ip, port)
}

/// Runs ping in `ns` with `args` (count, destination, ...); Ok(true) if every echo was
/// answered.
fn ping_with(ns: &Netns, args: &[&str]) -> Result<bool> {
    let out = ns
        .command("ping")
        .args(["-n", "-q", "-i", "0.2", "-W", "1"])
        .args(args)
        .output()
        .context("running ping")?;
    Ok(out.status.success())
}

/// `ping -c count` from `ns` to `dst`.
pub fn ping(ns: &Netns, dst: &str, count: u32) -> Result<bool> {
    ping_with(ns, &["-c", &count.to_string(), dst])
}

pub fn ping_instance(ns: &Netns, to: &Instance, v6: bool, count: u32) -> Result<bool> {
    ping(
        ns,
        &if v6 {
            v6_str(&to.ipv6)
        } else {
            v4_str(&to.ipv4)
        },
        count,
    )
}

/// True for the errors a dropped packet causes (nothing arrived in time); any other error
/// is a broken test setup and must not pass as "blocked".
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Sends `payload` from `from` to `to` over UDP and waits for the echo. Ok(false) if no
/// packet arrived at the server within the timeout; an error for anything else.
pub fn udp_exchange(
    from_ns: &Netns,
    from: &Instance,
    to_ns: &Netns,
    to: &Instance,
    v6: bool,
    port: u16,
) -> Result<bool> {
    let server_addr = addr(to, v6, port);
    let client_addr = addr(from, v6, 0);
    let server = to_ns.run(move || UdpSocket::bind(server_addr))??;
    let client = from_ns.run(move || UdpSocket::bind(client_addr))??;
    server.set_read_timeout(Some(TIMEOUT))?;
    client.set_read_timeout(Some(TIMEOUT))?;
    let payload = b"peer-dataplane udp probe";
    client.send_to(payload, server_addr)?;
    let mut buf = [0u8; 256];
    let (n, peer) = match server.recv_from(&mut buf) {
        Ok(x) => x,
        Err(e) if timed_out(&e) => return Ok(false),
        Err(e) => return Err(e).context("udp server receive"),
    };
    if &buf[..n] != payload {
        bail!("udp server got {:?}", &buf[..n]);
    }
    server.send_to(b"pong", peer)?;
    let (n, _) = client
        .recv_from(&mut buf)
        .context("udp reply never came back")?;
    Ok(&buf[..n] == b"pong")
}

/// Connects over TCP from `from` to `to`, sends a line and reads it back. Ok(false) if the
/// connection was not established within the timeout (its SYNs dropped); an error for
/// anything else (a refused connection means the packets got through).
pub fn tcp_exchange(
    from_ns: &Netns,
    to_ns: &Netns,
    to: &Instance,
    v6: bool,
    port: u16,
) -> Result<bool> {
    let server_addr = addr(to, v6, port);
    let listener = to_ns.run(move || TcpListener::bind(server_addr))??;
    let echo = std::thread::spawn(move || -> Result<()> {
        listener.set_nonblocking(false)?;
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(TIMEOUT))?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        s.write_all(&buf[..n])?;
        Ok(())
    });
    let stream = from_ns.run(move || TcpStream::connect_timeout(&server_addr, TIMEOUT))?;
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) if timed_out(&e) => return Ok(false),
        Err(e) => return Err(e).context("tcp connect"),
    };
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(b"hello over tcp\n")?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf)?;
    echo.join()
        .map_err(|_| anyhow::anyhow!("tcp echo thread panicked"))??;
    Ok(&buf[..n] == b"hello over tcp\n")
}

/// Adds `addr` to an instance's eth0 so it can send packets that claim another source
/// (an instance relaying traffic it received from elsewhere).
pub fn add_alias(ns: &Netns, addr: &[u8; 4]) -> Result<()> {
    ns.ip(&[
        "addr",
        "add",
        &format!("{}/32", v4_str(addr)),
        "dev",
        "eth0",
    ])?;
    Ok(())
}

/// Two pings from `ns` with source address `src` (see [`add_alias`]).
pub fn ping_from(ns: &Netns, src: &[u8; 4], dst: &[u8; 4]) -> Result<bool> {
    ping_with(ns, &["-c", "2", "-I", &v4_str(src), &v4_str(dst)])
}

/// What a paced UDP stream delivered.
#[derive(Debug, Clone, Copy)]
pub struct Stream {
    pub sent: u64,
    pub received: u64,
    /// Ethernet frame size of each datagram (what the data plane counts and caps).
    pub frame_len: u64,
    pub elapsed: Duration,
}

impl Stream {
    pub fn offered_bps(&self) -> f64 {
        (self.sent * self.frame_len * 8) as f64 / self.elapsed.as_secs_f64()
    }
}

/// Sets a socket buffer size beyond `rmem_max`/`wmem_max` (root may) and checks that the
/// kernel took it: a silently capped buffer would lose datagrams under load.
fn force_buffer(s: &UdpSocket, bytes: libc::c_int, receive: bool) -> Result<()> {
    use std::os::fd::AsRawFd;
    let (force, read_back) = if receive {
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)
    } else {
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)
    };
    let fd = s.as_raw_fd();
    // SAFETY: valid socket, option value and lengths.
    let set = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            force,
            &bytes as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        bail!(
            "setting a {bytes}-byte socket buffer: {}",
            std::io::Error::last_os_error()
        );
    }
    let mut got: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            read_back,
            &mut got as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    // The kernel doubles the value for its bookkeeping.
    if got < bytes {
        bail!("asked for a {bytes}-byte socket buffer, the kernel gave {got}");
    }
    Ok(())
}

/// Sends IPv4 UDP datagrams of `payload_len` bytes from `from` to `to` at `rate_bps`
/// (counted in Ethernet frame bits) for `duration`, paced every millisecond, while a
/// receiver in `to_ns` counts what arrives. Prints progress once a second.
///
/// The sender never bursts to catch up after it was descheduled: it sends at most 5 ms of
/// the rate at once and lets the rest go (the stream then offers a little less). The
/// receiver is stopped once the data plane has decided every datagram sent and the
/// receiver has counted every one forwarded: `decided` reads the data plane's running
/// counts of this stream's packets, (forwarded, dropped).
#[allow(clippy::too_many_arguments)]
pub fn udp_stream(
    from_ns: &Netns,
    from: &Instance,
    to_ns: &Netns,
    to: &Instance,
    rate_bps: u64,
    duration: Duration,
    payload_len: usize,
    decided: &dyn Fn() -> Result<(u64, u64)>,
) -> Result<Stream> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    let port = 9300;
    let server_addr = addr(to, false, port);
    let client_addr = addr(from, false, 0);
    let server = to_ns.run(move || UdpSocket::bind(server_addr))??;
    let client = from_ns.run(move || UdpSocket::bind(client_addr))??;
    // Room for a few hundred milliseconds of arrivals: the count must not depend on how
    // promptly this thread is scheduled.
    force_buffer(&server, 8 << 20, true)?;
    force_buffer(&client, 8 << 20, false)?;
    server.set_read_timeout(Some(Duration::from_millis(100)))?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (received, stop) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if server.recv_from(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let (fwd0, drop0) = decided()?;
    let frame_len = (14 + 20 + 8 + payload_len) as u64;
    let payload = vec![0x5au8; payload_len];
    let per_ns = rate_bps as f64 / (frame_len * 8) as f64 / 1e9;
    let max_burst = ((per_ns * 5e6) as u64).max(1);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut skipped = 0u64;
    let mut next_report = Duration::from_secs(1);
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        // Datagrams the rate allows by now; what is more than one burst behind is let go.
        let due = (elapsed.as_nanos() as f64 * per_ns) as u64;
        if due > sent + skipped + max_burst {
            skipped = due - sent - max_burst;
        }
        while sent + skipped < due {
            client.send_to(&payload, server_addr)?;
            sent += 1;
        }
        if elapsed >= next_report {
            eprintln!(
                "    {:>2} s: sent {sent}, received {}",
                next_report.as_secs(),
                received.load(Ordering::Relaxed)
            );
            next_report += Duration::from_secs(1);
        }
        // Pacing: the next millisecond's share of the rate.
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed();
    let mut delivered = 0;
    let landed = crate::wait_until(
        &format!("the data plane deciding all {sent} datagrams sent"),
        Duration::from_secs(10),
        || {
            let (fwd, drop) = decided()?;
            delivered = fwd - fwd0;
            Ok(delivered + (drop - drop0) >= sent)
        },
    )
    .and_then(|()| {
        crate::wait_until(
            &format!("the receiver counting all {delivered} forwarded datagrams"),
            Duration::from_secs(10),
            || Ok(received.load(Ordering::Relaxed) >= delivered),
        )
    });
    stop.store(true, Ordering::Relaxed);
    receiver
        .join()
        .map_err(|_| anyhow::anyhow!("udp receiver panicked"))?;
    landed.with_context(|| {
        format!(
            "received {} of {delivered} forwarded",
            received.load(Ordering::Relaxed)
        )
    })?;
    Ok(Stream {
        sent,
        received: received.load(Ordering::Relaxed),
        frame_len,
        elapsed,
    })
}

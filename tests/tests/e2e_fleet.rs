//! End to end across hosts: three hosts as network namespaces joined by an underlay
//! bridge, each with its own agent process, pin directory and state document (what the
//! control plane sends that host); the seed's instances spread over them (A and a second
//! B instance on host 1, B on host 2, C on host 3). Real packets through native XDP on
//! veth: encapsulated on one host, checked and decapsulated on the other.
//! Needs root, BPF and network namespaces; namespaces and pins are removed on drop.

use anyhow::{ensure, Context, Result};
use peer_dataplane::desired::document::Document;
use peer_dataplane::desired::validate::PeeringStatus;
use peer_dataplane_tests::fleet::{self, FleetNetwork, B2};
use peer_dataplane_tests::netns::Netns;
use peer_dataplane_tests::packets::{geneve4, peering_option, Outer};
use peer_dataplane_tests::seed::{self, Agent, Instance, A, B, C, ROUTER_MAC};
use peer_dataplane_tests::traffic::{ping_instance, tcp_exchange, udp_exchange};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

struct Fleet {
    net: FleetNetwork,
    agents: Vec<Agent>,
    dir: PathBuf,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.agents.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fleet {
    fn start(tag: &str, uplink_mtu: u32) -> Result<Fleet> {
        peer_dataplane_tests::require_root()?;
        let bin = peer_dataplane_tests::agent_path()?;
        let dir = std::env::temp_dir().join(peer_dataplane_tests::unique(tag));
        std::fs::create_dir_all(&dir)?;
        let net = FleetNetwork::create(&peer_dataplane_tests::unique(tag), uplink_mtu)?;
        let mut fleet = Fleet {
            net,
            agents: Vec::new(),
            dir,
        };
        for i in 0..fleet::HOSTS.len() {
            let config = fleet.dir.join(format!("host-{}.toml", i + 1));
            std::fs::write(&config, fleet::host_document(i).to_toml())?;
            let pin_dir = PathBuf::from("/sys/fs/bpf")
                .join(peer_dataplane_tests::unique(&format!("{tag}-h{}", i + 1)));
            let agent = Agent::start(&bin, &fleet.net.hosts[i], &config, &pin_dir, "native")
                .with_context(|| format!("starting host {}'s agent", i + 1))?;
            fleet.agents.push(agent);
        }
        Ok(fleet)
    }

    fn agent(&self, i: Instance) -> &Agent {
        &self.agents[fleet::host_of(i)]
    }

    fn ns(&self, i: Instance) -> &Netns {
        self.net.ns(i)
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .enumerate()
            .map(|(i, a)| format!("--- host {} ---\n{}", i + 1, a.log_text()))
            .collect()
    }
}

fn peering<'a>(stats: &'a Value, id: &str) -> &'a Value {
    stats["peerings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {stats}"))
}

fn packets(stats: &Value, pcx: &str, dir: &str) -> u64 {
    peering(stats, pcx)[dir]["packets"].as_u64().unwrap_or(0)
}

fn dropped(stats: &Value, reason: &str) -> u64 {
    stats["global"]["dropped"][reason].as_u64().unwrap_or(0)
}

const RA: &str = "requester_to_accepter";

#[test]
fn instances_on_different_hosts_exchange_ping_udp_tcp() -> Result<()> {
    let f = Fleet::start("fl-fwd", 1600)?;
    let (a, b, c, b2) = (f.ns(A), f.ns(B), f.ns(C), f.ns(B2));
    let h1_before = f.agent(A).stats_json()?;
    let h2_before = f.agent(B).stats_json()?;
    ensure!(
        ping_instance(a, &B, false, 3)?,
        "ping a (host 1) -> b (host 2) failed\n{}",
        f.logs()
    );
    ensure!(ping_instance(b, &A, true, 3)?, "ping b -> a (IPv6) failed");
    ensure!(
        ping_instance(c, &B, false, 2)?,
        "ping c (host 3) -> b failed"
    );
    ensure!(
        ping_instance(b2, &C, true, 2)?,
        "ping b2 (host 1) -> c (host 3) failed"
    );
    ensure!(
        ping_instance(a, &B2, false, 2)?,
        "ping a -> b2 (same host) failed"
    );
    ensure!(
        udp_exchange(a, &A, b, &B, false, 7000)?,
        "udp a <-> b failed"
    );
    ensure!(
        udp_exchange(c, &C, b2, &B2, true, 7001)?,
        "udp c <-> b2 (IPv6) failed"
    );
    ensure!(tcp_exchange(a, b, &B, false, 7002)?, "tcp a -> b failed");
    ensure!(
        tcp_exchange(b, a, &A, true, 7003)?,
        "tcp b -> a (IPv6) failed"
    );

    // Both ends count the peering's traffic in its direction.
    let h1 = f.agent(A).stats_json()?;
    let h2 = f.agent(B).stats_json()?;
    let sent = packets(&h1, "pcx-ab", RA) - packets(&h1_before, "pcx-ab", RA);
    let received = packets(&h2, "pcx-ab", RA) - packets(&h2_before, "pcx-ab", RA);
    ensure!(sent >= 6, "host 1 counted {sent} packets a -> b");
    ensure!(received >= 3, "host 2 counted {received} packets a -> b");

    // Not transitive across hosts either: a has no route to c.
    f.agent(A)
        .expect_ping_dropped("a -> c (no peering)", a, &C, "no-route", 2)?;
    // b relays a's address toward c: b's host refuses it as transitive.
    peer_dataplane_tests::traffic::add_alias(b, &A.ipv4)?;
    let agent = f.agent(B);
    agent.expect_dropped("b relays a's packet to c", "transitive", 2..=2, || {
        peer_dataplane_tests::traffic::ping_from(b, &A.ipv4, &C.ipv4)
    })?;
    Ok(())
}

/// UDP from `from_ns` (any address of it) to host 1's underlay address, port 6081,
/// carrying `payload` (a Geneve header and an inner frame).
fn send_tunnel_payload(from_ns: &Netns, bind: [u8; 4], payload: Vec<u8>, n: usize) -> Result<()> {
    let dst = SocketAddr::from((fleet::underlay(0), 6081));
    let sock = from_ns.run(move || UdpSocket::bind(SocketAddr::from((bind, 40123))))??;
    for _ in 0..n {
        sock.send_to(&payload, dst)?;
    }
    Ok(())
}

/// A Geneve payload (everything after the outer UDP header) claiming `inner_src` in
/// `src_vpc` sends to A on host 1 over pcx-ab.
fn geneve_to_a(inner_src: [u8; 4], src_vpc: &str, dport: u16) -> Vec<u8> {
    let inner = peer_dataplane_tests::packets::udp4(
        peer_dataplane_tests::packets::L2 {
            src: ROUTER_MAC,
            dst: A.mac,
            vlan: None,
        },
        inner_src,
        A.ipv4,
        64,
        5555,
        dport,
        b"spoofed",
    );
    // Only the UDP payload is sent: the outer addresses are the sender kernel's.
    let outer = Outer::geneve([0; 6], [0; 6], [0; 4], [0; 4], fleet::vni("vpc-a"));
    let framed = geneve4(
        outer,
        &peering_option(fleet::vni(src_vpc), fleet::tunnel_key("pcx-ab")),
        &inner,
    );
    // Only the UDP payload: the sender's kernel writes the outer headers.
    framed[14 + 20 + 8..].to_vec()
}

#[test]
fn spoofed_tunnels_never_reach_an_instance() -> Result<()> {
    let f = Fleet::start("fl-spoof", 1600)?;
    let a = f.ns(A);
    // A listens; nothing spoofed may arrive.
    let listener = a.run(|| UdpSocket::bind(SocketAddr::from((A.ipv4, 7100))))??;
    listener.set_read_timeout(Some(Duration::from_millis(500)))?;

    // A machine on the underlay that is no host.
    let rogue = Netns::create(&peer_dataplane_tests::unique("fl-rogue"))?;
    let port = "ul9";
    peer_dataplane_tests::netns::veth(&rogue, "eth0", None, &f.net.underlay, port, None)?;
    f.net.underlay.ip(&["link", "set", port, "master", "br0"])?;
    rogue.ip(&["addr", "add", "192.0.2.77/24", "dev", "eth0"])?;

    let h1 = f.agent(A);
    let before = h1.stats_json()?;
    send_tunnel_payload(
        &rogue,
        [192, 0, 2, 77],
        geneve_to_a(B.ipv4, "vpc-b", 7100),
        5,
    )?;
    // Host 3 speaking for B, which lives on host 2.
    let h3 = &f.net.hosts[2];
    send_tunnel_payload(
        h3,
        fleet::underlay(2),
        geneve_to_a(B.ipv4, "vpc-b", 7100),
        4,
    )?;
    // Host 2 speaking for B as an instance of vpc-c.
    let h2 = &f.net.hosts[1];
    send_tunnel_payload(
        h2,
        fleet::underlay(1),
        geneve_to_a(B.ipv4, "vpc-c", 7100),
        3,
    )?;

    let mut buf = [0u8; 256];
    let got = listener.recv_from(&mut buf);
    ensure!(got.is_err(), "a spoofed frame reached A: {got:?}");
    peer_dataplane_tests::wait_until(
        "host 1 to count the spoofed frames",
        Duration::from_secs(5),
        || {
            let after = h1.stats_json()?;
            Ok(
                dropped(&after, "unknown-host") - dropped(&before, "unknown-host") == 5
                    && dropped(&after, "spoofed-source") - dropped(&before, "spoofed-source") == 7,
            )
        },
    )?;

    // The same Geneve from host 2 speaking for its own B does arrive.
    send_tunnel_payload(
        h2,
        fleet::underlay(1),
        geneve_to_a(B.ipv4, "vpc-b", 7100),
        1,
    )?;
    let (n, _) = listener
        .recv_from(&mut buf)
        .context("host 2's genuine tunnel frame did not reach A")?;
    ensure!(&buf[..n] == b"spoofed", "A got {:?}", &buf[..n]);
    Ok(())
}

fn set_status(doc: &mut Document, pcx: &str, status: &str) {
    doc.peerings
        .iter_mut()
        .find(|p| p.id == pcx)
        .unwrap()
        .status = PeeringStatus::parse(status).expect("a status");
}

#[test]
fn a_peering_deleted_on_either_host_blackholes_at_that_host() -> Result<()> {
    let mut f = Fleet::start("fl-del", 1600)?;
    ensure!(
        udp_exchange(f.ns(A), &A, f.ns(B), &B, false, 7200)?,
        "udp a <-> b before the delete\n{}",
        f.logs()
    );
    // Host 2 (the receiver of a -> b) syncs the delete first: it drops what host 1 sends.
    let h2 = fleet::host_of(B);
    let mut doc = fleet::host_document(h2);
    set_status(&mut doc, "pcx-ab", "deleted");
    f.agents[h2].reload(&doc)?;
    let (a, b) = (f.net.ns(A), f.net.ns(B));
    f.agents[h2].expect_dropped(
        "a -> b, deleted on host 2 only",
        "peering-inactive",
        2..=2,
        || ping_instance(a, &B, false, 2),
    )?;
    // Then host 1: a -> b now stops at its source.
    let h1 = fleet::host_of(A);
    let mut doc = fleet::host_document(h1);
    set_status(&mut doc, "pcx-ab", "deleted");
    f.agents[h1].reload(&doc)?;
    f.agents[h1].expect_ping_dropped("a -> b, deleted on both", a, &B, "peering-inactive", 2)?;
    // pcx-bc still works across hosts.
    ensure!(
        ping_instance(f.ns(C), &B, false, 2)?,
        "c -> b after pcx-ab's delete"
    );
    let _ = b;
    Ok(())
}

#[test]
fn tcp_at_full_mtu_crosses_a_1500_byte_underlay_by_path_mtu_discovery() -> Result<()> {
    // Uplinks of 1500: a 1500-byte instance packet does not fit once encapsulated.
    let f = Fleet::start("fl-pmtu", 1500)?;
    let (a, b) = (f.net.ns(A), f.net.ns(B));
    let h1 = f.agent(A);
    let before = h1.stats_json()?;

    // An oversized DF ping gets its answer: fragmentation needed, next-hop MTU 1438.
    let out = a
        .command("ping")
        .args(["-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1472"])
        .arg(seed::v4_str(&B.ipv4))
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    ensure!(
        text.contains("1438"),
        "no ICMP with mtu 1438 for the oversized ping:\n{text}\nhost 1: {}",
        h1.stats_json()?["global"]
    );

    // A real TCP transfer of 4 MiB at the instance's 1500-byte MTU.
    const SIZE: usize = 4 << 20;
    let server = SocketAddr::from((B.ipv4, 7300));
    let listener = b.run(move || TcpListener::bind(server))??;
    let sink = std::thread::spawn(move || -> Result<usize> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut total = 0;
        let mut buf = vec![0u8; 65536];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    });
    let mut stream =
        a.run(move || TcpStream::connect_timeout(&server, Duration::from_secs(5)))??;
    stream.set_write_timeout(Some(Duration::from_secs(20)))?;
    let chunk = vec![0x42u8; 65536];
    for _ in 0..SIZE / chunk.len() {
        stream.write_all(&chunk)?;
    }
    drop(stream);
    let got = sink
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    ensure!(got == SIZE, "received {got} of {SIZE} bytes\n{}", f.logs());
    let after = h1.stats_json()?;
    let answered = dropped(&after, "mtu-exceeded") - dropped(&before, "mtu-exceeded");
    ensure!(answered >= 1, "no packet was answered with ICMP too-big");
    Ok(())
}

#[test]
fn killing_one_hosts_agent_loses_nothing() -> Result<()> {
    let mut f = Fleet::start("fl-kill", 1600)?;
    let (a, b) = (f.net.ns(A), f.net.ns(B));
    ensure!(
        ping_instance(a, &B, false, 2)?,
        "a -> b before the kill\n{}",
        f.logs()
    );
    // Host 2's agent dies; its program and maps stay pinned and attached.
    let h2 = fleet::host_of(B);
    f.agents[h2].kill_hard()?;
    let sock_b = b.run(|| UdpSocket::bind(SocketAddr::from((B.ipv4, 7400))))??;
    sock_b.set_read_timeout(Some(Duration::from_secs(2)))?;
    let sock_a = a.run(|| UdpSocket::bind(SocketAddr::from((A.ipv4, 0))))??;
    // In lockstep: each datagram must arrive before the next is sent, so a loss is seen
    // as the datagram it is (and no burst overruns a veth ring).
    const N: u32 = 200;
    let mut buf = [0u8; 16];
    for i in 0..N {
        sock_a.send_to(&i.to_be_bytes(), SocketAddr::from((B.ipv4, 7400)))?;
        let (n, _) = sock_b
            .recv_from(&mut buf)
            .with_context(|| format!("datagram {i} lost with host 2's agent dead\n{}", f.logs()))?;
        ensure!(
            buf[..n] == i.to_be_bytes(),
            "datagram {i}: got {:?}",
            &buf[..n]
        );
    }
    ensure!(
        ping_instance(b, &A, true, 2)?,
        "b -> a (IPv6) with host 2's agent dead"
    );
    // Nobody takes over the dead agent's pins here: remove them.
    peer_dataplane::bpf::pins::remove_pins(&f.agents[h2].pin_dir)?;
    Ok(())
}

/// Security groups across hosts: each host checks and tracks its own port's groups. A's
/// group lets TCP 7500-7501 out to VPC B, B's lets 7500 in from VPC A, and nothing else:
/// the connection and its replies pass both hosts, B cannot open one back (its host
/// refuses), 7501 is refused by B's host, UDP by A's.
#[test]
fn security_groups_are_checked_and_tracked_by_each_ports_host() -> Result<()> {
    use peer_dataplane::desired::document::{SecurityGroupDoc, SgRuleDoc};
    let mut f = Fleet::start("fl-sg", 1600)?;
    let rule = |direction: &str, cidr: &str, last: u16| SgRuleDoc {
        direction: direction.into(),
        protocol: "tcp".into(),
        port_from: Some(7500),
        port_to: Some(last),
        cidr: Some(cidr.into()),
        ..SgRuleDoc::default()
    };
    let groups = |doc: &mut Document| {
        doc.security_groups = vec![
            SecurityGroupDoc {
                id: "sg-a".into(),
                vpc: "vpc-a".into(),
                rules: vec![rule("egress", "172.16.0.0/16", 7501)],
            },
            SecurityGroupDoc {
                id: "sg-b".into(),
                vpc: "vpc-b".into(),
                rules: vec![rule("ingress", "10.0.0.0/16", 7500)],
            },
        ];
        for p in doc.ports.iter_mut().chain(doc.remote_ports.iter_mut()) {
            p.security_groups = match p.interface.as_str() {
                "pdp-a" => Some(vec!["sg-a".into()]),
                "pdp-b" => Some(vec!["sg-b".into()]),
                _ => None,
            };
        }
    };
    for h in [fleet::host_of(A), fleet::host_of(B)] {
        let mut doc = fleet::host_document(h);
        groups(&mut doc);
        f.agents[h].reload(&doc)?;
    }
    let (a, b) = (f.net.ns(A), f.net.ns(B));
    ensure!(
        tcp_exchange(a, b, &B, false, 7500)?,
        "tcp a -> b:7500 (allowed out by A's group, in by B's; replies tracked)\n{}",
        f.logs()
    );
    f.agents[fleet::host_of(B)].expect_dropped(
        "tcp b -> a:7500 (B's group lets nothing out that it did not let in)",
        "sg-deny",
        1..=10,
        || tcp_exchange(b, a, &A, false, 7500),
    )?;
    f.agents[fleet::host_of(B)].expect_dropped(
        "tcp a -> b:7501 (out by A's group, not in by B's)",
        "sg-deny",
        1..=10,
        || tcp_exchange(a, b, &B, false, 7501),
    )?;
    f.agents[fleet::host_of(A)].expect_dropped(
        "udp a -> b (A's group lets only tcp out)",
        "sg-deny",
        1..=1,
        || udp_exchange(a, &A, b, &B, false, 7502),
    )?;
    Ok(())
}

//! The Linux side of the comparison: the same job done by the kernel's own forwarding,
//! nftables (filter, conntrack, policers) and routes, set up in the benchmark's namespace.

use super::*;

/// Runs `script` through `program -batch -` (ip) or `-f -` (nft) on stdin.
pub(super) fn batch(program: &str, flag: &[&str], script: &str) -> Result<()> {
    let mut child = Command::new(program)
        .args(flag)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    child.stdin.take().unwrap().write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{program} {flag:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The Linux forwarding path between ports A and B (addresses, neighbour, sysctls).
pub(super) fn linux_base() -> Result<()> {
    for kv in [
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        // Strict: a frame must come in on the interface its source is routed out of, as
        // the data plane checks a route back to the source.
        "net.ipv4.conf.all.rp_filter=1",
        "net.ipv4.conf.default.rp_filter=1",
    ] {
        line(&format!("sysctl -q -w {kv}"))?;
    }
    let router = mac_str(&ROUTER_MAC);
    for port in [A.port, B.port] {
        line(&format!("sysctl -q -w net.ipv4.conf.{port}.rp_filter=1"))?;
        // Frames arrive addressed to the router's MAC, as instances send them.
        line(&format!("ip link set {port} address {router}"))?;
    }
    line(&format!("ip addr add {}/24 dev {}", v4_str(&A.gw4), A.port))?;
    line(&format!("ip addr add {}/24 dev {}", v4_str(&B.gw4), B.port))?;
    // B's neighbour entry names the router's MAC, not B's: the generator's pages are
    // recycled with the bytes of their last trip (see `loadgen::PAGE_REUSES`), and a frame
    // Linux forwarded must still be addressed to port A when it comes round again. The
    // sink does not look at MACs.
    line(&format!(
        "ip neigh replace {} lladdr {router} dev {} nud permanent",
        v4_str(&B.ipv4),
        B.port
    ))?;
    Ok(())
}

/// The Linux side of `c`: the routes `doc` gives port A's table toward B, the NACL and
/// the groups in nftables, the cap as a policer.
pub(super) fn linux_apply(c: &Config, doc: &Document) -> Result<Policer> {
    ns_cmd("ip", &["route", "flush", "proto", "static"])?;
    ns_cmd("ip", &["-6", "route", "flush", "proto", "static"])?;
    let mut script = String::new();
    let rtb = doc.route_tables.iter().find(|t| t.id == "rtb-a").unwrap();
    for r in rtb.routes.iter().filter(|r| r.target == "pcx-ab") {
        script.push_str(&format!(
            "route add {} dev {} proto static\n",
            r.destination, B.port
        ));
    }
    if !script.is_empty() {
        batch("ip", &["-batch", "-"], &script)?;
    }
    let _ = ns_cmd("nft", &["delete", "table", "inet", "pdp_bench"]);
    if c.rules > 0 || c.groups {
        batch("nft", &["-f", "-"], &nft_ruleset(c, doc))?;
    }

    let _ = ns_cmd("tc", &["qdisc", "del", "dev", B.port, "clsact"]);
    let _ = ns_cmd("nft", &["delete", "table", "netdev", "pdp_bench_cap"]);
    if let Some(mbps) = c.cap_mbps {
        let bps = mbps * 1_000_000;
        let burst = peer_dataplane_common::cap::default_burst_bytes(bps);
        ns_cmd("tc", &["qdisc", "add", "dev", B.port, "clsact"])?;
        let police = ns_cmd(
            "tc",
            &[
                "filter",
                "add",
                "dev",
                B.port,
                "egress",
                "protocol",
                "all",
                "u32",
                "match",
                "u32",
                "0",
                "0",
                "action",
                "police",
                "rate",
                &format!("{mbps}mbit"),
                "burst",
                &burst.to_string(),
                "conform-exceed",
                "drop",
            ],
        );
        if police.is_err() {
            // A kernel without act_police (CONFIG_NET_ACT_POLICE, and no modules to load):
            // the same token-bucket policer from nftables, on the port's egress hook where,
            // as for tc and the data plane's cap, a packet's length includes its L2 header.
            ns_cmd("tc", &["qdisc", "del", "dev", B.port, "clsact"])?;
            batch(
                "nft",
                &["-f", "-"],
                &format!(
                    "table netdev pdp_bench_cap {{\n  chain egress {{\n    type filter hook egress device \"{}\" priority filter; policy accept;\n    \
                     limit rate over {} bytes/second burst {burst} bytes drop\n  }}\n}}\n",
                    B.port,
                    bps / 8
                ),
            )?;
            return Ok(Policer::Nftables);
        }
        return Ok(Policer::Tc);
    }
    Ok(Policer::None)
}

/// The forward chain: the egress NACL's rules in order, then (groups) tracked flows
/// accepted and new ones checked against A's egress group, then B's ingress group.
pub(super) fn nft_ruleset(c: &Config, doc: &Document) -> String {
    let mut nft = String::from("table inet pdp_bench {\n");
    nft.push_str(
        "  chain forward {\n    type filter hook forward priority filter; policy accept;\n",
    );
    nft.push_str(&format!("    iifname \"{}\" jump from_a\n  }}\n", A.port));
    nft.push_str("  chain from_a {\n");
    if c.rules > 0 {
        nft.push_str("    jump nacl_a_egress\n");
    }
    if c.groups {
        // A flow the groups allowed is tracked from its first packet on, replied or not
        // (as the data plane's conntrack does): its mark says so. `ct state established`
        // alone would send every packet of a flow not yet answered through the rules.
        nft.push_str(
            "    ct state established,related accept\n    ct mark 0x1 accept\n    jump sg_a_egress\n",
        );
    }
    nft.push_str("  }\n");
    if let Some(acl) = doc.network_acls.iter().find(|a| a.id == "acl-bench") {
        let mut rules: Vec<_> = acl
            .rules
            .iter()
            .filter(|r| r.direction == "egress")
            .collect();
        rules.sort_by_key(|r| r.number);
        if c.linux_set {
            let elements: Vec<String> = rules
                .iter()
                .filter(|r| r.action == "deny")
                .map(|r| {
                    format!(
                        "{} . {}-{}",
                        r.cidr,
                        r.port_from.unwrap(),
                        r.port_to.unwrap()
                    )
                })
                .collect();
            nft.push_str(&format!(
                "  set nacl_deny {{\n    type ipv4_addr . inet_service\n    flags interval\n    elements = {{ {} }}\n  }}\n",
                elements.join(", ")
            ));
            rules.retain(|r| r.action == "allow");
        }
        nft.push_str("  chain nacl_a_egress {\n");
        if c.linux_set {
            nft.push_str("    ip daddr . udp dport @nacl_deny drop\n");
        }
        for r in rules {
            let verdict = if r.action == "allow" {
                "return"
            } else {
                "drop"
            };
            let net = if r.cidr == "0.0.0.0/0" {
                String::new()
            } else {
                format!("ip daddr {} ", r.cidr)
            };
            let ports = match (r.protocol.as_str(), r.port_from, r.port_to) {
                ("udp" | "tcp", Some(lo), Some(hi)) => format!("{} dport {lo}-{hi} ", r.protocol),
                _ => String::new(),
            };
            nft.push_str(&format!("    {net}{ports}{verdict}\n"));
        }
        nft.push_str("    drop\n  }\n");
    }
    if c.groups {
        for (chain, group, field, next) in [
            ("sg_a_egress", "sg-a", "daddr", "goto sg_b_ingress"),
            ("sg_b_ingress", "sg-b", "saddr", "ct mark set 0x1 accept"),
        ] {
            let g = doc.security_groups.iter().find(|g| g.id == group).unwrap();
            nft.push_str(&format!("  chain {chain} {{\n"));
            for r in &g.rules {
                let (lo, hi) = (r.port_from.unwrap(), r.port_to.unwrap());
                nft.push_str(&format!(
                    "    ip {field} {} {} dport {lo}-{hi} {next}\n",
                    r.cidr.as_deref().unwrap(),
                    r.protocol
                ));
            }
            nft.push_str("    drop\n  }\n");
        }
    }
    nft.push_str("}\n");
    nft
}

/// What polices the cap on the Linux side.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Policer {
    None,
    Tc,
    Nftables,
}

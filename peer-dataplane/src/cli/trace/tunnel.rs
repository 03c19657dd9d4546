//! `trace --from-host HOST`: the described packet as host HOST's data plane would send it
//! through the overlay, arriving on this host's uplink: the inner frame addressed to the
//! local instance, in the Geneve header HOST would put around it.

use crate::cli::frame::{build_frame, Request};
use crate::maps::MapState;
use anyhow::{anyhow, Result};
use peer_dataplane_common::{
    overlay::{encap_header, flow_port, Encap, PeeringOption, OVERLAY_ENABLED},
    Endpoint, EndpointKey, ENDPOINT_LOCAL, ENDPOINT_REMOTE, NAME_HOST,
};
use std::net::IpAddr;

fn endpoint(
    state: &MapState,
    a: IpAddr,
    want: impl Fn(&Endpoint) -> bool,
) -> Option<(&EndpointKey, &Endpoint)> {
    let a = crate::views::map_ip(a);
    state.endpoints.iter().find(|(k, e)| k.addr == a && want(e))
}

/// The uplink's ifindex and the tunnel frame.
pub fn frame(state: &MapState, req: &Request, host: &str) -> Result<(u32, Vec<u8>)> {
    let cfg = state
        .overlay
        .get(&0)
        .filter(|c| c.flags & OVERLAY_ENABLED != 0)
        .ok_or_else(|| {
            anyhow!("this host is in no fleet (no overlay installed): nothing arrives by tunnel")
        })?;
    let slot = state
        .names
        .iter()
        .find(|(k, n)| k.kind == NAME_HOST && n.as_str() == host)
        .map(|(k, _)| k.id)
        .ok_or_else(|| {
            let known: Vec<&str> = state
                .names
                .iter()
                .filter(|(k, _)| k.kind == NAME_HOST)
                .map(|(_, n)| n.as_str())
                .collect();
            anyhow!(
                "host {host} is not known here (hosts: {})",
                known.join(", ")
            )
        })?;
    let from = state
        .hosts
        .iter()
        .find(|(_, s)| **s == slot)
        .map(|(k, _)| k.addr)
        .ok_or_else(|| anyhow!("host {host} has no underlay address installed"))?;
    let (src_key, src) = endpoint(state, req.src, |e| {
        e.flags & ENDPOINT_REMOTE != 0 && e.host == slot
    })
    .ok_or_else(|| {
        anyhow!(
            "{} is not an instance on {host} that this host knows",
            req.src
        )
    })?;
    let (dst_key, dst) = endpoint(state, req.dst, |e| e.flags & ENDPOINT_LOCAL != 0)
        .ok_or_else(|| anyhow!("{} is not an instance on this host", req.dst))?;
    let tunnel_key = state
        .peerings
        .values()
        .find(|p| {
            (p.requester_vpc, p.accepter_vpc) == (src_key.vpc, dst_key.vpc)
                || (p.requester_vpc, p.accepter_vpc) == (dst_key.vpc, src_key.vpc)
        })
        .map(|p| p.tunnel_key)
        .ok_or_else(|| anyhow!("no peering joins the VPCs of {} and {}", req.src, req.dst))?;
    let mut inner = build_frame(req, None)?;
    inner[..6].copy_from_slice(&dst.mac);
    inner[6..12].copy_from_slice(&dst.gw_mac);
    let (s, d) = (from, cfg.underlay);
    let header = encap_header(&Encap {
        outer_dst_mac: [0x02, 0, 0, 0, 0, 0x02],
        outer_src_mac: [0x02, 0, 0, 0, 0, 0x01],
        src_ip: [s[12], s[13], s[14], s[15]],
        dst_ip: [d[12], d[13], d[14], d[15]],
        udp_sport: flow_port(&src_key.addr, &dst_key.addr, 0, 0, 0),
        inner_len: inner.len() as u16,
        vni: dst.vni,
        option: PeeringOption {
            source_vni_be: src.vni.to_be_bytes(),
            tunnel_key_be: tunnel_key.to_be_bytes(),
        },
    });
    Ok((cfg.uplink, [header.as_slice(), &inner].concat()))
}

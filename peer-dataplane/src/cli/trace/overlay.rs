//! The overlay's stages in a trace: the uplink a tunnel arrives by and the tunnel's
//! checks (receiving host), and the encapsulation toward another host (sending host).

use super::explain::Explainer;
use crate::views::{ip, Names};
use peer_dataplane_common::{
    overlay::{OverlayIdKey, OVERLAY_ENABLED, UNDERLAY_OVERHEAD},
    trace::*,
    EndpointKey, ENDPOINT_REMOTE, NAME_HOST, NAME_PEERING, NAME_VPC,
};
use serde_json::json;

impl Explainer<'_> {
    /// This host's uplink, if it is in a fleet.
    pub(super) fn uplink(&self) -> Option<u32> {
        self.state
            .overlay
            .get(&0)
            .filter(|c| c.flags & OVERLAY_ENABLED != 0)
            .map(|c| c.uplink)
    }

    fn host_name(&self, slot: u32) -> String {
        if slot == NO_ROUTE {
            "no host".into()
        } else {
            Names(self.state).get(NAME_HOST, slot)
        }
    }

    fn vni_name(&self, vni: u32) -> String {
        match self.state.overlay_ids.get(&OverlayIdKey::vni(vni)) {
            Some(vpc) => format!("VNI {vni} ({})", Names(self.state).get(NAME_VPC, *vpc)),
            None => format!("VNI {vni} (no VPC here)"),
        }
    }

    /// The ingress stage of a frame on the uplink.
    pub(super) fn uplink_port(&mut self) {
        let r = self.r;
        let detail = if self.reached(STAGE_DECAP) {
            format!(
                "uplink (ifindex {}): Geneve to this host",
                r.ingress_ifindex
            )
        } else {
            format!(
                "uplink (ifindex {}): not Geneve to this host's underlay address and port; the kernel's",
                r.ingress_ifindex
            )
        };
        self.push(
            STAGE_PORT,
            "uplink",
            detail,
            json!({"ifindex": r.ingress_ifindex, "uplink": true}),
        );
    }

    /// The tunnel's checks on the receiving host.
    pub(super) fn decap(&mut self) {
        let r = self.r;
        let from = ip(&r.overlay_peer);
        let host = self.host_name(r.overlay_host);
        let head = format!("Geneve from {from} ({host})");
        let detail = match self.reason.filter(|_| self.deciding == STAGE_DECAP) {
            Some("unknown-host") => format!("{head}: no host of the fleet has that underlay address"),
            Some("geneve-malformed") => format!("{head}: not what peers send (version, protocol, option lengths, OAM, fragment, or no peering option)"),
            Some("geneve-unknown-option") => format!("{head}: a critical option this host does not understand"),
            Some("spoofed-source") => format!(
                "{head}, {}: {} is not an instance {host} carries in {}",
                self.vni_name(r.overlay_vni),
                self.src,
                self.vni_name(r.overlay_src_vni)
            ),
            Some("vni-mismatch") => format!(
                "{head}: {} is not the VPC tunnel key {} leads to",
                self.vni_name(r.overlay_vni),
                r.overlay_key
            ),
            Some(other) => format!("{head}: {other}"),
            None => format!(
                "{head}: {}, from {} over tunnel key {}",
                self.vni_name(r.overlay_vni),
                self.vni_name(r.overlay_src_vni),
                r.overlay_key
            ),
        };
        self.push(
            STAGE_DECAP,
            "decap",
            detail,
            json!({
                "outer_src": from.to_string(),
                "host": (r.overlay_host != NO_ROUTE).then_some(host),
                "vni": r.overlay_vni,
                "source_vni": r.overlay_src_vni,
                "tunnel_key": r.overlay_key,
            }),
        );
    }

    /// Whether the trace's destination endpoint lives on another host.
    pub(super) fn remote_endpoint(&self) -> bool {
        let key = EndpointKey {
            vpc: self.r.peer_vpc,
            addr: self.r.dst,
        };
        self.state
            .endpoints
            .get(&key)
            .is_some_and(|e| e.flags & ENDPOINT_REMOTE != 0)
    }

    /// The endpoint stage for an instance on another host.
    pub(super) fn remote_endpoint_stage(&mut self) {
        let key = EndpointKey {
            vpc: self.r.peer_vpc,
            addr: self.r.dst,
        };
        let ep = self.state.endpoints[&key];
        let host = self.host_name(ep.host);
        let detail = format!(
            "{} is an instance on {host} ({}): that host checks the receiving side",
            self.dst,
            ip(&ep.underlay)
        );
        self.push(
            STAGE_ENDPOINT,
            "endpoint",
            detail,
            json!({"interface": null, "host": host, "underlay": ip(&ep.underlay).to_string()}),
        );
    }

    /// The encapsulation toward another host, or why there was none.
    pub(super) fn encap(&mut self, out: &[u8]) {
        let r = self.r;
        let host = self.host_name(r.overlay_host);
        let to = ip(&r.overlay_peer);
        let inner = self.frame.len();
        let detail = match self.reason.filter(|_| self.deciding == STAGE_ENCAP) {
            Some("mtu-exceeded") => format!(
                "{} bytes of IP + {UNDERLAY_OVERHEAD} of encapsulation exceed the underlay MTU {}: \
                 answered with ICMP too-big (MTU {}) back to the sender",
                inner.saturating_sub(14),
                r.overlay_mtu,
                r.overlay_mtu.saturating_sub(UNDERLAY_OVERHEAD as u32)
            ),
            Some(_) => format!(
                "no route or resolved neighbour toward {host} ({to}) on the underlay (FIB lookup result {})",
                r.overlay_fib
            ),
            None => format!(
                "Geneve to {host} ({to}), {}, from {}, tunnel key {} ({}): {} -> {} bytes",
                self.vni_name(r.overlay_vni),
                self.vni_name(
                    out.get(54..58)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0)
                ),
                out.get(58..62)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0),
                Names(self.state).get(NAME_PEERING, r.peering_slot),
                inner,
                out.len()
            ),
        };
        self.push(
            STAGE_ENCAP,
            "encap",
            detail,
            json!({
                "host": host,
                "underlay": to.to_string(),
                "vni": r.overlay_vni,
                "mtu": r.overlay_mtu,
                "fib": r.overlay_fib,
                "frame_bytes": out.len(),
            }),
        );
    }
}

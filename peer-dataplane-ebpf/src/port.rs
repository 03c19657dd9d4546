//! Source port stage: the ingress ifindex names the instance attachment the packet came
//! from, and with it the sender's VPC, subnet and route table.

use crate::maps::PORTS;
use peer_dataplane_common::Port;

#[inline(always)]
pub fn lookup(ifindex: u32) -> Option<Port> {
    // SAFETY: map value read by copy; the agent only replaces whole entries.
    unsafe { PORTS.get(&ifindex).copied() }
}

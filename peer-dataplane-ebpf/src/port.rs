//! Source port stage: the ingress ifindex names the instance attachment the packet came
//! from, and with it the sender's VPC, subnet and route table.

use crate::maps::PORTS;
use peer_dataplane_common::Port;

#[inline(always)]
pub fn lookup(ifindex: u32) -> Option<&'static Port> {
    // SAFETY: the map is not preallocated, so an update by the agent links a new element
    // and frees the old one only after every reader is done: this entry stays whole.
    unsafe { PORTS.get(&ifindex) }
}

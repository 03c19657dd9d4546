//! What several host-only test files share: the seed document and a resolver that gives
//! the seed's interfaces (and a fleet's uplink) fixed ifindexes.

use peer_dataplane_model::desired::document::Document;
use peer_dataplane_model::desired::IfindexResolver;

pub const SEED: &str = include_str!("../../../examples/seed.toml");

pub fn seed() -> Document {
    Document::from_toml(SEED).unwrap()
}

pub struct FakeIfindex;

impl IfindexResolver for FakeIfindex {
    fn ifindex(&self, name: &str) -> Option<u32> {
        match name {
            "pdp-a" => Some(11),
            "pdp-b" => Some(12),
            "pdp-c" => Some(13),
            // The uplink of a fleet document, and a second name of it.
            "up0" | "up0-alt" => Some(2),
            _ => None,
        }
    }

    fn mtu(&self, name: &str) -> Option<u32> {
        (name == "up0").then_some(1600)
    }
}

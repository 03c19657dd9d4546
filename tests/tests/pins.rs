//! Pinned state: layouts are checked before reuse, and a reopened data plane reads back
//! exactly what was installed (so a restarted agent rewrites nothing that is unchanged).
//! Needs root and BPF.

use anyhow::Result;
use peer_dataplane::agent::install::Installed;
use peer_dataplane::bpf::pins as kernel;
use peer_dataplane::bpf::{KernelIfindex, KernelMaps};
use peer_dataplane::desired::validate::validate;
use peer_dataplane::maps::{
    visit_all, DataplaneMaps, Entries, KernelLayout, MapState, MapVisitor, Op, Stored, STORED,
};
use peer_dataplane_common::registry::MapKind;
use peer_dataplane_tests::harness::TestDataplane;
use peer_dataplane_tests::netns::{self, sh};
use peer_dataplane_tests::seed;
use std::path::Path;
use std::process::Command;

/// One entry of stored map `M` made of distinctive bytes the kernel accepts: a full-length
/// prefix in a trie, key 0 of an array, a devmap target that exists (loopback).
fn sample_entry<M: Stored>(n: u8) -> (M::Key, M::Value) {
    let pattern = |len: u32| {
        (0..len)
            .map(|i| n.wrapping_add(i as u8) | 1)
            .collect::<Vec<u8>>()
    };
    let mut key = pattern(M::SPEC.key_size);
    match M::SPEC.kind {
        MapKind::LpmTrie => key[..4].copy_from_slice(&((M::SPEC.key_size - 4) * 8).to_ne_bytes()),
        MapKind::Array => key = 0u32.to_ne_bytes().to_vec(),
        _ => {}
    }
    let value = match M::SPEC.kind {
        MapKind::DevMapHash => 1u32.to_ne_bytes().to_vec(),
        _ => pattern(M::SPEC.value_size),
    };
    (
        M::Key::decode(&key).expect("key size"),
        M::Value::decode(&value).expect("value size"),
    )
}

/// Puts an entry into every stored map, then removes it, checking after each write that
/// the kernel reads back what memory holds: the table's generic writer and reader cover
/// every map listed in it, a map added later included.
#[test]
fn every_stored_map_reads_back_what_was_written() -> Result<()> {
    struct PutAndDelete<'a> {
        maps: &'a mut KernelMaps,
        expected: MapState,
        n: u8,
    }
    impl MapVisitor for PutAndDelete<'_> {
        fn visit<M: Stored>(&mut self) -> Result<()> {
            self.n += 1;
            let (k, v) = sample_entry::<M>(self.n);
            for op in [Op::put::<M>(k, v), Op::del::<M>(k)] {
                self.maps.write(&op)?;
                self.expected.write(&op)?;
                let back = self.maps.read_state()?;
                assert_eq!(
                    M::entries(&back).len(),
                    M::entries(&self.expected).len(),
                    "{op:?}"
                );
                assert_eq!(back, self.expected, "{} after {op:?}", M::SPEC.name);
            }
            Ok(())
        }
    }
    let mut dp = TestDataplane::load()?;
    let expected = dp.installed.maps.read_state()?;
    let mut visit = PutAndDelete {
        maps: &mut dp.installed.maps,
        expected,
        n: 0,
    };
    visit_all(&mut visit)?;
    assert_eq!(visit.n as usize, STORED.len());
    Ok(())
}

#[test]
fn pins_created_by_this_build_match_its_layouts() -> Result<()> {
    let dp = TestDataplane::load()?;
    kernel::check_pinned_layouts(&dp.pin_dir)?;
    for name in peer_dataplane_common::map_names::ALL {
        assert!(dp.pin_dir.join(name).exists(), "{name} is not pinned");
    }
    Ok(())
}

/// Pins hash map `name` as an older build might have left it (`bpftool map create` with
/// `spec`: key, value, entries, flags), loads the object over it, and returns why the load
/// was refused.
fn refusal_over_pin(tag: &str, name: &str, spec: &[&str]) -> Result<String> {
    peer_dataplane_tests::require_root()?;
    let dir = &Path::new("/sys/fs/bpf").join(peer_dataplane_tests::unique(tag));
    let _ = kernel::remove_pins(dir);
    std::fs::create_dir_all(dir)?;
    let pin = dir.join(name);
    let made = sh(Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args(["type", "hash"])
        .args(spec)
        .args(["name", name]));
    let object = std::fs::read(peer_dataplane_tests::object_path()?)?;
    let result = made.and_then(|_| kernel::load(&object, dir).map(|_| ()));
    let _ = std::fs::remove_file(&pin);
    let _ = kernel::remove_pins(dir);
    Ok(format!(
        "{:#}",
        result.expect_err("an incompatible pin must be refused")
    ))
}

#[test]
fn a_pin_with_another_layout_is_refused_naming_the_map() -> Result<()> {
    // The same name, a smaller value; not preallocated, as this build wants: the sizes
    // are what is wrong.
    let spec = ["key", "4", "value", "8", "entries", "16", "flags", "1"];
    let err = refusal_over_pin("layout", "pdp_ports", &spec)?;
    assert!(
        err.contains("pdp_ports")
            && err.contains("value 8 B")
            && err.contains("peer-dataplane cleanup"),
        "{err}"
    );
    Ok(())
}

/// A map the program reads in place, pinned preallocated by an older build (right sizes,
/// wrong allocation) is refused too: its replaced entries could be reused under a reader.
#[test]
fn a_preallocated_pin_of_an_in_place_map_is_refused() -> Result<()> {
    let value = std::mem::size_of::<peer_dataplane_common::acl::AclMeta>().to_string();
    let entries = peer_dataplane_common::acl::MAX_ACL_SETS.to_string();
    let spec = ["key", "4", "value", &value, "entries", &entries];
    let err = refusal_over_pin("prealloc", "pdp_acl_meta", &spec)?;
    assert!(
        err.contains("pdp_acl_meta is preallocated") && err.contains("peer-dataplane cleanup"),
        "{err}"
    );
    Ok(())
}

#[test]
fn reopened_pins_read_back_exactly_what_was_installed() -> Result<()> {
    let ns = seed::ports_only(&peer_dataplane_tests::unique("pins"))?;
    netns::enter(&ns.path())?;
    let mut dp = TestDataplane::load()?;
    let topo = validate(&seed::seed_doc()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let first = dp
        .installed
        .install(&topo, None, &KernelIfindex::default())?;
    assert!(first > 40, "seed install wrote {first} entries");

    // A second agent (or the same one restarted) opens the pins afresh.
    let mut again = Installed::open(&dp.pin_dir)?;
    assert_eq!(
        again.mirror, dp.installed.mirror,
        "read-back state differs from what was written"
    );
    assert_eq!(
        again.ids, dp.installed.ids,
        "ids must survive through the names map"
    );
    assert_eq!(
        again.install(&topo, None, &KernelIfindex::default())?,
        0,
        "nothing changed, nothing to write"
    );
    Ok(())
}

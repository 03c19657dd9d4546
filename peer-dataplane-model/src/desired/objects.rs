//! The object kinds of a region, declared once: the control plane's store and the agent's
//! validated topology are both an [`Objects`], each with its own representation of a kind.

use std::collections::BTreeMap;
use std::fmt::Debug;

/// One representation of every object kind (stored, validated, ...).
pub trait Kinds {
    type Vpc: Debug + Clone + PartialEq;
    type Subnet: Debug + Clone + PartialEq;
    type RouteTable: Debug + Clone + PartialEq;
    type Peering: Debug + Clone + PartialEq;
    type Port: Debug + Clone + PartialEq;
    type NetworkAcl: Debug + Clone + PartialEq;
    type SecurityGroup: Debug + Clone + PartialEq;
    type Host: Debug + Clone + PartialEq;
}

/// Every object of each kind, keyed by id (ports: by the key their owner chooses).
#[derive(Debug, Clone, PartialEq)]
pub struct Objects<K: Kinds> {
    pub vpcs: BTreeMap<String, K::Vpc>,
    pub subnets: BTreeMap<String, K::Subnet>,
    pub route_tables: BTreeMap<String, K::RouteTable>,
    pub peerings: BTreeMap<String, K::Peering>,
    pub ports: BTreeMap<String, K::Port>,
    pub network_acls: BTreeMap<String, K::NetworkAcl>,
    pub security_groups: BTreeMap<String, K::SecurityGroup>,
    /// Hypervisors of the fleet (underlay addresses).
    pub hosts: BTreeMap<String, K::Host>,
}

impl<K: Kinds> Default for Objects<K> {
    fn default() -> Self {
        Objects {
            vpcs: BTreeMap::new(),
            subnets: BTreeMap::new(),
            route_tables: BTreeMap::new(),
            peerings: BTreeMap::new(),
            ports: BTreeMap::new(),
            network_acls: BTreeMap::new(),
            security_groups: BTreeMap::new(),
            hosts: BTreeMap::new(),
        }
    }
}

/// `impl Kinds for $repr` with each kind the type of the same name in scope where this is
/// invoked (`Vpc`, `Subnet`, ...): each representation names its types alike.
#[macro_export]
macro_rules! kinds_of_scope {
    ($repr:ident) => {
        impl $crate::desired::objects::Kinds for $repr {
            type Vpc = Vpc;
            type Subnet = Subnet;
            type RouteTable = RouteTable;
            type Peering = Peering;
            type Port = Port;
            type NetworkAcl = NetworkAcl;
            type SecurityGroup = SecurityGroup;
            type Host = Host;
        }
    };
}

/// `Deref`/`DerefMut` from `$holder` to its `objects: Objects<$repr>` field: a holder adds
/// its own state beside the objects and reads them as its own (`w.vpcs`).
#[macro_export]
macro_rules! holds_objects {
    ($holder:ty, $repr:ty) => {
        impl std::ops::Deref for $holder {
            type Target = $crate::desired::objects::Objects<$repr>;
            fn deref(&self) -> &Self::Target {
                &self.objects
            }
        }

        impl std::ops::DerefMut for $holder {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.objects
            }
        }
    };
}

//! The desired state: what the operator or the control plane declares, checked and
//! compiled to map contents.

pub mod acl;
pub mod compile;
pub mod delta;
pub mod document;
pub mod ids;
pub mod objects;
pub mod rules;
pub mod validate;

pub use compile::{compile, compile_over, IfindexResolver, PortsRefused};
pub use document::Document;
pub use ids::Ids;
pub use validate::{validate, Topology};

//! Installed -> desired: the plan of single-entry writes, its order, and the generations
//! that make multi-entry changes atomic.

pub mod generations;
pub mod plan;
pub mod routes;

pub use generations::{plan_install, plan_install_reusing};
pub use plan::{
    apply, apply_all_or_nothing, plan, AclPortKey, ApplyError, DataplaneMaps, FailingMaps,
    MapState, Op, RouteKey,
};
pub use routes::RouteEntries;

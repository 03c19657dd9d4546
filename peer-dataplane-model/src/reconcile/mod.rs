//! Installed -> desired: the plan of single-entry writes, its order, and the generations
//! that make multi-entry changes atomic.

pub mod generations;
pub mod plan;

pub use generations::plan_install;
pub use plan::{
    apply, apply_all_or_nothing, plan, AclPortKey, ApplyError, DataplaneMaps, FailingMaps,
    MapState, Op, RouteKey,
};

//! Installed -> desired: the plan of single-entry writes, its order, and the generations
//! that make multi-entry changes atomic.

pub mod generations;
pub mod plan;

pub use generations::{plan_install, plan_install_reusing};
pub use plan::{apply, apply_all_or_nothing, plan, ApplyError, FailingMaps};

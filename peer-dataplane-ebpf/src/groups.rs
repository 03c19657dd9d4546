//! How a packet passed the security groups: the group stage's answer (`sg::check`), which
//! the flow cache reads to tell whether a decision may be kept. Its own module, below both,
//! so that neither imports the other for it.

/// No groups on either port.
pub const NO_GROUPS: u32 = 0;
/// As a tracked flow (its entry found, or just opened).
pub const TRACKED: u32 = 1;
/// By the rules alone with nothing tracked (a packet that cannot be tracked, or does not
/// open a flow).
pub const RULES_ONLY: u32 = 2;
/// Refused: the drop reason is `DropReason::SgDeny`.
pub const DENIED: u32 = 3;
/// As `TRACKED`, the packet a reply of the tracked flow.
pub const TRACKED_REPLY: u32 = 4;

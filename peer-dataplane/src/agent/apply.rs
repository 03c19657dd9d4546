//! Applying each new desired state, in one line: a file reloaded, or a control-plane
//! answer taken in (`answer::take`: one route in place, or a topology to install); its
//! ports checked; installed whole (`install`). A valid state whose install failed (and was
//! undone) is tried again with backoff until it goes in or a newer state replaces it.

use super::answer::{self, TakeError, Taken};
use super::install::{load_topology, Dataplane};
use super::long_poll::Update;
use crate::desired::{PortsRefused, Topology};
use log::warn;
use log::{error, info};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A valid desired state whose install failed, to try again.
pub struct Retry {
    topo: Topology,
    what: String,
    revision: Option<u64>,
    attempts: u32,
    pub at: Instant,
}

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Retry {
    /// Counts a failed attempt (`e`) and schedules the next one: 100 ms after the first
    /// failure, doubling up to 5 s.
    fn failed(mut self, e: &anyhow::Error) -> Retry {
        self.attempts += 1;
        let wait = (RETRY_MIN * 2u32.saturating_pow(self.attempts - 1)).min(RETRY_MAX);
        let again = if self.attempts == 1 {
            String::new()
        } else {
            format!(" again (attempt {})", self.attempts)
        };
        error!(
            "installing {} failed{again}, retrying in {} ms: {e:#}",
            self.what,
            wait.as_millis()
        );
        self.at = Instant::now() + wait;
        self
    }

    /// Installs again; `Some` (with a later time) if it failed once more.
    pub fn again(self, dp: &mut Dataplane) -> Option<Retry> {
        let (attempt, what, revision) = (self.attempts + 1, self.what.clone(), self.revision);
        match install(
            self.topo,
            self.what,
            revision,
            self.attempts,
            Instant::now(),
            dp,
        ) {
            Ok(writes) => {
                info!("installed {what} on attempt {attempt} ({writes} map writes)");
                if let Some(rev) = revision {
                    info!("synced revision {rev} ({writes} map writes; after {attempt} attempts)");
                }
                None
            }
            Err(NotInstalled::Refused(e)) => {
                error!("{what} refused, previous state kept: {e}");
                None
            }
            Err(NotInstalled::Retry(retry)) => Some(*retry),
        }
    }
}

/// Why an install did not go in.
enum NotInstalled {
    /// Ports on interfaces that must not carry one: the state is refused, like an invalid
    /// one (waiting would not change it); nothing was written.
    Refused(PortsRefused),
    /// Anything else (an interface not there yet, a failed write, undone): tried again.
    Retry(Box<Retry>),
}

/// Installs a validated state (after `attempts` failed ones); a failure is reported and
/// comes back as the refusal, or the retry to make.
fn install(
    topo: Topology,
    what: String,
    revision: Option<u64>,
    attempts: u32,
    started: Instant,
    dp: &mut Dataplane,
) -> Result<usize, NotInstalled> {
    match dp.apply(&topo) {
        Ok(writes) => {
            dp.record(revision, started, true);
            dp.topo = Some(topo);
            Ok(writes)
        }
        Err(e) => {
            dp.record(revision, started, false);
            if let Some(refused) = e.chain().find_map(|c| c.downcast_ref::<PortsRefused>()) {
                // Refused before any write: what is installed is still `dp.topo`.
                return Err(NotInstalled::Refused(refused.clone()));
            }
            // Until a whole install succeeds, nothing is changed in place.
            dp.topo = None;
            let retry = Retry {
                topo,
                what,
                revision,
                attempts,
                at: started,
            };
            Err(NotInstalled::Retry(Box::new(retry.failed(&e))))
        }
    }
}

pub fn reload_file(config: &Path, why: &str, dp: &mut Dataplane) -> Option<Retry> {
    let started = Instant::now();
    let topo = match load_topology(config) {
        Ok(t) => t,
        Err(e) => {
            dp.record(None, started, false);
            error!("reload on {why} refused, previous state kept: {e:#}");
            return None;
        }
    };
    match install(
        topo,
        format!("{} on {why}", config.display()),
        None,
        0,
        started,
        dp,
    ) {
        Ok(writes) => {
            info!(
                "reloaded {} on {why}: {writes} map writes",
                config.display()
            );
            None
        }
        Err(NotInstalled::Refused(e)) => {
            error!("reload on {why} refused, previous state kept: {e}");
            None
        }
        Err(NotInstalled::Retry(retry)) => Some(*retry),
    }
}

pub fn apply_update(u: Update, dp: &mut Dataplane) -> Option<Retry> {
    let started = Instant::now();
    let what = format!("control plane revision {}", u.revision);
    let taken = answer::take(
        &mut dp.installed,
        &mut dp.topo,
        &mut dp.desired,
        u.revision,
        u.change,
    );
    let topo = match taken {
        Ok(Taken::InPlace(writes)) => {
            dp.record(Some(u.revision), started, true);
            info!(
                "synced revision {} ({writes} map writes, one route in place; applied in {:.3} ms, {:.3} ms after the control plane answered)",
                u.revision,
                started.elapsed().as_secs_f64() * 1e3,
                u.received.elapsed().as_secs_f64() * 1e3
            );
            return None;
        }
        Ok(Taken::Nothing) => return None,
        Ok(Taken::Install(topo)) => topo,
        Err(TakeError::DoesNotFit(e)) => {
            warn!(
                "the delta to revision {} does not fit ({e}); asking for the whole document",
                u.revision
            );
            dp.need_whole.store(true, Ordering::Relaxed);
            return None;
        }
        Err(TakeError::Refused(e)) => {
            dp.record(Some(u.revision), started, false);
            error!(
                "revision {} refused, previous state kept: desired state from {what}: {e:#}",
                u.revision
            );
            return None;
        }
    };
    match install(topo, what.clone(), Some(u.revision), 0, started, dp) {
        Ok(writes) => {
            info!(
                "synced revision {} ({writes} map writes; applied in {:.2} ms, {:.2} ms after the control plane answered)",
                u.revision,
                started.elapsed().as_secs_f64() * 1e3,
                u.received.elapsed().as_secs_f64() * 1e3
            );
            None
        }
        Err(NotInstalled::Refused(e)) => {
            error!(
                "revision {} refused, previous state kept: desired state from {what}: {e}",
                u.revision
            );
            None
        }
        Err(NotInstalled::Retry(retry)) => Some(*retry),
    }
}

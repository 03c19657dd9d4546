//! A simulated agent: the agent's own sync code over in-memory maps, long-polling a
//! replica by delta, one thread each; what it received and did.

use super::*;

/// Every interface an agent is told of resolves (there is no kernel here).
pub(super) struct AnyIfindex;

impl IfindexResolver for AnyIfindex {
    fn ifindex(&self, name: &str) -> Option<u32> {
        Some(
            10 + name
                .bytes()
                .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
                % 100_000,
        )
    }

    fn mtu(&self, _: &str) -> Option<u32> {
        Some(1600)
    }
}

/// CPU time this thread has used.
pub(super) fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What one agent received and did for one answer.
#[derive(Clone)]
pub(super) struct Delivery {
    pub(super) revision: u64,
    pub(super) at: Instant,
    pub(super) bytes: usize,
    pub(super) cpu: Duration,
    pub(super) whole: bool,
}

/// A simulated agent: the agent's sync code over memory, following one replica.
pub(super) struct SimAgent {
    pub(super) deliveries: Mutex<Vec<Delivery>>,
    pub(super) applied: AtomicU64,
    /// The document the agent holds and its revision (read at the end).
    pub(super) desired: Mutex<Option<(u64, Held)>>,
}

pub(super) fn run_agent(index: usize, base: String, me: Arc<SimAgent>) -> Result<()> {
    let http: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut installed = Installed::<MapState>::in_memory();
    let mut topo: Option<Topology> = None;
    let mut after: Option<u64> = None;
    loop {
        let mut url = format!("{base}/v1/hosts/{}/state", host(index));
        if let Some(a) = after {
            url.push_str(&format!("?after={a}&delta=true&wait_ms=20000"));
        }
        let mut resp = http
            .get(&url)
            .header("authorization", &format!("Bearer {}", host_token(index)))
            .call()?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string()?;
        if status != 200 {
            bail!("agent {index}: HTTP {status}: {text}");
        }
        let started = thread_cpu();
        // Parsed as the agent parses it.
        let answer: StateResponse = serde_json::from_str(&text)?;
        let revision = answer.revision;
        let change = answer
            .change()
            .with_context(|| format!("agent {index}: neither a document nor a delta"))?;
        let whole = matches!(change, Change::Whole(_));
        // Uncontended: the bench reads it only once every agent is done.
        let mut desired = me.desired.lock().unwrap();
        match answer::take(&mut installed, &mut topo, &mut desired, revision, change) {
            // A long poll that ended with nothing for this host: not a delivery.
            Ok(Taken::Nothing) => {
                after = Some(revision);
                continue;
            }
            Ok(Taken::InPlace(_)) => {}
            Ok(Taken::Install(t)) => {
                installed.install(&t, topo.as_ref(), &AnyIfindex)?;
                topo = Some(t);
            }
            Err(e) => bail!("agent {index}, revision {revision}: {e:?}"),
        }
        let cpu = thread_cpu() - started;
        after = Some(revision);
        me.deliveries.lock().unwrap().push(Delivery {
            revision,
            at: Instant::now(),
            bytes: text.len(),
            cpu,
            whole,
        });
        drop(desired);
        me.applied.store(revision, Ordering::Release);
    }
}

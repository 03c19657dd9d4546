//! The control plane under test: the replicas (real processes on etcd) and the HTTP
//! client the bench calls them with.

use super::*;

/// The HTTP side: two replicas, any token.
pub(super) struct Api {
    pub(super) http: ureq::Agent,
    pub(super) bases: Vec<String>,
}

impl Api {
    pub(super) fn call(
        &self,
        replica: usize,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, u64, Value)> {
        self.call_as(replica, TOKEN, method, path, body)
    }

    pub(super) fn call_as(
        &self,
        replica: usize,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, u64, Value)> {
        let url = format!("{}{path}", self.bases[replica % self.bases.len()]);
        let r = peer_dataplane_tests::controlplane::request(
            &self.http,
            method,
            &url,
            Some(token),
            body,
        )?;
        Ok((r.status, r.revision, r.body))
    }

    /// A call that must succeed with a 2xx.
    pub(super) fn ok(
        &self,
        replica: usize,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u64, Value)> {
        let (s, r, v) = self.call(replica, method, path, body)?;
        if s / 100 != 2 {
            bail!("{method} {path}: HTTP {s}: {v}");
        }
        Ok((r, v))
    }
}

/// The control-plane binary on etcd, in the bench's namespace.
pub(super) struct Replica {
    pub(super) child: Child,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn start_replica(
    bin: &Path,
    store: &str,
    dir: &Path,
    port: u16,
    hosts: usize,
) -> Result<Replica> {
    let accounts = dir.join("account-tokens");
    std::fs::write(&accounts, format!("{ACCOUNT}:{TOKEN}\n"))?;
    let host_tokens = dir.join("host-tokens");
    let lines: String = (0..hosts)
        .map(|i| format!("{}:{}\n", host(i), host_token(i)))
        .collect();
    std::fs::write(&host_tokens, lines)?;
    let child = Command::new(bin)
        .args([
            "controlplane",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            store,
        ])
        .args(["--rate-limit", "1000000"])
        .arg("--account-tokens")
        .arg(&accounts)
        .arg("--host-tokens")
        .arg(&host_tokens)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("cp-{port}.log")))?)
        .spawn()
        .context("starting a control-plane replica")?;
    let r = Replica { child };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = ureq::get(&format!("http://127.0.0.1:{port}/healthz"))
            .call()
            .map(|r| r.status().as_u16() == 200)
            .unwrap_or(false);
        if ok {
            return Ok(r);
        }
        if Instant::now() > deadline {
            bail!(
                "replica on port {port} did not start (see {})",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

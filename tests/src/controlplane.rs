//! A real control-plane process for end-to-end tests and the demo, running in the
//! hypervisor namespace (the agent reaches it on that namespace's loopback), and a small
//! client whose requests are made from inside that namespace.

use crate::netns::Netns;
use crate::seed::Agent;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SEED_API: &str = include_str!("../../examples/seed-api.json");
pub const AGENT_TOKEN: &str = "agent-token-for-tests";
/// Account -> API token.
pub const ACCOUNTS: [(&str, &str); 3] = [
    ("111111111111", "token-account-a"),
    ("222222222222", "token-account-b"),
    ("333333333333", "token-account-c"),
];

pub fn token_of(account: &str) -> &'static str {
    ACCOUNTS
        .iter()
        .find(|(a, _)| *a == account)
        .map(|(_, t)| *t)
        .expect("a seed account")
}

pub struct ControlPlane {
    child: Option<Child>,
    bin: PathBuf,
    ns: PathBuf,
    pub db: PathBuf,
    pub port: u16,
    pub log: PathBuf,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// The `x-pdp-revision` header: the control plane's revision after the request.
    pub revision: u64,
}

/// The `x-pdp-revision` header of a control-plane response (0 when absent).
pub fn revision_of<B>(resp: &ureq::http::Response<B>) -> u64 {
    resp.headers()
        .get("x-pdp-revision")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl ControlPlane {
    /// Starts `bin controlplane` in `host` listening on 127.0.0.1:`port` there.
    pub fn start(bin: &Path, host: &Netns, db: &Path, port: u16) -> Result<ControlPlane> {
        let mut cp = ControlPlane {
            child: None,
            bin: bin.to_path_buf(),
            ns: host.path(),
            db: db.to_path_buf(),
            port,
            log: db.with_extension("log"),
        };
        cp.spawn()?;
        Ok(cp)
    }

    fn spawn(&mut self) -> Result<()> {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns.display()))
            .arg(&self.bin)
            .args([
                "controlplane",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--db",
            ])
            .arg(&self.db)
            .args(["--agent-token", AGENT_TOKEN]);
        for (account, token) in ACCOUNTS {
            c.args(["--account-token", &format!("{account}:{token}")]);
        }
        self.child = Some(
            c.stdout(Stdio::null())
                .stderr(logf)
                .spawn()
                .context("starting the control plane")?,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.get_health().is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "control plane did not answer /healthz:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    fn get_health(&self) -> Result<()> {
        let r = self.call("GET", "/healthz", None, None)?;
        if r.status != 200 {
            bail!("healthz: {}", r.status);
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One request, made from inside the hypervisor namespace.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Reply> {
        let url = format!("{}{path}", self.url());
        let (method, token, body) = (method.to_string(), token.map(str::to_string), body.cloned());
        let path_buf = self.ns.clone();
        let r = std::thread::spawn(move || -> Result<Reply> {
            crate::netns::enter(&path_buf)?;
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into();
            let mut req = http_request(&method, &url)?;
            if let Some(t) = token {
                req = req.header("authorization", &format!("Bearer {t}"));
            }
            let mut resp = match body {
                Some(b) => agent.run(
                    req.header("content-type", "application/json")
                        .body(b.to_string())?,
                )?,
                None => agent.run(req.body(())?)?,
            };
            let status = resp.status().as_u16();
            let revision = revision_of(&resp);
            let text = resp.body_mut().read_to_string()?;
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            Ok(Reply {
                status,
                body,
                revision,
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("request thread panicked"))?;
        r
    }

    /// A request that must answer `status`.
    pub fn expect(
        &self,
        method: &str,
        path: &str,
        account: &str,
        body: Option<&Value>,
        status: u16,
    ) -> Result<Reply> {
        let r = self.call(method, path, Some(token_of(account)), body)?;
        if r.status != status {
            bail!(
                "{method} {path} as {account}: {} {}, expected {status}",
                r.status,
                r.body
            );
        }
        Ok(r)
    }

    /// Replays examples/seed-api.json, skipping steps whose note is in `hold_back`.
    /// Returns the revision after the last request.
    pub fn seed(&self, hold_back: &[&str]) -> Result<u64> {
        let seed: Value = serde_json::from_str(SEED_API)?;
        let mut revision = 0;
        for step in seed["steps"].as_array().unwrap() {
            if step["note"]
                .as_str()
                .map(|n| hold_back.contains(&n))
                .unwrap_or(false)
            {
                continue;
            }
            let method = step["method"].as_str().unwrap();
            let status = if method == "POST" && !step["path"].as_str().unwrap().ends_with("accept")
            {
                201
            } else {
                200
            };
            let body = step.get("body");
            revision = self
                .expect(
                    method,
                    step["path"].as_str().unwrap(),
                    step["account"].as_str().unwrap(),
                    body,
                    status,
                )?
                .revision;
        }
        Ok(revision)
    }

    /// `run` arguments of an agent on host-1 following this control plane.
    pub fn agent_args(&self) -> Vec<String> {
        [
            "--control-plane",
            &self.url(),
            "--host",
            "host-1",
            "--agent-token",
            AGENT_TOKEN,
        ]
        .map(String::from)
        .to_vec()
    }

    /// Starts an agent in `host` following this control plane, on `pin_dir` as it is (call
    /// `remove_pins` first for a fresh start); logs to `dir/agent.<tag>.log`.
    pub fn start_agent(
        &self,
        bin: &Path,
        host: &Netns,
        dir: &Path,
        pin_dir: &Path,
        tag: &str,
    ) -> Result<Agent> {
        let args = self.agent_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent::start_with(bin, host, &dir.join("agent.toml"), pin_dir, &args, tag)
    }

    /// SIGKILL (the database stays).
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn http_request(method: &str, url: &str) -> Result<ureq::http::request::Builder> {
    let m: ureq::http::Method = method.parse().context("HTTP method")?;
    Ok(ureq::http::Request::builder().method(m).uri(url))
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A free TCP port (in the namespace the caller's thread is in; namespaces start empty).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18470)
}

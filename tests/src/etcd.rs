//! One etcd member for the end-to-end tests and benchmarks: a local process in a network
//! namespace (or several forming a cluster), its data in a directory of its own, killed
//! and started again at will. `cargo xtask setup` installs Debian's etcd-server.

use crate::netns::Netns;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

pub struct Etcd {
    ns: PathBuf,
    dir: PathBuf,
    members: Vec<Member>,
}

impl Etcd {
    /// `n` members on loopback in `ns`, data under `dir`; returns once all answer.
    pub fn cluster(ns: &Netns, dir: &Path, n: usize) -> Result<Etcd> {
        std::fs::create_dir_all(dir)?;
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                client: ns.run(crate::controlplane::free_port)?,
                peer: ns.run(crate::controlplane::free_port)?,
                child: None,
            });
        }
        let mut e = Etcd {
            ns: ns.path(),
            dir: dir.to_path_buf(),
            members,
        };
        for i in 0..n {
            e.spawn(i)?;
        }
        e.wait_ready()?;
        Ok(e)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let m = &self.members[i];
        let c = format!("http://127.0.0.1:{}", m.client);
        let p = format!("http://127.0.0.1:{}", m.peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns.display()))
            .arg("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(self.dir.join(&m.name))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args([
                "--max-txn-ops",
                "1000000",
                "--max-request-bytes",
                "67108864",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd (`cargo xtask setup` installs etcd-server)")?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// `etcd://` URL of every member, under `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        let eps: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect();
        format!("etcd://{}{prefix}", eps.join(","))
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills every member.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Starts every member that is down again, on its data.
    pub fn restart_all(&mut self) -> Result<()> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i)?;
            }
        }
        self.wait_ready()
    }

    /// Waits until every running member reports itself healthy.
    pub fn wait_ready(&self) -> Result<()> {
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let url = format!("http://127.0.0.1:{}/health", m.client);
            crate::wait_until(
                &format!("etcd member {} healthy", m.name),
                Duration::from_secs(30),
                || {
                    let (ns, url) = (self.ns.clone(), url.clone());
                    std::thread::spawn(move || -> Result<bool> {
                        crate::netns::enter(&ns)?;
                        Ok(ureq::get(&url)
                            .call()
                            .ok()
                            .and_then(|mut r| r.body_mut().read_to_string().ok())
                            .is_some_and(|b| b.contains("true")))
                    })
                    .join()
                    .map_err(|_| anyhow::anyhow!("the health probe panicked"))?
                },
            )?;
        }
        Ok(())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

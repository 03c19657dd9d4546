//! Real etcd members for the tests and the benchmarks, one fixture for all: local
//! processes on free loopback ports (in the host's network namespace, or in a test's),
//! each with its data in a directory of its own (removed afterwards), a member or the
//! whole cluster killed and started again at will, optionally serving TLS only with client
//! certificates required. Needs the `etcd` binary (`cargo xtask setup` installs Debian's
//! etcd-server) and, for TLS, `openssl`.

use crate::netns::Netns;
use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use crate::controlplane::free_port;

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

pub struct Etcd {
    /// The network namespace the members run in; `None`: this process's.
    ns: Option<PathBuf>,
    dir: PathBuf,
    members: Vec<Member>,
    /// Serving TLS only, with client certificates required.
    secure: Option<Secure>,
}

/// The files of a member started with TLS (see [`Etcd::secure`]).
pub struct Secure {
    pub ca: PathBuf,
    /// A client certificate whose CN is `pdp-cert` (a user, once authentication is on).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A user and its password, for the tests that turn authentication on.
    pub user: (String, String),
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate for `client_cn`,
/// made by `openssl` in `dir`.
fn certificates(dir: &Path, client_cn: &str) -> Result<(PathBuf, [PathBuf; 4])> {
    let script = format!(
        r#"set -e
cd '{dir}'
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $ec -keyout ca.key -out ca.pem -days 2 -subj /CN=pdp-test-etcd-ca 2>/dev/null
openssl req $ec -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem 2>/dev/null
openssl req $ec -keyout client.key -out client.csr -subj /CN={client_cn} 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out client.pem 2>/dev/null
"#,
        dir = dir.display()
    );
    let ok = Command::new("sh")
        .args(["-c", &script])
        .status()
        .context("running openssl (cargo xtask setup installs it)")?
        .success();
    anyhow::ensure!(ok, "making the test certificates failed");
    let p = |n: &str| dir.join(n);
    Ok((
        p("ca.pem"),
        [
            p("server.pem"),
            p("server.key"),
            p("client.pem"),
            p("client.key"),
        ],
    ))
}

/// A directory of this process's own for a fixture tagged `tag`, empty.
fn fresh_dir(tag: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pdp-etcd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl Etcd {
    /// One member in this process's network namespace.
    pub fn start(tag: &str) -> Etcd {
        Etcd::cluster(tag, 1)
    }

    /// `n` members forming one cluster in this process's network namespace; returns once
    /// every member is healthy.
    pub fn cluster(tag: &str, n: usize) -> Etcd {
        fresh_dir(tag)
            .and_then(|dir| Etcd::launch(None, dir, n, None))
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `n` members on loopback in `ns`, data under `dir`; returns once all are healthy.
    pub fn cluster_in(ns: &Netns, dir: &Path, n: usize) -> Result<Etcd> {
        std::fs::create_dir_all(dir)?;
        Etcd::launch(Some(ns), dir.to_path_buf(), n, None)
    }

    /// One member serving TLS only: clients must present a certificate signed by the test
    /// CA. Returns once it accepts connections; turning authentication on is the caller's.
    pub fn secure(tag: &str) -> Etcd {
        let start = || -> Result<Etcd> {
            let dir = fresh_dir(tag)?;
            let (ca, [server_cert, server_key, client_cert, client_key]) =
                certificates(&dir, "pdp-cert")?;
            let secure = Secure {
                ca,
                client_cert,
                client_key,
                user: ("pdp".into(), "password-of-pdp-for-tests".into()),
                server_cert,
                server_key,
            };
            Etcd::launch(None, dir, 1, Some(secure))
        };
        start().unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn launch(ns: Option<&Netns>, dir: PathBuf, n: usize, secure: Option<Secure>) -> Result<Etcd> {
        let port = || match ns {
            Some(ns) => ns.run(free_port),
            None => Ok(free_port()),
        };
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                client: port()?,
                peer: port()?,
                child: None,
            });
        }
        let mut e = Etcd {
            ns: ns.map(Netns::path),
            dir,
            members,
            secure,
        };
        for i in 0..n {
            e.spawn(i)?;
        }
        e.wait_ready()?;
        Ok(e)
    }

    /// The secure member's files.
    pub fn secure_files(&self) -> &Secure {
        self.secure_files_if_any()
            .expect("a member started with Etcd::secure")
    }

    /// The member's TLS files, if it serves TLS.
    pub fn secure_files_if_any(&self) -> Option<&Secure> {
        self.secure.as_ref()
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let m = &self.members[i];
        let scheme = if self.secure.is_some() {
            "https"
        } else {
            "http"
        };
        let c = format!("{scheme}://127.0.0.1:{}", m.client);
        let p = format!("http://127.0.0.1:{}", m.peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))?;
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("etcd");
                c
            }
            None => Command::new("etcd"),
        };
        if let Some(s) = &self.secure {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&s.ca)
                .arg("--cert-file")
                .arg(&s.server_cert)
                .arg("--key-file")
                .arg(&s.server_key);
        }
        let child = cmd
            .args(["--name", &m.name, "--data-dir"])
            .arg(self.dir.join(&m.name))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            // A 100,000-route table replaced in one transaction (docs/controlplane.md, "Stores").
            .args(["--max-txn-ops", "1000000", "--max-request-bytes", "67108864"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd: run the tests through `cargo xtask test`, whose setup installs etcd-server")?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Every member's `host:port`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect()
    }

    /// The first member's `host:port`.
    pub fn endpoint(&self) -> String {
        self.endpoints()[0].clone()
    }

    /// `etcd://` URL of the whole cluster under `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}{prefix}", self.endpoints().join(","))
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

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.spawn(i)?;
        self.wait_ready()
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

    /// Waits until every running member is healthy (a TLS member: accepts connections;
    /// its health needs a client certificate, which the caller's own client has).
    pub fn wait_ready(&self) -> Result<()> {
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let (ns, client, tls) = (self.ns.clone(), m.client, self.secure.is_some());
            crate::wait_until(
                &format!("etcd member {} healthy", m.name),
                Duration::from_secs(30),
                || {
                    let ns = ns.clone();
                    std::thread::spawn(move || -> Result<bool> {
                        if let Some(ns) = &ns {
                            crate::netns::enter(ns)?;
                        }
                        if tls {
                            return Ok(std::net::TcpStream::connect(("127.0.0.1", client)).is_ok());
                        }
                        Ok(ureq::get(&format!("http://127.0.0.1:{client}/health"))
                            .call()
                            .ok()
                            .and_then(|mut r| r.body_mut().read_to_string().ok())
                            .is_some_and(|b| b.contains("true")))
                    })
                    .join()
                    .map_err(|_| anyhow!("the health probe panicked"))?
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

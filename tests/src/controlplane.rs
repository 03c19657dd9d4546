//! A real control-plane process for end-to-end tests and the demo, running in the
//! hypervisor namespace (the agent reaches it on that namespace's loopback), and a small
//! client whose requests are made from inside that namespace.

use crate::netns::Netns;
use crate::seed::Agent;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const SEED_API: &str = include_str!("../../examples/seed-api.json");
/// The seed spread over three hosts (see tests/src/fleet.rs for the same placement).
pub const FLEET_API: &str = include_str!("../../examples/fleet-api.json");
/// host-1's agent credential (the host every test port is on).
pub const AGENT_TOKEN: &str = "host-1-token-for-tests";
/// host-2's (a host with no ports in the single-host seed).
pub const HOST_2_TOKEN: &str = "host-2-token-for-tests";
/// host-3's (the fleet demo's third host).
pub const HOST_3_TOKEN: &str = "host-3-token-for-tests";
/// Each host's credential.
pub const HOST_TOKENS: [(&str, &str); 3] = [
    ("host-1", AGENT_TOKEN),
    ("host-2", HOST_2_TOKEN),
    ("host-3", HOST_3_TOKEN),
];
/// Account -> API token.
pub const ACCOUNTS: [(&str, &str); 3] = [
    ("111111111111", "token-for-account-a"),
    ("222222222222", "token-for-account-b"),
    ("333333333333", "token-for-account-c"),
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
    /// Serving https: (certificate, key, and the CA certificate clients verify with).
    tls: Option<Tls>,
    bin: PathBuf,
    ns: PathBuf,
    pub db: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    /// Address it listens on in its namespace (127.0.0.1 unless other hosts must reach it).
    pub listen: std::net::IpAddr,
    /// `--rate-limit` (requests per second per account), when not the default.
    rate_limit: Option<f64>,
    /// `--store URL` instead of `--db` (the database path then only names the log and
    /// secret files).
    store: Option<String>,
    /// More flags for the control plane.
    flags: Vec<String>,
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
        Self::start_with(bin, host, db, port, None)
    }

    /// [`Self::start`] listening on every address of `host` (agents on other hosts reach
    /// it over the underlay; calls from `host` still use its loopback).
    pub fn start_for_fleet(bin: &Path, host: &Netns, db: &Path, port: u16) -> Result<ControlPlane> {
        Self::start_listening(bin, host, db, [0, 0, 0, 0].into(), port, None)
    }

    /// [`Self::start`] serving https with `tls` (see [`make_tls`]).
    pub fn start_with(
        bin: &Path,
        host: &Netns,
        db: &Path,
        port: u16,
        tls: Option<Tls>,
    ) -> Result<ControlPlane> {
        Self::start_listening(bin, host, db, [127, 0, 0, 1].into(), port, tls)
    }

    /// [`Self::start`] without the per-account rate limit's bite (benchmarks make
    /// thousands of calls a second from one account).
    pub fn start_for_bench(bin: &Path, host: &Netns, db: &Path, port: u16) -> Result<ControlPlane> {
        Self::start_flagged(
            bin,
            host,
            db,
            [127, 0, 0, 1].into(),
            port,
            None,
            Some(1e6),
            &[],
        )
    }

    /// [`Self::start`] keeping its objects in the store at `url` (`etcd://…`); `files` is
    /// where its log and secrets go.
    pub fn start_on_store(
        bin: &Path,
        host: &Netns,
        files: &Path,
        port: u16,
        url: &str,
    ) -> Result<ControlPlane> {
        let mut cp = ControlPlane {
            child: None,
            tls: None,
            bin: bin.to_path_buf(),
            ns: host.path(),
            db: files.to_path_buf(),
            port,
            log: files.with_extension("log"),
            listen: [127, 0, 0, 1].into(),
            rate_limit: None,
            store: Some(url.to_string()),
            flags: Vec::new(),
        };
        cp.spawn()?;
        Ok(cp)
    }

    fn start_listening(
        bin: &Path,
        host: &Netns,
        db: &Path,
        listen: std::net::IpAddr,
        port: u16,
        tls: Option<Tls>,
    ) -> Result<ControlPlane> {
        Self::start_flagged(bin, host, db, listen, port, tls, None, &[])
    }

    /// [`Self::start_with`] with more flags (`--client-deadline 3`, …).
    pub fn start_with_flags(
        bin: &Path,
        host: &Netns,
        db: &Path,
        port: u16,
        tls: Option<Tls>,
        flags: &[&str],
    ) -> Result<ControlPlane> {
        Self::start_flagged(bin, host, db, [127, 0, 0, 1].into(), port, tls, None, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_flagged(
        bin: &Path,
        host: &Netns,
        db: &Path,
        listen: std::net::IpAddr,
        port: u16,
        tls: Option<Tls>,
        rate_limit: Option<f64>,
        flags: &[&str],
    ) -> Result<ControlPlane> {
        let mut cp = ControlPlane {
            flags: flags.iter().map(|f| f.to_string()).collect(),
            rate_limit,
            store: None,
            child: None,
            tls,
            bin: bin.to_path_buf(),
            ns: host.path(),
            db: db.to_path_buf(),
            port,
            log: db.with_extension("log"),
            listen,
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
                &std::net::SocketAddr::new(self.listen, self.port).to_string(),
            ]);
        match &self.store {
            Some(url) => c.args(["--store", url]),
            None => c.arg("--db").arg(&self.db),
        };
        c.arg("--account-tokens")
            .arg(self.secrets("account-tokens", &ACCOUNTS)?)
            .arg("--host-tokens")
            .arg(self.secrets("host-tokens", &HOST_TOKENS)?);
        if let Some(r) = self.rate_limit {
            c.arg("--rate-limit").arg(r.to_string());
        }
        c.args(&self.flags);
        if let Some(t) = &self.tls {
            c.arg("--tls-cert")
                .arg(&t.cert)
                .arg("--tls-key")
                .arg(&t.key);
        }
        self.child = Some(
            c.stdout(Stdio::null())
                .stderr(logf)
                .spawn()
                .context("starting the control plane")?,
        );
        crate::wait_until(
            "the control plane answering /healthz",
            Duration::from_secs(15),
            || Ok(self.get_health().is_ok()),
        )
        .map_err(|e| anyhow::anyhow!("{e:#}:\n{}", self.log_text()))
    }

    pub fn get_health(&self) -> Result<()> {
        let r = self.call("GET", "/healthz", None, None)?;
        if r.status != 200 {
            bail!("healthz: {}", r.status);
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The process (for what `ps` shows of it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// One request, made from inside the hypervisor namespace.
    /// Waits until `agent` (of `host`) holds what this control plane has for its host at
    /// `revision`: it installed that revision or a later one, or nothing changed for its
    /// host since the revision it installed (its document is trimmed to what it uses, so
    /// most changes never reach it; the control plane says so: an empty delta).
    pub fn wait_current(
        &self,
        agent: &mut Agent,
        host: &str,
        revision: u64,
        timeout: Duration,
    ) -> Result<()> {
        let token = HOST_TOKENS
            .iter()
            .find(|(h, _)| *h == host)
            .map(|(_, t)| *t)
            .context("a host with a test token")?;
        crate::wait_until(
            &format!("{host}'s agent current at revision {revision}"),
            timeout,
            || {
                let held = agent.synced_revision();
                if held.is_some_and(|r| r >= revision) {
                    return Ok(true);
                }
                let Some(held) = held else { return Ok(false) };
                let r = self.call(
                    "GET",
                    &format!("/v1/hosts/{host}/state?after={held}&delta=true&wait_ms=0"),
                    Some(token),
                    None,
                )?;
                Ok(r.status == 200
                    && r.body["delta"] == serde_json::json!({})
                    && r.body["revision"].as_u64().is_some_and(|at| at >= revision))
            },
        )
    }

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
        let ca = match &self.tls {
            Some(t) => Some(std::fs::read(&t.ca)?),
            None => None,
        };
        let r = std::thread::spawn(move || -> Result<Reply> {
            crate::netns::enter(&path_buf)?;
            let mut config = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)));
            if let Some(pem) = ca {
                // As the agent trusts the control plane (`--ca`).
                config = config.tls_config(peer_dataplane::agent::long_poll::trusting(&pem)?);
            }
            let agent: ureq::Agent = config.build().into();
            request(&agent, &method, &url, token.as_deref(), body.as_ref())
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
        self.replay(SEED_API, hold_back)
    }

    /// Replays the steps of an API script (examples/*-api.json) as [`Self::seed`] does.
    pub fn replay(&self, script: &str, hold_back: &[&str]) -> Result<u64> {
        let seed: Value = serde_json::from_str(script)?;
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

    /// `run` arguments of an agent on host-1 following this control plane (its token in
    /// a file, as in production: never on the command line).
    pub fn agent_args(&self) -> Result<Vec<String>> {
        self.host_agent_args("host-1", &self.url(), None)
    }

    /// `run` arguments of `host`'s agent reaching this control plane at `url`; with
    /// `fleet` (underlay address, uplink) it registers the host in the fleet first.
    pub fn host_agent_args(
        &self,
        host: &str,
        url: &str,
        fleet: Option<(&str, &str)>,
    ) -> Result<Vec<String>> {
        let secret = HOST_TOKENS
            .iter()
            .find(|(h, _)| *h == host)
            .map(|(_, t)| *t)
            .context("a host with a test token")?;
        let token = self.db.with_extension(format!("{host}.token"));
        write_secret(&token, secret)?;
        let mut args: Vec<String> = [
            "--control-plane",
            url,
            "--host",
            host,
            "--token-file",
            &token.display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        if let Some((underlay, uplink)) = fleet {
            args.extend(["--underlay-ipv4", underlay, "--uplink", uplink].map(String::from));
        }
        if let Some(t) = &self.tls {
            args.extend(["--ca".to_string(), t.ca.display().to_string()]);
        } else if !url.starts_with("http://127.") {
            // Plain http across the test's own underlay (namespaces on this machine).
            args.push("--insecure-http".to_string());
        }
        Ok(args)
    }

    /// A `NAME:TOKEN` file next to the database, readable by its owner only.
    fn secrets(&self, what: &str, pairs: &[(&str, &str)]) -> Result<PathBuf> {
        let path = self.db.with_extension(what);
        let text: String = pairs.iter().map(|(n, t)| format!("{n}:{t}\n")).collect();
        write_secret(&path, &text)?;
        Ok(path)
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
        let args = self.agent_args()?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent::start_with(bin, host, &dir.join("agent.toml"), pin_dir, &args, tag)
    }

    /// Rewrites the account tokens file with `pairs` (account, token); the control plane
    /// reads it at its next start or [`Self::hangup`].
    pub fn write_account_tokens(&self, pairs: &[(&str, &str)]) -> Result<PathBuf> {
        self.secrets("account-tokens", pairs)
    }

    /// SIGHUP: the control plane reads its tokens files again.
    pub fn hangup(&self) -> Result<()> {
        let pid = self.pid().context("the control plane is not running")?;
        // SAFETY: kill(2) with a pid this test started and a valid signal.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) } != 0 {
            bail!("SIGHUP to {pid}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The value of the metric line that starts with `series` (`name` or
    /// `name{label="v"}`) on `GET /metrics`; 0 if absent (a counter never moved).
    pub fn metric(&self, series: &str) -> Result<f64> {
        let r = self.call("GET", "/metrics", None, None)?;
        let text = r.body.as_str().context("/metrics is text")?.to_string();
        for line in text.lines() {
            if let Some(v) = line
                .strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
            {
                return v
                    .trim()
                    .parse()
                    .with_context(|| format!("metric line {line}"));
            }
        }
        Ok(0.0)
    }

    /// Plain-http requests (raw request text, each on a connection of its own, which the
    /// request should close) from `source`, an address of the namespace's loopback
    /// (127.0.0.0/8 is all local), so that a test can be two clients. Returns each
    /// answer's status and head (status line and headers).
    pub fn raw_http(
        &self,
        source: std::net::Ipv4Addr,
        requests: Vec<String>,
    ) -> Result<Vec<(u16, String)>> {
        let (ns, port) = (self.ns.clone(), self.port);
        std::thread::spawn(move || -> Result<Vec<(u16, String)>> {
            use std::io::{Read, Write};
            crate::netns::enter(&ns)?;
            let mut out = Vec::with_capacity(requests.len());
            for req in requests {
                let mut s = connect_from(
                    source,
                    std::net::SocketAddrV4::new([127, 0, 0, 1].into(), port),
                )?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(req.as_bytes())?;
                let mut answer = Vec::new();
                s.read_to_end(&mut answer)?;
                let text = String::from_utf8_lossy(&answer).to_string();
                let head = text
                    .split("\r\n\r\n")
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .with_context(|| format!("not an HTTP answer: {text:?}"))?;
                out.push((status, head));
            }
            Ok(out)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("request thread panicked"))?
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

/// One request on `agent` (which must not turn HTTP errors into `Err`) to `url`, as
/// `token` if any, with `body` as JSON if any. A body that is not JSON comes back as a
/// string.
pub fn request(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<Reply> {
    let method: ureq::http::Method = method.parse().context("HTTP method")?;
    let mut req = ureq::http::Request::builder().method(method).uri(url);
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
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// `d` with every list in a canonical order: deltas do not keep the order, so a document
/// rebuilt from them is compared with a whole one in this form.
pub fn canonical_document(d: &peer_dataplane_model::desired::document::Document) -> Value {
    fn sort(v: &mut Value) {
        match v {
            Value::Array(a) => {
                a.iter_mut().for_each(sort);
                a.sort_by_key(|x| x.to_string());
            }
            Value::Object(o) => o.values_mut().for_each(sort),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(d).expect("a document is JSON");
    sort(&mut v);
    v
}

/// A free TCP port (in the namespace the caller's thread is in; namespaces start empty).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18470)
}

/// A TCP connection to `to` from the local address `from` (bound before connecting).
pub fn connect_from(
    from: std::net::Ipv4Addr,
    to: std::net::SocketAddrV4,
) -> Result<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    let sin = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket; the addresses are valid sockaddr_in of `len` bytes; the fd
    // is owned by the TcpStream from then on (closed on error paths here).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let (a, b) = (sin(std::net::SocketAddrV4::new(from, 0)), sin(to));
        if libc::bind(fd, &a as *const _ as *const libc::sockaddr, len) != 0 {
            bail!("bind {from}: {}", std::io::Error::last_os_error());
        }
        if libc::connect(fd, &b as *const _ as *const libc::sockaddr, len) != 0 {
            bail!(
                "connect {to} from {from}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(stream)
    }
}

/// Writes a secret file with mode 0600.
pub fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// A certificate for 127.0.0.1 signed by a CA made for the test, from `openssl`.
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

pub fn make_tls(dir: &Path) -> Result<Tls> {
    let p = |n: &str| dir.join(n);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let openssl = |args: &[&str]| -> Result<()> {
        crate::netns::sh(Command::new("openssl").args(args).stdin(Stdio::null()))
            .map(|_| ())
            .context("openssl (cargo xtask setup installs it)")
    };
    let s = |p: PathBuf| p.display().to_string();
    openssl(
        &[
            &["req", "-x509"][..],
            &ec[..],
            &[
                "-keyout",
                &s(p("ca.key")),
                "-out",
                &s(p("ca.pem")),
                "-days",
                "2",
                "-subj",
                "/CN=pdp-test-ca",
            ][..],
        ]
        .concat(),
    )?;
    openssl(
        &[
            &["req"][..],
            &ec[..],
            &[
                "-keyout",
                &s(p("cp.key")),
                "-out",
                &s(p("cp.csr")),
                "-subj",
                "/CN=127.0.0.1",
            ][..],
        ]
        .concat(),
    )?;
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &s(p("cp.csr")),
        "-CA",
        &s(p("ca.pem")),
        "-CAkey",
        &s(p("ca.key")),
        "-CAcreateserial",
        "-out",
        &s(p("cp.pem")),
        "-days",
        "2",
        "-extfile",
        &s(p("ext.cnf")),
    ])?;
    Ok(Tls {
        cert: p("cp.pem"),
        key: p("cp.key"),
        ca: p("ca.pem"),
    })
}

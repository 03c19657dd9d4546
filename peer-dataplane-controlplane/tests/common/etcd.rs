//! Real etcd members for the tests: local processes on free loopback ports, each with its
//! data in a directory of its own (removed afterwards), a member or the whole cluster
//! killed and started again at will. Needs the `etcd` binary (`cargo xtask setup`
//! installs Debian's etcd-server).

use peer_dataplane_controlplane::store::etcd::{EtcdAccess, EtcdStore};
use peer_dataplane_controlplane::store::ObjectStore;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

pub struct Etcd {
    dir: PathBuf,
    members: Vec<Member>,
    /// Serving TLS only, with client certificates required and users enabled.
    secure: Option<Secure>,
}

/// The files of a member started with TLS and authentication (see [`Etcd::secure`]).
pub struct Secure {
    pub ca: PathBuf,
    /// A client certificate whose CN is the user `pdp-cert`.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The user `pdp` (read and write on everything) and its password.
    pub user: (String, String),
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl Secure {
    /// Access with the CA, the client certificate and, if `user`, the password login.
    pub fn access(&self, user: bool) -> EtcdAccess {
        EtcdAccess {
            ca: Some(std::fs::read(&self.ca).unwrap()),
            identity: Some((
                std::fs::read(&self.client_cert).unwrap(),
                std::fs::read(&self.client_key).unwrap(),
            )),
            user: user.then(|| self.user.clone()),
        }
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate for `client_cn`,
/// made by `openssl` in `dir`.
fn certificates(dir: &std::path::Path, client_cn: &str) -> (PathBuf, [PathBuf; 4]) {
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
        .expect("openssl (cargo xtask setup installs it)")
        .success();
    assert!(ok, "making the test certificates failed");
    let p = |n: &str| dir.join(n);
    (
        p("ca.pem"),
        [
            p("server.pem"),
            p("server.key"),
            p("client.pem"),
            p("client.key"),
        ],
    )
}

impl Etcd {
    /// One member.
    pub fn start(tag: &str) -> Etcd {
        Etcd::cluster(tag, 1)
    }

    /// `n` members forming one cluster; returns once every member answers.
    pub fn cluster(tag: &str, n: usize) -> Etcd {
        let dir = std::env::temp_dir().join(format!("pdp-etcd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let mut e = Etcd {
            dir,
            members,
            secure: None,
        };
        for i in 0..n {
            e.spawn(i);
        }
        e.wait_ready();
        e
    }

    /// One member serving TLS only (clients must present a certificate signed by the
    /// test CA) with authentication on: users `root`, `pdp` (a password) and `pdp-cert`
    /// (the client certificate's CN), the last two allowed everything.
    pub fn secure(tag: &str) -> Etcd {
        let dir = std::env::temp_dir().join(format!("pdp-etcd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, [server_cert, server_key, client_cert, client_key]) =
            certificates(&dir, "pdp-cert");
        let secure = Secure {
            ca,
            client_cert,
            client_key,
            user: ("pdp".into(), "password-of-pdp-for-tests".into()),
            server_cert,
            server_key,
        };
        let members = vec![Member {
            name: "m0".into(),
            client: free_port(),
            peer: free_port(),
            child: None,
        }];
        let mut e = Etcd {
            dir,
            members,
            secure: Some(secure),
        };
        e.spawn(0);
        e.wait_ready();
        e.enable_auth();
        e
    }

    /// The secure member's files.
    pub fn secure_files(&self) -> &Secure {
        self.secure
            .as_ref()
            .expect("a member started with Etcd::secure")
    }

    fn enable_auth(&self) {
        let s = self.secure_files();
        let (eps, access) = (self.endpoints(), s.access(false));
        let opts = access.clone();
        let pw = s.user.1.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut o = etcd_client::ConnectOptions::new();
                let tls = etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(opts.ca.unwrap()))
                    .identity({
                        let (c, k) = opts.identity.unwrap();
                        etcd_client::Identity::from_pem(c, k)
                    });
                o = o.with_tls(tls);
                let mut c = etcd_client::Client::connect(eps, Some(o)).await.unwrap();
                c.role_add("pdp").await.unwrap();
                c.role_grant_permission(
                    "pdp",
                    etcd_client::Permission::read_write(vec![0u8]).with_from_key(),
                )
                .await
                .unwrap();
                for (user, password) in [
                    ("root", "password-of-root"),
                    ("pdp", pw.as_str()),
                    ("pdp-cert", "unused-password-of-pdp-cert"),
                ] {
                    c.user_add(user, password, None).await.unwrap();
                }
                c.user_grant_role("root", "root").await.unwrap();
                c.user_grant_role("pdp", "pdp").await.unwrap();
                c.user_grant_role("pdp-cert", "pdp").await.unwrap();
                c.auth_enable().await.unwrap();
            });
        })
        .join()
        .unwrap();
    }

    fn spawn(&mut self, i: usize) {
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
            .open(self.dir.join(format!("{}.log", m.name)))
            .unwrap();
        let mut cmd = Command::new("etcd");
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
            .unwrap_or_else(|e| {
                panic!("cannot start etcd ({e}): run the tests through `cargo xtask test`, whose setup installs etcd-server")
            });
        self.members[i].child = Some(child);
    }

    /// Every member's `host:port`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect()
    }

    /// `etcd://` URL of the whole cluster under `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}{prefix}", self.endpoints().join(","))
    }

    pub fn endpoint(&self) -> String {
        self.endpoints()[0].clone()
    }

    /// A store on every member under `prefix` (a secure member: with its certificate and
    /// the password login).
    pub fn store(&self, prefix: &str) -> EtcdStore {
        EtcdStore::connect_with(&self.endpoints(), prefix, &self.access()).unwrap()
    }

    fn access(&self) -> EtcdAccess {
        self.secure
            .as_ref()
            .map(|s| s.access(true))
            .unwrap_or_default()
    }

    /// The member that leads the cluster now (the one whose loss forces an election).
    pub fn leader(&self) -> usize {
        let eps = self.endpoints();
        std::thread::scope(|s| {
            s.spawn(|| {
                // A runtime made and dropped on this thread: the caller may run inside
                // another.
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for (i, ep) in eps.iter().enumerate() {
                        let Ok(mut c) = etcd_client::Client::connect([ep.clone()], None).await
                        else {
                            continue;
                        };
                        let Ok(st) = c.status().await else { continue };
                        if st.header().map(|h| h.member_id()) == Some(st.leader()) {
                            return i;
                        }
                    }
                    panic!("no etcd member says it leads");
                })
            })
            .join()
            .unwrap()
        })
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ready();
    }

    /// Waits until every running member answers a read.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let ep = format!("127.0.0.1:{}", m.client);
            // Before auth is enabled the password login is refused: the certificate alone.
            let access = self
                .secure
                .as_ref()
                .map(|s| s.access(false))
                .unwrap_or_default();
            while EtcdStore::connect_with(&[ep.clone()], "/probe", &access)
                .and_then(|mut s| s.load())
                .is_err()
            {
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} did not answer within 30 s",
                    m.name
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

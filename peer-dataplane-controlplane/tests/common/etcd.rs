//! Real etcd members for the tests: local processes on free loopback ports, each with its
//! data in a directory of its own (removed afterwards), a member or the whole cluster
//! killed and started again at will. Needs the `etcd` binary (`cargo xtask setup`
//! installs Debian's etcd-server).

use peer_dataplane_controlplane::store::etcd::EtcdStore;
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
        let mut e = Etcd { dir, members };
        for i in 0..n {
            e.spawn(i);
        }
        e.wait_ready();
        e
    }

    fn spawn(&mut self, i: usize) {
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
            .open(self.dir.join(format!("{}.log", m.name)))
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(self.dir.join(&m.name))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            // A 100,000-route table replaced in one transaction (README, "Stores").
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

    /// A store on every member under `prefix`.
    pub fn store(&self, prefix: &str) -> EtcdStore {
        EtcdStore::connect(&self.endpoints(), prefix).unwrap()
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
            while EtcdStore::connect(&[ep.clone()], "/probe")
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

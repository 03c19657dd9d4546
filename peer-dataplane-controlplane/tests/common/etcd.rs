//! The control plane's side of the shared etcd fixture (`peer_dataplane_tests::etcd`):
//! a store on the members, the member that leads, and a TLS member with users and
//! authentication turned on.

#[allow(unused_imports)] // each test file uses its part
pub use peer_dataplane_tests::etcd::{free_port, Etcd, Secure};

use peer_dataplane_controlplane::store::etcd::{EtcdAccess, EtcdStore};
use peer_dataplane_controlplane::store::ObjectStore;
use std::time::{Duration, Instant};

/// Access with the CA, the client certificate and, if `user`, the password login.
pub fn access(s: &Secure, user: bool) -> EtcdAccess {
    EtcdAccess {
        ca: Some(std::fs::read(&s.ca).unwrap()),
        identity: Some((
            std::fs::read(&s.client_cert).unwrap(),
            std::fs::read(&s.client_key).unwrap(),
        )),
        user: user.then(|| s.user.clone()),
    }
}

/// What the control plane's tests ask of the members beyond running them.
pub trait EtcdExt {
    /// A store on every member under `prefix` (a secure member: with its certificate and
    /// the password login).
    fn store(&self, prefix: &str) -> EtcdStore;
    /// The member that leads the cluster now (the one whose loss forces an election).
    fn leader(&self) -> usize;
}

impl EtcdExt for Etcd {
    fn store(&self, prefix: &str) -> EtcdStore {
        let access = match self.secure_files_if_any() {
            Some(s) => access(s, true),
            None => EtcdAccess::default(),
        };
        EtcdStore::connect_with(&self.endpoints(), prefix, &access).unwrap()
    }

    fn leader(&self) -> usize {
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
}

/// One member serving TLS only (clients must present a certificate signed by the test
/// CA) with authentication on: users `root`, `pdp` (a password) and `pdp-cert` (the client
/// certificate's CN), the last two allowed everything.
pub fn secure_with_users(tag: &str) -> Etcd {
    let etcd = Etcd::secure(tag);
    let s = etcd.secure_files();
    // Answering reads with the certificate alone (the password login comes below).
    let (eps, certificate) = (etcd.endpoints(), access(s, false));
    let deadline = Instant::now() + Duration::from_secs(30);
    while EtcdStore::connect_with(&eps, "/probe", &certificate)
        .and_then(|mut s| s.load())
        .is_err()
    {
        assert!(Instant::now() < deadline, "etcd did not answer within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pw = s.user.1.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(certificate.ca.unwrap()))
                .identity({
                    let (c, k) = certificate.identity.unwrap();
                    etcd_client::Identity::from_pem(c, k)
                });
            let o = etcd_client::ConnectOptions::new().with_tls(tls);
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
    etcd
}

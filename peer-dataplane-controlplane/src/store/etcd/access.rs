//! How a replica reaches etcd: TLS and user authentication.

use anyhow::{bail, Context, Result};
use etcd_client::ConnectOptions;

/// How a replica proves itself to etcd and checks etcd's identity: TLS (the CA that signed
/// the members' certificates, and this replica's client certificate when etcd asks for
/// one: `--client-cert-auth`), and etcd's user authentication. Without TLS the client
/// speaks plain http (a lab, or etcd on loopback).
#[derive(Clone, Default)]
pub struct EtcdAccess {
    /// PEM of the CA the members' certificates chain to.
    pub ca: Option<Vec<u8>>,
    /// PEM certificate and key this replica presents.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// User name and password for etcd's authentication.
    pub user: Option<(String, String)>,
}

impl EtcdAccess {
    /// Reads the files the flags name; says which flag is missing or unreadable.
    pub fn from_files(
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
        user: Option<&str>,
        password_file: Option<&std::path::Path>,
    ) -> Result<EtcdAccess> {
        let read = |flag: &str, p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("reading {flag} {}", p.display()))
        };
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read("--etcd-cert", c)?, read("--etcd-key", k)?)),
            (None, None) => None,
            _ => bail!("--etcd-cert and --etcd-key go together"),
        };
        let ca = ca.map(|p| read("--etcd-ca", p)).transpose()?;
        if identity.is_some() && ca.is_none() {
            bail!("--etcd-cert needs --etcd-ca (the client certificate is for TLS)");
        }
        let user = match (user, password_file) {
            (Some(u), Some(p)) => {
                let pw = String::from_utf8(read("--etcd-password-file", p)?)
                    .context("--etcd-password-file is not UTF-8")?;
                let pw = pw.trim_end_matches(['\n', '\r']).to_string();
                if pw.is_empty() {
                    bail!("--etcd-password-file {} is empty", p.display());
                }
                Some((u.to_string(), pw))
            }
            (None, None) => None,
            (Some(_), None) => bail!(
                "--etcd-user needs --etcd-password-file (never a password on the command line)"
            ),
            (None, Some(_)) => bail!("--etcd-password-file needs --etcd-user"),
        };
        Ok(EtcdAccess { ca, identity, user })
    }

    pub(super) fn options(&self) -> ConnectOptions {
        let mut o = ConnectOptions::new();
        if let Some(ca) = &self.ca {
            let mut tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(ca));
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
            }
            o = o.with_tls(tls);
        }
        if let Some((user, password)) = &self.user {
            o = o.with_user(user.clone(), password.clone());
        }
        o
    }
}

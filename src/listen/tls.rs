//! TLS for a listener (rustls, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`). Client
//! certificates are checked against `client_ca`: `required` refuses a handshake without a
//! valid one, `optional` lets it through and leaves the decision to each source's
//! `allowed_client_names`. The certificate and key are read again on `reload` (SIGHUP);
//! a bad new file keeps the configuration in use.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{ClientAuth, TlsConfig};

/// The names a verified client certificate carries, for `allowed_client_names`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub names: Arc<[String]>,
}

impl ClientIdentity {
    /// How the identity is kept with a journaled event.
    pub fn describe(&self) -> String {
        self.names.join(", ")
    }
}

/// What `[server.tls]` names, read again on every reload.
struct Files {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    client_ca: Option<std::path::PathBuf>,
    client_auth: ClientAuth,
}

pub struct Tls {
    files: Files,
    current: RwLock<Arc<ServerConfig>>,
    /// Where refused handshakes are counted and logged.
    refusals: Arc<crate::refuse::RefusalLog>,
}

impl Tls {
    /// Reads the files named in `[server.tls]`; an error names the file and the problem.
    pub fn load(config: &TlsConfig) -> Result<Tls, String> {
        let files = Files {
            cert: config.cert.clone(),
            key: config.key.clone(),
            client_ca: config.client_ca.clone(),
            client_auth: config.client_auth,
        };
        let first = files.build()?;
        Ok(Tls {
            files,
            current: RwLock::new(Arc::new(first)),
            refusals: Arc::default(),
        })
    }

    /// Logs refused handshakes through `log` (shared with the listener's other refusals,
    /// whose summaries it flushes) instead of a log of its own.
    pub fn log_refusals_to(self, log: Arc<crate::refuse::RefusalLog>) -> Tls {
        Tls {
            refusals: log,
            ..self
        }
    }

    pub fn refusals(&self) -> Arc<crate::refuse::RefusalLog> {
        self.refusals.clone()
    }

    /// Reads the files again. On an error the configuration in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = self.files.build()?;
        *self.current.write().expect("tls config lock") = Arc::new(fresh);
        Ok(())
    }

    /// An acceptor with the configuration in use now; open connections keep theirs.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().expect("tls config lock").clone())
    }
}

impl Files {
    fn build(&self) -> Result<ServerConfig, String> {
        let certs = read_certs(&self.cert)?;
        let key = read_key(&self.key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(path)? {
                    roots.add(cert).map_err(|e| {
                        format!("{}: not a usable CA certificate: {e}", path.display())
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let verifier = match self.client_auth {
                    ClientAuth::Required => verifier,
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            format!(
                "{} and {} do not make a usable pair: {e}",
                self.cert.display(),
                self.key.display()
            )
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no certificate", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // Never quote the file: it is a private key.
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|_| format!("{}: not a PEM private key", path.display()))?
        .ok_or_else(|| format!("{}: holds no private key", path.display()))
}

/// Why a handshake failed, as a short code for logs: `unknown_ca`,
/// `certificate_expired`, `bad_certificate`, `no_client_certificate`, `client_alert`
/// (the client refused ours), `incompatible`, or `handshake_failed`.
pub fn refusal(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(error) = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) else {
        return "handshake_failed";
    };
    match error {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_ca",
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "certificate_expired",
        Error::InvalidCertificate(_) => "bad_certificate",
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::AlertReceived(_) => "client_alert",
        Error::PeerIncompatible(_) => "incompatible",
        _ => "handshake_failed",
    }
}

/// The client's names from its certificate (already verified by the handshake): the SAN
/// DNS names, or the subject's CN when there are none.
pub fn client_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<ClientIdentity> {
    let leaf = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
        {
            names.push(cn.to_ascii_lowercase());
        }
    }
    Some(ClientIdentity {
        names: names.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: &str, dns: &[&str]) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for name in dns {
            params
                .subject_alt_names
                .push(SanType::DnsName((*name).try_into().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn san_dns_names_win_over_the_cn() {
        let identity =
            client_identity(Some(&[cert("ignored", &["A.example", "b.example"])])).unwrap();
        assert_eq!(&*identity.names, ["a.example", "b.example"]);
        assert_eq!(identity.describe(), "a.example, b.example");
    }

    #[test]
    fn the_cn_counts_when_there_is_no_san() {
        let identity = client_identity(Some(&[cert("Legacy.Client", &[])])).unwrap();
        assert_eq!(&*identity.names, ["legacy.client"]);
    }

    #[test]
    fn no_certificate_no_identity() {
        assert_eq!(client_identity(None), None);
        assert_eq!(client_identity(Some(&[])), None);
    }
}

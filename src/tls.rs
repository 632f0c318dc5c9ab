//! TLS for the protocol and HTTP listeners and for the client: rustls on ring, certificates and
//! keys from PEM files.
//!
//! A server given `--tls-cert` and `--tls-key` speaks TLS on its TCP listener and on its
//! dashboard and metrics ports (a Unix socket stays plain: the file's permissions guard it). It
//! announces its certificate's SHA-256 fingerprint, so that a client can pin it
//! (`--tls-fingerprint`) where no CA signed it. A client verifies the server's name against the
//! system's roots, or against `--tls-ca`; a pin replaces name and chain checks with one exact
//! certificate.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A listener's TLS: its acceptor and its certificate's fingerprint.
#[derive(Clone)]
pub struct ServerTls {
    /// Wraps accepted connections.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The SHA-256 of the leaf certificate, for clients to pin.
    pub fingerprint: Fingerprint,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerTls({})", self.fingerprint)
    }
}

impl ServerTls {
    /// Loads the certificate chain (leaf first) and private key, both PEM.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| anyhow!("{}: cannot read a PEM certificate: {e}", cert.display()))?;
        let Some(leaf) = chain.first() else { bail!("{}: no certificate in the file", cert.display()) };
        let fingerprint = Fingerprint::of(leaf);
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| anyhow!("{}: cannot read a PEM private key: {e}", key.display()))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("setting up TLS")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| anyhow!("{}: the key does not fit the certificate: {e}", cert.display()))?;
        Ok(ServerTls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), fingerprint })
    }
}

/// What a client trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The system's roots (`/etc/ssl/certs`).
    System,
    /// The CA certificates in this PEM file (and not the system's).
    Ca(PathBuf),
    /// Exactly the certificate with this fingerprint, whoever signed it.
    Pin(Fingerprint),
}

/// A client's TLS: its configuration, made once.
#[derive(Clone)]
pub struct ClientTls(pub Arc<rustls::ClientConfig>);

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// The configuration for `trust`.
    pub fn new(trust: &Trust) -> anyhow::Result<Self> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("setting up TLS")?;
        let config = match trust {
            Trust::Pin(fingerprint) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned {
                    fingerprint: *fingerprint,
                    algorithms: provider().signature_verification_algorithms,
                }))
                .with_no_client_auth(),
            Trust::System | Trust::Ca(_) => builder.with_root_certificates(roots(trust)?).with_no_client_auth(),
        };
        Ok(ClientTls(Arc::new(config)))
    }

    /// Runs the handshake over `stream` with the server called `host`.
    pub async fn connect<S>(&self, host: &str, stream: S) -> anyhow::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let name = server_name(host)?;
        let connector = tokio_rustls::TlsConnector::from(self.0.clone());
        tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream))
            .await
            .map_err(|_| anyhow!("no TLS handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()))?
            .map_err(|e| anyhow!("TLS: {e}"))
    }
}

fn roots(trust: &Trust) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match trust {
        Trust::Ca(file) => {
            let certs = CertificateDer::pem_file_iter(file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow!("{}: cannot read a PEM certificate: {e}", file.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                bail!("{}: no CA certificate in the file", file.display());
            }
        }
        _ => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                bail!(
                    "no system CA certificates found (install ca-certificates, or give --tls-ca or --tls-fingerprint)"
                );
            }
        }
    }
    Ok(roots)
}

/// The name a certificate must carry: the host part of `HOST:PORT` or `[IPV6]:PORT`.
pub fn server_name(addr: &str) -> anyhow::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| anyhow!("'{host}' is not a host name TLS can verify"))
}

/// The SHA-256 of a certificate (DER), as `AB:CD:…` (32 pairs).
#[derive(Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint([u8; 32]);

impl TryFrom<String> for Fingerprint {
    type Error = <Fingerprint as std::str::FromStr>::Err;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Fingerprint> for String {
    fn from(f: Fingerprint) -> String {
        f.to_string()
    }
}

impl Fingerprint {
    /// The fingerprint of `cert`.
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        Fingerprint(Sha256::digest(cert.as_ref()).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    /// 64 hex digits, with or without colons, optionally after `sha256:` (as `openssl x509
    /// -fingerprint -sha256` and the server print it).
    fn from_str(s: &str) -> Result<Self, String> {
        let digits: String = s.trim().trim_start_matches("sha256:").chars().filter(|c| *c != ':').collect();
        let wrong = || format!("'{s}' is not a SHA-256 fingerprint (64 hex digits, colons allowed)");
        if digits.len() != 64 {
            return Err(wrong());
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(digits.get(2 * i..2 * i + 2).ok_or_else(wrong)?, 16).map_err(|_| wrong())?;
        }
        Ok(Fingerprint(bytes))
    }
}

/// Trusts exactly one certificate, by fingerprint; the handshake's signatures are still checked
/// against it, so only the holder of its key can present it.
#[derive(Debug)]
struct Pinned {
    fingerprint: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use subtle::ConstantTimeEq as _;
        let seen = Fingerprint::of(end_entity);
        // Not secret, but compared without an early exit all the same.
        if bool::from(seen.0.ct_eq(&self.fingerprint.0)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate is {seen}, not the pinned {}",
                self.fingerprint
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_as_openssl_and_the_server_print_them() {
        let hex = "AB".repeat(32);
        let colons = vec!["ab"; 32].join(":");
        let a: Fingerprint = hex.parse().unwrap();
        assert_eq!(a, colons.parse().unwrap());
        assert_eq!(a, format!("sha256:{colons}").parse().unwrap());
        assert_eq!(a.to_string(), vec!["AB"; 32].join(":"));
        assert_eq!(a.to_string().parse::<Fingerprint>().unwrap(), a);
        for bad in ["", "AB", &"AB".repeat(31), &"ZZ".repeat(32), &"AB".repeat(33)] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn server_names_come_from_the_address() {
        assert_eq!(server_name("vpd.example:9000").unwrap(), ServerName::try_from("vpd.example").unwrap());
        assert_eq!(server_name("127.0.0.1:9000").unwrap(), ServerName::try_from("127.0.0.1").unwrap());
        assert_eq!(server_name("[::1]:9000").unwrap(), ServerName::try_from("::1").unwrap());
    }
}

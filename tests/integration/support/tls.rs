//! A certificate authority made per test (rcgen), the server and client
//! certificates it issues, and helpers for clients that trust it (or do
//! not), so that tests can serve HTTPS from inside the test process
//! (`support::gateway`), point the real binary at it
//! (`SMARTMART_PAYMENT_GATEWAY_CA_FILE`), and run a NATS server with TLS.

// The API serves the tests that drive the real binary; not each of them
// uses every item.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A self-signed certificate authority of the test's own. Nothing outside
/// the test trusts it: a client trusts it only if told to (`pem`,
/// `write_pem`, `reqwest_client`).
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    name: String,
}

/// A leaf certificate signed by a [`TestCa`] and its private key: a
/// server's ([`TestCa::issue`]) or a client's ([`TestCa::issue_client`], no hosts).
#[derive(Clone)]
pub struct ServerCert {
    /// The names it is valid for, as given to [`TestCa::issue`].
    pub hosts: Vec<String>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pkcs8_der: Vec<u8>,
    key_pem: String,
}

impl TestCa {
    /// A new CA (fresh P-256 key) whose subject common name is `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.distinguished_name.push(DnType::OrganizationName, "SmartMart integration tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("generating the CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signing the CA certificate");
        TestCa { issuer, name: name.to_string() }
    }

    /// The CA's common name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// Writes the CA certificate (PEM) to `<dir>/<name>-ca.pem` (name made
    /// file-safe) and returns the path: the value for
    /// `SMARTMART_PAYMENT_GATEWAY_CA_FILE`.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let stem: String =
            self.name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let path = dir.join(format!("{stem}-ca.pem"));
        std::fs::write(&path, self.pem()).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// A server certificate for `hosts`: DNS names (`"localhost"`) and/or IP
    /// addresses (`"127.0.0.1"`), each a subject alternative name; the first
    /// is also the common name. Valid for TLS server authentication only.
    pub fn issue(&self, hosts: &[&str]) -> ServerCert {
        assert!(!hosts.is_empty(), "a server certificate needs at least one host");
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(hosts.clone()).expect("server certificate parameters");
        params.distinguished_name.push(DnType::CommonName, hosts[0].as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("generating the server key");
        let cert = params.signed_by(&key, &*self.issuer).expect("signing the server certificate");
        ServerCert {
            hosts,
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pkcs8_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client certificate (mutual TLS) whose common name is `name`, valid
    /// for TLS client authentication only.
    pub fn issue_client(&self, name: &str) -> ServerCert {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client certificate parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("generating the client key");
        let cert = params.signed_by(&key, &*self.issuer).expect("signing the client certificate");
        ServerCert {
            hosts: Vec::new(),
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pkcs8_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A reqwest client that trusts this CA and nothing else (no system
    /// roots), with `timeout` per request and no redirects.
    pub fn reqwest_client(&self, timeout: std::time::Duration) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem().as_bytes()).expect("the CA as reqwest's"))
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("building a client trusting the test CA")
    }
}

impl ServerCert {
    /// The leaf certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes `<dir>/<stem>.crt.pem` and `<dir>/<stem>.key.pem`; returns
    /// (certificate path, key path).
    pub fn write_pem(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt.pem"));
        let key = dir.join(format!("{stem}.key.pem"));
        std::fs::write(&cert, &self.cert_pem).unwrap_or_else(|e| panic!("writing {}: {e}", cert.display()));
        std::fs::write(&key, &self.key_pem).unwrap_or_else(|e| panic!("writing {}: {e}", key.display()));
        (cert, key)
    }

    /// A rustls server configuration (ring, TLS 1.2 and 1.3, ALPN
    /// `http/1.1`) serving this certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8_der.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("rustls protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.cert_der.clone()], key)
            .expect("the server certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A reqwest client that trusts only the system's roots (not any test CA):
/// what a gateway with a private CA looks like to a client not told about it.
pub fn reqwest_client_without_test_ca(timeout: std::time::Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("building a client")
}

/// The rustls certificate error somewhere in `error`'s chain, if the failure
/// is one (unknown issuer, wrong name, expired, …). rustls's error travels
/// inside an `io::Error` (with reqwest 0.12, inside an `io::Error` inside
/// another), and an `io::Error`'s own `source()` skips the error it wraps, so
/// each `io::Error` is looked into as well.
pub fn certificate_error(error: &(dyn std::error::Error + 'static)) -> Option<rustls::CertificateError> {
    let mut pending: Vec<&(dyn std::error::Error + 'static)> = vec![error];
    // Bounded, in case of a cycle.
    for _ in 0..64 {
        let current = pending.pop()?;
        if let Some(rustls::Error::InvalidCertificate(certificate)) = current.downcast_ref::<rustls::Error>() {
            return Some(certificate.clone());
        }
        pending.extend(current.source());
        if let Some(inner) = current.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            pending.push(inner);
        }
    }
    None
}

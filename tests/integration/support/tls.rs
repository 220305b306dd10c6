//! A certificate authority made per test (rcgen), the server and client
//! certificates it issues, and helpers for clients that trust it (or do
//! not), so that tests can serve HTTPS from inside the test process
//! (`support::gateway`), point the real binary at it
//! (`SMARTMART_PAYMENT_GATEWAY_CA_FILE`), run a NATS server with TLS; and a TLS front ([`TlsFront`]) that
//! puts TLS before a plaintext TCP server (the Kafka test broker).

// The API serves the tests that drive the real binary; not each of them
// uses every item.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::{TlsAcceptor, rustls};

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

    /// A client certificate named `name` (common name), valid for TLS client
    /// authentication only.
    pub fn issue_client(&self, name: &str) -> ClientCert {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client certificate parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("generating the client key");
        let cert = params.signed_by(&key, &*self.issuer).expect("signing the client certificate");
        ClientCert {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pkcs8_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A rustls client configuration (ring) trusting this CA only, presenting
    /// `client` when given.
    pub fn client_config(&self, client: Option<&ClientCert>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der()).expect("the CA as a root");
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("rustls protocol versions")
            .with_root_certificates(roots);
        let config = match client {
            Some(client) => builder
                .with_client_auth_cert(vec![client.cert_der.clone()], client.key())
                .expect("the client certificate and key"),
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
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

    /// A rustls server configuration (ring, no ALPN) serving this
    /// certificate to clients that present one issued by `clients`, and to
    /// no others.
    pub fn server_config_requiring_client_certificates(&self, clients: &TestCa) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(clients.der()).expect("the client CA as a root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .expect("the client certificate verifier");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8_der.clone()));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("rustls protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert_der.clone()], key)
            .expect("the server certificate and key");
        Arc::new(config)
    }
}

/// A client certificate (leaf, signed by a [`TestCa`]) and its private key.
#[derive(Clone)]
pub struct ClientCert {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pkcs8_der: Vec<u8>,
    key_pem: String,
}

impl ClientCert {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8_der.clone()))
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
}

/// TLS before a plaintext TCP server, as a TLS-terminating proxy puts it:
/// accepts TLS on `127.0.0.1:PORT` with a rustls server configuration and
/// relays each connection's plaintext to the upstream address. It runs on a
/// runtime of its own (a thread), so it keeps relaying whatever the test's
/// runtime does; stopped on drop. A handshake the client or the front
/// refuses ends that connection only.
pub struct TlsFront {
    port: u16,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TlsFront {
    /// Serves `config` on `port` (a free one: the broker behind it may have
    /// to advertise it before the front starts), relaying to `upstream`.
    pub fn start(config: Arc<rustls::ServerConfig>, port: u16, upstream: SocketAddr) -> TlsFront {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("tls-front-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the TLS front's runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::bind(("127.0.0.1", port)).await;
                    let listener = match listener {
                        Ok(listener) => {
                            bound_tx.send(Ok(())).expect("the starting test waits");
                            listener
                        }
                        Err(e) => return bound_tx.send(Err(e)).expect("the starting test waits"),
                    };
                    let acceptor = TlsAcceptor::from(config);
                    let relay = async {
                        loop {
                            let Ok((client, _)) = listener.accept().await else { continue };
                            let acceptor = acceptor.clone();
                            tokio::spawn(async move {
                                let Ok(mut client) = acceptor.accept(client).await else { return };
                                let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            });
                        }
                    };
                    tokio::select! {
                        _ = relay => {}
                        _ = stopped => {}
                    }
                });
                // Relayed connections end with the runtime.
                runtime.shutdown_background();
            })
            .expect("spawning the TLS front's thread");
        bound.recv().expect("the TLS front started").unwrap_or_else(|e| panic!("binding 127.0.0.1:{port}: {e}"));
        TlsFront { port, _stop: stop }
    }

    pub fn port(&self) -> u16 {
        self.port
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

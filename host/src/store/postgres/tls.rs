//! TLS to PostgreSQL as libpq's `sslmode` and `sslrootcert` ask for it
//! ([`conninfo`]), with rustls (and ring, as everywhere in the service):
//!
//! | `sslmode`          | TLS                       | the server's certificate                  |
//! |--------------------|---------------------------|-------------------------------------------|
//! | `disable`          | never                     | —                                         |
//! | `prefer` (default) | if the server offers it   | not checked                               |
//! | `require`          | always                    | not checked                               |
//! | `verify-ca`        | always                    | signed by a trusted root                  |
//! | `verify-full`      | always                    | signed by a trusted root, naming the host |
//!
//! The trusted roots are `sslrootcert`'s PEM file, or the system's
//! (`sslrootcert=system`, or none named). Given a root file, `prefer` and
//! `require` check the chain too, as libpq does when it has one: whoever
//! names a root means it to be used. The host checked is the URL's host
//! name, also when `hostaddr` says where to connect. Sessions over a Unix
//! socket never negotiate TLS (libpq's rule: the socket file is local).
//!
//! The wire count ([`super::wire`]) follows the protocol in the clear: the
//! socket's counter stops at the server's yes to TLS (ciphertext follows),
//! and the TLS stream is handed to the driver inside a counter of its own
//! ([`CountingTls`]), which sees the same messages a plaintext session
//! sends. A server that says no leaves the socket's counter counting.
//!
//! [`conninfo`]: super::conninfo

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::super::stats::WireStats;
use super::conninfo::{Roots, SslMode, TlsParams};
use super::wire::Counted;

/// How the pool's TCP sessions negotiate TLS.
pub(super) struct Tls {
    make: MakeRustlsConnect,
    /// Whether the certificate must name the host (`verify-full`).
    names_checked: bool,
}

impl Tls {
    /// `None` for `sslmode=disable`. The roots are read now, so that a
    /// missing or unreadable root file fails the start, named.
    pub(super) fn new(params: &TlsParams) -> Result<Option<Tls>, String> {
        if params.mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let names_checked = params.mode == SslMode::VerifyFull;
        let chain_checked = matches!(params.mode, SslMode::VerifyCa | SslMode::VerifyFull) || params.roots.is_some();
        let verifier: Arc<dyn ServerCertVerifier> = if chain_checked {
            let roots = Arc::new(trusted_roots(params.roots.as_ref().unwrap_or(&Roots::System))?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("cannot set up certificate verification: {e}"))?;
            if names_checked { webpki } else { Arc::new(ChainOnly(webpki)) }
        } else {
            Arc::new(Unchecked(provider.signature_verification_algorithms))
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // PostgreSQL 17 insists on it for `sslnegotiation=direct`; older
        // servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Some(Tls { make: MakeRustlsConnect::new(config), names_checked }))
    }

    /// The connector of one session to `host` (the URL's host name, or the
    /// address when it names none) reached at `peer`, its plaintext counted
    /// into `stats`.
    pub(super) fn connector<S>(
        &self,
        host: &str,
        peer: IpAddr,
        stats: Arc<WireStats>,
    ) -> io::Result<CountingTls<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let name = match ServerName::try_from(host) {
            Ok(_) => host.to_string(),
            // A name no certificate can hold (e.g. with `_`) is only the
            // SNI when no name is checked: the address serves instead.
            Err(_) if !self.names_checked => peer.to_string(),
            Err(e) => {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("cannot verify the host {host}: {e}")));
            }
        };
        let Ok(inner) = MakeTlsConnect::<S>::make_tls_connect(&mut self.make.clone(), &name);
        Ok(CountingTls { inner, stats })
    }
}

/// The roots certificates are checked against.
fn trusted_roots(source: &Roots) -> Result<RootCertStore, String> {
    match source {
        Roots::File(path) => {
            crate::tls::roots_from_pem_file(path).map_err(|why| format!("sslrootcert {}: {why}", path.display()))
        }
        Roots::System => crate::tls::system_roots().map_err(|why| format!("{why}; name a PEM file with sslrootcert")),
    }
}

/// `verify-ca` (and a root file with `prefer` or `require`): the chain
/// checked, the host name not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // The name is checked once the chain has passed: this error
            // means a good chain for another name.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root file (libpq's meaning): any
/// certificate, but the handshake's signatures still checked against the
/// key it presents, so the session is encrypted to whoever holds that key.
#[derive(Debug)]
struct Unchecked(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A TLS connector whose stream is counted on its plaintext side.
pub(super) struct CountingTls<T> {
    inner: T,
    stats: Arc<WireStats>,
}

impl<S, T> TlsConnect<S> for CountingTls<T>
where
    T: TlsConnect<S>,
    T::Future: Send + 'static,
    T::Stream: Send + 'static,
    T::Error: Send + 'static,
{
    type Stream = Counted<T::Stream>;
    type Error = T::Error;
    type Future = BoxFuture<'static, Result<Counted<T::Stream>, T::Error>>;

    fn connect(self, stream: S) -> Self::Future {
        let CountingTls { inner, stats } = self;
        let handshake = inner.connect(stream);
        Box::pin(async move { handshake.await.map(|tls| Counted::new(tls, stats)) })
    }
}

impl<S: TlsStream + Unpin> TlsStream for Counted<S> {
    /// The TLS stream's (SCRAM's channel binding to the server's certificate).
    fn channel_binding(&self) -> ChannelBinding {
        self.get_ref().channel_binding()
    }
}

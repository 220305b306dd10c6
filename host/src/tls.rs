//! What the service's outgoing TLS clients (the payment gateway's HTTPS,
//! PostgreSQL, NATS, Kafka) share: the roots a server's certificate is
//! checked against, finding rustls's error in a failed connection's error,
//! and telling a refused certificate from other failures.

use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Every certificate of the PEM file `path`; at least one. The errors of
/// these readers say why without naming the file: the caller names the
/// setting and the path.
pub(crate) fn certificates_from_pem_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("unreadable PEM: {e}"))?;
    if certificates.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certificates)
}

/// The private key of the PEM file `path` (a client certificate's). The
/// error says what is wrong with the PEM, never the key.
pub(crate) fn private_key_from_pem_file(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| format!("no usable PEM private key in it ({e})"))
}

/// Every certificate of the PEM file `path`, as trusted roots.
pub(crate) fn roots_from_pem_file(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates_from_pem_file(path)? {
        roots.add(certificate).map_err(|e| format!("not a usable root certificate: {e}"))?;
    }
    Ok(roots)
}

/// The system's trusted roots; an error when there are none (a container
/// without a CA bundle), which the caller completes with the setting that
/// names roots instead.
pub(crate) fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(format!("no system root certificates to verify the server with ({})", errors.join("; ")));
    }
    Ok(roots)
}

/// rustls's error somewhere in `error`'s chain, if TLS is why a connection
/// failed. rustls's error travels inside `io::Error`s (nested: hyper's
/// connector wraps the TLS stream's), whose own `source()` skips the error
/// they wrap, so each `io::Error` is looked into as well.
pub(crate) fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(rustls_error) = error.downcast_ref::<rustls::Error>() {
        return Some(rustls_error);
    }
    let wrapped = error.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
    if let Some(found) = wrapped.and_then(|inner| rustls_error(inner)) {
        return Some(found);
    }
    error.source().and_then(rustls_error)
}

/// The refused certificate somewhere in `error`'s chain, if that is why a
/// connection failed.
pub(crate) fn certificate_refused(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    rustls_error(error)
        .filter(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::UnsupportedNameType
            )
        })
        .map(ToString::to_string)
}

//! What the service's outgoing TLS clients (the payment gateway's HTTPS,
//! PostgreSQL) share: telling a refused certificate from other failures.

/// The refused certificate somewhere in `error`'s chain, if that is why a
/// connection failed. rustls's error travels inside `io::Error`s (nested:
/// hyper's connector wraps the TLS stream's), whose own `source()` skips the
/// error they wrap, so each `io::Error` is looked into as well.
pub(crate) fn certificate_refused(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(rustls_error) = error.downcast_ref::<rustls::Error>() {
        return matches!(
            rustls_error,
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::UnsupportedNameType
        )
        .then(|| rustls_error.to_string());
    }
    let wrapped = error.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
    if let Some(found) = wrapped.and_then(|inner| certificate_refused(inner)) {
        return Some(found);
    }
    error.source().and_then(certificate_refused)
}

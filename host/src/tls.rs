//! What the service's outgoing TLS clients (the payment gateway's HTTPS,
//! PostgreSQL, NATS) share: finding rustls's error in a failed connection's
//! error, and telling a refused certificate from other failures.

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

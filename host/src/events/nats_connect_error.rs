//! Why the NATS sink could not connect, in terms an operator can act on:
//! which certificate was refused and against what, whether the server
//! refused the credentials (and which ones), or whether it did not answer
//! at all — rather than async-nats's "IO error". Each message names the
//! setting to look at; none carries a secret.

use async_nats::{ConnectError, ConnectErrorKind};
use rustls::{AlertDescription, CertificateError};

use super::nats::NatsSettings;
use super::nats_auth::NatsAuth;

/// A failed connection to NATS, explained (the events wait in the outbox).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NatsConnectError {
    /// The server's certificate does not chain to a trusted root.
    #[error(
        "NATS TLS: certificate not trusted ({trusted}): the server's certificate is not signed by a trusted CA ({detail})"
    )]
    UntrustedCertificate { trusted: String, detail: String },
    /// The server's certificate does not name the host connected to.
    #[error(
        "NATS TLS: the server's certificate is not valid for the host of SMARTMART_NATS_URL ({url}): connect by a \
         name the certificate holds ({detail})"
    )]
    WrongHost { url: String, detail: String },
    /// The server's certificate is refused for another reason (expired, not yet valid, revoked, …).
    #[error("NATS TLS: the server's certificate is refused ({detail})")]
    ServerCertificateRefused { detail: String },
    /// The server refused the TLS handshake over the client certificate:
    /// none was presented (mutual TLS is required) or it is not trusted.
    #[error("NATS TLS: the server refused {presented} ({detail})")]
    ClientCertificateRefused { presented: String, detail: String },
    /// TLS is required but the server answered in the clear.
    #[error("NATS TLS: the server at {url} does not speak TLS ({detail}); TLS is required by {required_by}")]
    NoTls { url: String, required_by: String, detail: String },
    /// Another TLS failure.
    #[error("NATS TLS: the handshake with {url} failed ({detail})")]
    Tls { url: String, detail: String },
    /// The server refused the configured credentials.
    #[error("NATS refused the credentials: {credentials} (authorization violation)")]
    CredentialsRefused { credentials: String },
    /// The credentials could not be used to answer the server's challenge.
    #[error("NATS: {credentials} could not sign the server's challenge ({detail})")]
    CredentialsUnusable { credentials: String, detail: String },
    /// The server requires credentials and none are configured.
    #[error(
        "NATS refused the connection: it requires credentials and none are configured (set SMARTMART_NATS_USER and \
         SMARTMART_NATS_PASSWORD, SMARTMART_NATS_TOKEN, SMARTMART_NATS_NKEY_SEED or SMARTMART_NATS_CREDS_FILE)"
    )]
    CredentialsMissing,
    /// No answer: nothing listens, the name does not resolve, or the time ran out.
    #[error("NATS at {url} is not reachable: {detail}")]
    Unreachable { url: String, detail: String },
}

impl NatsConnectError {
    /// Explains `error`, the failure of a connection made with `settings`.
    pub(super) fn explain(error: &ConnectError, settings: &NatsSettings) -> NatsConnectError {
        let url = settings.display_url();
        let (_, in_url) = NatsAuth::split_url(&settings.url);
        let credentials = match (&settings.auth, &in_url) {
            (NatsAuth::None, NatsAuth::None) => None,
            (NatsAuth::None, auth) => Some(auth.describe(true)),
            (auth, _) => Some(auth.describe(false)),
        };
        match (error.kind(), credentials) {
            (ConnectErrorKind::AuthorizationViolation, None) => NatsConnectError::CredentialsMissing,
            (ConnectErrorKind::AuthorizationViolation, Some(credentials)) => {
                NatsConnectError::CredentialsRefused { credentials }
            }
            (ConnectErrorKind::Authentication, credentials) => NatsConnectError::CredentialsUnusable {
                credentials: credentials.unwrap_or_else(|| "no credentials".into()),
                detail: error.to_string(),
            },
            _ => match crate::tls::rustls_error(error) {
                Some(tls) => NatsConnectError::tls(tls, settings),
                None if error.kind() == ConnectErrorKind::Tls => {
                    NatsConnectError::Tls { url, detail: error.to_string() }
                }
                None => NatsConnectError::Unreachable { url, detail: error.to_string() },
            },
        }
    }

    /// No connection within `bound` (derived from SMARTMART_NATS_TIMEOUT_MS).
    pub(super) fn timed_out(settings: &NatsSettings, bound: std::time::Duration) -> NatsConnectError {
        NatsConnectError::Unreachable {
            url: settings.display_url(),
            detail: format!(
                "no connection within {bound:?} (SMARTMART_NATS_TIMEOUT_MS={})",
                settings.timeout.as_millis()
            ),
        }
    }

    fn tls(error: &rustls::Error, settings: &NatsSettings) -> NatsConnectError {
        let (url, detail) = (settings.display_url(), error.to_string());
        match error {
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature | CertificateError::BadEncoding,
            ) => NatsConnectError::UntrustedCertificate { trusted: settings.tls.trusted_roots(), detail },
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => NatsConnectError::WrongHost { url, detail },
            rustls::Error::InvalidCertificate(_) => NatsConnectError::ServerCertificateRefused { detail },
            // A server that requires client certificates answers a missing or
            // untrusted one with one of these alerts (nats-server: bad_certificate).
            rustls::Error::AlertReceived(
                AlertDescription::BadCertificate
                | AlertDescription::CertificateRequired
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::AccessDenied,
            ) => {
                let presented = match &settings.tls.client_cert {
                    Some(client) => format!(
                        "the client certificate SMARTMART_NATS_CLIENT_CERT_FILE={}: is it signed by a CA the server \
                         trusts, and valid?",
                        client.cert_file.display()
                    ),
                    None => "the connection without a client certificate: it requires mutual TLS; set \
                             SMARTMART_NATS_CLIENT_CERT_FILE and SMARTMART_NATS_CLIENT_KEY_FILE"
                        .into(),
                };
                NatsConnectError::ClientCertificateRefused { presented, detail }
            }
            // The server's plain-text protocol where a TLS record was expected.
            rustls::Error::InvalidMessage(_) => NatsConnectError::NoTls {
                url,
                required_by: settings.tls.required_by(&settings.url).unwrap_or("the settings").into(),
                detail,
            },
            _ => NatsConnectError::Tls { url, detail },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::events::nats_tls::{ClientCertificate, NatsTls};

    /// A connection error as async-nats reports a failed TLS handshake: an
    /// I/O error with rustls's inside.
    fn tls_failure(error: rustls::Error) -> ConnectError {
        ConnectError::with_source(ConnectErrorKind::Io, io::Error::new(io::ErrorKind::InvalidData, error))
    }

    fn settings(tls: NatsTls, auth: NatsAuth, url: &str) -> NatsSettings {
        NatsSettings { url: url.into(), tls, auth, ..NatsSettings::default() }
    }

    #[test]
    fn certificate_failures_name_what_to_set() {
        let ca = NatsTls { ca_file: Some("/etc/nats/ca.pem".into()), ..NatsTls::default() };
        let with_ca = settings(ca, NatsAuth::None, "tls://nats.internal:4222");
        let unknown = tls_failure(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        let explained = NatsConnectError::explain(&unknown, &with_ca);
        assert!(matches!(explained, NatsConnectError::UntrustedCertificate { .. }), "{explained:?}");
        assert!(
            explained
                .to_string()
                .starts_with("NATS TLS: certificate not trusted (SMARTMART_NATS_CA_FILE=/etc/nats/ca.pem)")
        );
        let system = settings(NatsTls::default(), NatsAuth::None, "nats://nats.internal:4222");
        let text = NatsConnectError::explain(&unknown, &system).to_string();
        assert!(text.contains("the system's roots; SMARTMART_NATS_CA_FILE is not set"), "{text}");

        let name = tls_failure(rustls::Error::InvalidCertificate(CertificateError::NotValidForName));
        assert!(matches!(NatsConnectError::explain(&name, &with_ca), NatsConnectError::WrongHost { .. }));
        let expired = tls_failure(rustls::Error::InvalidCertificate(CertificateError::Expired));
        assert!(matches!(
            NatsConnectError::explain(&expired, &with_ca),
            NatsConnectError::ServerCertificateRefused { .. }
        ));
        let plain = tls_failure(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType));
        let text = NatsConnectError::explain(&plain, &with_ca).to_string();
        assert!(text.contains("does not speak TLS") && text.contains("the tls:// scheme"), "{text}");
    }

    #[test]
    fn a_refused_client_certificate_says_whether_one_was_presented() {
        let alert = tls_failure(rustls::Error::AlertReceived(AlertDescription::BadCertificate));
        let none = settings(NatsTls { required: true, ..NatsTls::default() }, NatsAuth::None, "tls://n:4222");
        let text = NatsConnectError::explain(&alert, &none).to_string();
        assert!(text.contains("requires mutual TLS; set SMARTMART_NATS_CLIENT_CERT_FILE"), "{text}");
        let client = ClientCertificate { cert_file: "/etc/nats/client.pem".into(), key_file: "/k.pem".into() };
        let presented =
            settings(NatsTls { client_cert: Some(client), ..NatsTls::default() }, NatsAuth::None, "tls://n:4222");
        let text = NatsConnectError::explain(&alert, &presented).to_string();
        assert!(text.contains("SMARTMART_NATS_CLIENT_CERT_FILE=/etc/nats/client.pem"), "{text}");
    }

    #[test]
    fn a_refusal_names_the_credentials_never_their_secret() {
        let refused = ConnectError::new(ConnectErrorKind::AuthorizationViolation);
        let none = settings(NatsTls::default(), NatsAuth::None, "nats://n:4222");
        assert_eq!(NatsConnectError::explain(&refused, &none), NatsConnectError::CredentialsMissing);
        let token = settings(NatsTls::default(), NatsAuth::Token("hunter2-secret".into()), "nats://n:4222");
        let text = NatsConnectError::explain(&refused, &token).to_string();
        assert_eq!(text, "NATS refused the credentials: the token of SMARTMART_NATS_TOKEN (authorization violation)");
        let in_url = settings(NatsTls::default(), NatsAuth::None, "nats://svc:hunter2-secret@n:4222");
        let text = NatsConnectError::explain(&refused, &in_url).to_string();
        assert!(
            text.contains("the user `svc` and password in SMARTMART_NATS_URL") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn anything_else_is_an_unreachable_server() {
        let refused = ConnectError::with_source(
            ConnectErrorKind::Io,
            io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused"),
        );
        let settings = settings(NatsTls::default(), NatsAuth::None, "nats://svc:hunter2-secret@n:4222");
        let explained = NatsConnectError::explain(&refused, &settings);
        assert!(matches!(explained, NatsConnectError::Unreachable { .. }), "{explained:?}");
        assert_eq!(explained.to_string(), "NATS at nats://***@n:4222 is not reachable: IO error: connection refused");
    }
}

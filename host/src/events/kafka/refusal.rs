//! Why the brokers refused the sink, when it is a setting to fix: put ahead
//! of rskafka's own text in the sink's errors, so that the log line and the
//! outbox's last error say it first.

use super::sasl::SaslMechanism;

/// A refusal an operator acts on (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the broker's TLS certificate is not trusted ({0}): SMARTMART_KAFKA_CA_FILE must name the CA that issued it \
         (without it, the system's roots are used)"
    )]
    CertificateNotTrusted(String),
    #[error(
        "the broker's TLS certificate is not valid for the host it was reached at ({0}): reach the brokers by a name \
         their certificates hold (SMARTMART_KAFKA_BROKERS, and the brokers' advertised listeners)"
    )]
    HostnameMismatch(String),
    #[error(
        "SASL authentication failed: the broker refused user `{username}` with {mechanism}; check \
         SMARTMART_KAFKA_SASL_USERNAME and SMARTMART_KAFKA_SASL_PASSWORD"
    )]
    SaslAuthenticationFailed { mechanism: SaslMechanism, username: String },
    #[error("the broker does not offer the SASL mechanism {0} (SMARTMART_KAFKA_SASL_MECHANISM)")]
    SaslMechanismNotOffered(SaslMechanism),
}

//! SASL authentication to the brokers (`SMARTMART_KAFKA_SASL_MECHANISM`,
//! `SMARTMART_KAFKA_SASL_USERNAME`, `SMARTMART_KAFKA_SASL_PASSWORD`): PLAIN,
//! SCRAM-SHA-256 or SCRAM-SHA-512, done by rskafka on every connection it
//! opens, before any other request.
//!
//! The password never shows: not in `Debug`, not in an error. rskafka's own
//! credentials type prints it in `Debug`, so it is made only when a client
//! is built ([`KafkaSasl::rskafka_config`]) and never kept.

use std::fmt;

use anyhow::bail;
use rskafka::client::SaslConfig;
use rskafka::client::error::ProtocolError;
use rskafka::{ConnectionError, SaslError};

use super::refusal::Refusal;

/// A SASL mechanism the sink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// The password as it is: only over TLS (a warning at start otherwise).
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    /// `SMARTMART_KAFKA_SASL_MECHANISM`'s value, any case.
    pub fn parse(text: &str) -> anyhow::Result<SaslMechanism> {
        match text.trim().to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(SaslMechanism::Plain),
            "SCRAM-SHA-256" => Ok(SaslMechanism::ScramSha256),
            "SCRAM-SHA-512" => Ok(SaslMechanism::ScramSha512),
            _ => bail!("SMARTMART_KAFKA_SASL_MECHANISM must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, got `{text}`"),
        }
    }

    /// The mechanism's name in the Kafka protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SASL credentials (`None` in [`super::KafkaSettings`]: no authentication).
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    /// Never shown (`Debug` redacts it).
    pub password: String,
}

impl fmt::Debug for KafkaSasl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl KafkaSasl {
    /// Checks the credentials; the errors name the setting.
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if self.username.is_empty() {
            bail!("SMARTMART_KAFKA_SASL_USERNAME must not be empty");
        }
        if self.password.is_empty() {
            bail!("SMARTMART_KAFKA_SASL_PASSWORD must not be empty");
        }
        Ok(())
    }

    /// rskafka's configuration for one client.
    pub(super) fn rskafka_config(&self) -> SaslConfig {
        let credentials = rskafka::client::Credentials::new(self.username.clone(), self.password.clone());
        match self.mechanism {
            SaslMechanism::Plain => SaslConfig::Plain(credentials),
            SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
            SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
        }
    }

    /// Whether `error` (a failed connection, `{:#}`) says the broker refused
    /// these credentials or this mechanism. rskafka reports a connection's
    /// failure as text only (see `super::tls`), so its text is looked for,
    /// as rskafka's own errors print it; the marks are made from its types
    /// where its types can be made here.
    pub(super) fn refusal(&self, error: &str) -> Option<Refusal> {
        let says = |sasl_error: SaslError| error.contains(&ConnectionError::SaslFailed(sasl_error).to_string());
        if says(SaslError::ApiError(ProtocolError::UnsupportedSaslMechanism))
            || says(SaslError::UnsupportedSaslMechanism)
        {
            return Some(Refusal::SaslMechanismNotOffered(self.mechanism));
        }
        // A broker refuses a login with Kafka's error code (Kafka's own
        // brokers), or within the SASL exchange: a SCRAM server error such as
        // `unknown-user` or `invalid-proof` (tansu), which the client reports
        // as a failed session.
        if says(SaslError::ApiError(ProtocolError::SaslAuthenticationFailed)) || error.contains(SESSION_FAILED) {
            return Some(Refusal::SaslAuthenticationFailed {
                mechanism: self.mechanism,
                username: self.username.clone(),
            });
        }
        None
    }
}

/// `ConnectionError::SaslFailed(SaslError::SaslSessionError(_))` as rskafka
/// prints it (the session error itself is rsasl's, not a type made here).
const SESSION_FAILED: &str = "Sasl handshake failed: Sasl session error: ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanisms_parse_in_any_case_and_others_are_refused_by_name() {
        for (text, mechanism) in [
            ("PLAIN", SaslMechanism::Plain),
            ("scram-sha-256", SaslMechanism::ScramSha256),
            (" SCRAM-SHA-512 ", SaslMechanism::ScramSha512),
        ] {
            assert_eq!(SaslMechanism::parse(text).unwrap(), mechanism);
            assert_eq!(SaslMechanism::parse(mechanism.as_str()).unwrap(), mechanism);
        }
        for bad in ["", "GSSAPI", "OAUTHBEARER", "SCRAM-SHA-1"] {
            let text = SaslMechanism::parse(bad).unwrap_err().to_string();
            assert!(text.contains("SMARTMART_KAFKA_SASL_MECHANISM"), "{text}");
        }
    }

    #[test]
    fn the_password_never_shows_in_debug() {
        let sasl = KafkaSasl {
            mechanism: SaslMechanism::ScramSha256,
            username: "shop".into(),
            password: "pa55word-kafka".into(),
        };
        let text = format!("{sasl:?}");
        assert!(text.contains("shop") && !text.contains("pa55word"), "{text}");
    }

    /// rskafka's errors as its client reports them, nested as they are.
    #[test]
    fn a_refused_login_and_an_unknown_mechanism_are_told_apart() {
        let sasl =
            KafkaSasl { mechanism: SaslMechanism::ScramSha512, username: "shop".into(), password: "secret".into() };
        let reported = |sasl_error: SaslError| {
            let connection = ConnectionError::SaslFailed(sasl_error);
            format!("connecting: Connection error: all retries failed: Retry exceeded deadline. Source: {connection}")
        };
        let refused = sasl.refusal(&reported(SaslError::ApiError(ProtocolError::SaslAuthenticationFailed)));
        assert_eq!(
            refused,
            Some(Refusal::SaslAuthenticationFailed { mechanism: SaslMechanism::ScramSha512, username: "shop".into() })
        );
        let text = refused.unwrap().to_string();
        assert!(text.contains("SASL authentication failed") && !text.contains("secret"), "{text}");
        for unsupported in
            [SaslError::ApiError(ProtocolError::UnsupportedSaslMechanism), SaslError::UnsupportedSaslMechanism]
        {
            assert_eq!(
                sasl.refusal(&reported(unsupported)),
                Some(Refusal::SaslMechanismNotOffered(SaslMechanism::ScramSha512))
            );
        }
        // The session mark is a literal: it must be how rskafka prints this error.
        let prefix = ConnectionError::SaslFailed(SaslError::UnsupportedSaslMechanism).to_string();
        let prefix = prefix.trim_end_matches(&SaslError::UnsupportedSaslMechanism.to_string());
        assert!(SESSION_FAILED.starts_with(prefix), "{prefix:?}");
        let session =
            format!("connecting: {SESSION_FAILED}internal mechanism error: SCRAM outcome error: unknown user");
        assert!(matches!(sasl.refusal(&session), Some(Refusal::SaslAuthenticationFailed { .. })));
        assert_eq!(sasl.refusal("connecting: Connection refused (os error 111)"), None);
    }
}

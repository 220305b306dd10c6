//! TLS to the brokers: the settings (`SMARTMART_KAFKA_TLS`,
//! `SMARTMART_KAFKA_CA_FILE`, `SMARTMART_KAFKA_CLIENT_CERT_FILE` and
//! `SMARTMART_KAFKA_CLIENT_KEY_FILE`) and the rustls configuration rskafka
//! connects with (ring, as everywhere in the service).
//!
//! Certificates are always verified, by webpki: against the CA file's roots
//! when one is named (those only, as librdkafka's `ssl.ca.location`: a
//! private CA is not mixed with the public ones), else the system's. The
//! name checked is the host the broker is reached at: the bootstrap
//! address's, then each broker's advertised host.
//!
//! rskafka hands a failed connection back as text (the errors of every
//! broker it tried, joined into one message), so the verifier remembers why
//! it refused the last certificate ([`BrokerTls::take_refusal`]) and the
//! sink names that in its error: an untrusted certificate and one for
//! another host then read as such in the log.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::anyhow;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::refusal::Refusal;

/// TLS to the brokers (`None` in [`super::KafkaSettings`]: plaintext).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaTls {
    /// PEM roots the brokers' certificates are checked against; `None`:
    /// the system's (`SMARTMART_KAFKA_TLS=required`).
    pub ca_file: Option<PathBuf>,
    /// What the sink presents to brokers that ask for a client certificate.
    pub client_certificate: Option<ClientCertificate>,
}

/// A client certificate and its private key, PEM files both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The certificate, then any intermediates.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The TLS rskafka connects with, built once at start.
pub(super) struct BrokerTls {
    config: Arc<ClientConfig>,
    verifier: Arc<RememberingVerifier>,
}

impl BrokerTls {
    /// Reads the roots and the client certificate now, so that a missing or
    /// unusable file fails the start, named by its setting.
    pub(super) fn new(settings: &KafkaTls) -> anyhow::Result<BrokerTls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match &settings.ca_file {
            Some(path) => crate::tls::roots_from_pem_file(path)
                .map_err(|why| anyhow!("SMARTMART_KAFKA_CA_FILE {}: {why}", path.display()))?,
            None => crate::tls::system_roots().map_err(|why| {
                anyhow!("SMARTMART_KAFKA_TLS=required: {why}; name the brokers' CA with SMARTMART_KAFKA_CA_FILE")
            })?,
        };
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| anyhow!("Kafka TLS: cannot set up certificate verification: {e}"))?;
        let verifier = Arc::new(RememberingVerifier { webpki, refused: Mutex::default() });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow!("Kafka TLS: cannot set up TLS: {e}"))?
            .dangerous()
            // webpki's verdict, unchanged: the wrapper only remembers refusals.
            .with_custom_certificate_verifier(verifier.clone());
        let config = match &settings.client_certificate {
            None => builder.with_no_client_auth(),
            Some(client) => {
                let (chain, key) = client.read()?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    anyhow!(
                        "SMARTMART_KAFKA_CLIENT_CERT_FILE {} and SMARTMART_KAFKA_CLIENT_KEY_FILE {} do not make a \
                         usable client certificate: {e}",
                        client.cert_file.display(),
                        client.key_file.display()
                    )
                })?
            }
        };
        Ok(BrokerTls { config: Arc::new(config), verifier })
    }

    pub(super) fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Why the last certificate was refused, if one was since the last call.
    pub(super) fn take_refusal(&self) -> Option<Refusal> {
        let refused = self.verifier.refused.lock().unwrap_or_else(PoisonError::into_inner).take()?;
        Some(match &refused {
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => Refusal::HostnameMismatch(refused.to_string()),
            _ => Refusal::CertificateNotTrusted(refused.to_string()),
        })
    }
}

impl ClientCertificate {
    /// The certificate chain and the private key, read; errors name the setting and the file.
    fn read(&self) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let (cert, key) = (&self.cert_file, &self.key_file);
        let chain = crate::tls::certificates_from_pem_file(cert)
            .map_err(|why| anyhow!("SMARTMART_KAFKA_CLIENT_CERT_FILE {}: {why}", cert.display()))?;
        let key = crate::tls::private_key_from_pem_file(key)
            .map_err(|why| anyhow!("SMARTMART_KAFKA_CLIENT_KEY_FILE {}: {why}", key.display()))?;
        Ok((chain, key))
    }
}

/// webpki's verifier, remembering the last refusal (see the module documentation).
#[derive(Debug)]
struct RememberingVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    refused: Mutex<Option<rustls::Error>>,
}

impl ServerCertVerifier for RememberingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        if let Err(refused) = &verdict {
            *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = Some(refused.clone());
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn unusable_files_fail_the_start_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let error = |settings: KafkaTls| format!("{:#}", BrokerTls::new(&settings).err().expect("refused"));

        for path in [&missing, &not_pem] {
            let text = error(KafkaTls { ca_file: Some(path.clone()), client_certificate: None });
            assert!(text.contains("SMARTMART_KAFKA_CA_FILE") && text.contains(&path.display().to_string()), "{text}");
        }

        let ca = rcgen::generate_simple_self_signed(vec!["kafka-ca.test".into()]).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert.pem()).unwrap();
        let key_file = dir.path().join("key.pem");
        std::fs::write(&key_file, ca.signing_key.serialize_pem()).unwrap();
        let with_client = |cert_file: &Path, key_file: &Path| KafkaTls {
            ca_file: Some(ca_file.clone()),
            client_certificate: Some(ClientCertificate { cert_file: cert_file.into(), key_file: key_file.into() }),
        };
        let text = error(with_client(&missing, &key_file));
        assert!(text.contains("SMARTMART_KAFKA_CLIENT_CERT_FILE") && text.contains("cannot read"), "{text}");
        let text = error(with_client(&not_pem, &key_file));
        assert!(text.contains("SMARTMART_KAFKA_CLIENT_CERT_FILE") && text.contains("no PEM certificate"), "{text}");
        let text = error(with_client(&ca_file, &not_pem));
        assert!(text.contains("SMARTMART_KAFKA_CLIENT_KEY_FILE") && text.contains("private key"), "{text}");
        // A key that is not the certificate's.
        let other = rcgen::generate_simple_self_signed(vec!["other.test".into()]).unwrap();
        let other_key = dir.path().join("other-key.pem");
        std::fs::write(&other_key, other.signing_key.serialize_pem()).unwrap();
        let text = error(with_client(&ca_file, &other_key));
        assert!(text.contains("do not make a usable client certificate"), "{text}");
        assert!(!text.contains("PRIVATE KEY"), "no key material in {text}");

        assert!(BrokerTls::new(&with_client(&ca_file, &key_file)).is_ok());
    }
}

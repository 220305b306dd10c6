//! TLS to the NATS server: when it is required, which roots the server's
//! certificate must chain to, and the client certificate of mutual TLS.
//!
//! Without any of these settings the connection is in the clear unless the
//! server asks for TLS (its INFO says `tls_required`); then the client
//! upgrades with the system's roots, as every NATS client does. TLS is
//! required — a server without it is refused — by `SMARTMART_NATS_TLS=required`,
//! a `tls://` URL (as the `nats` tools read it), a CA file or a client
//! certificate. The server's certificate is always verified, its name
//! included: against the CA file's roots when one is set (and only those: a
//! private CA), else the system's.
//!
//! The files are read when the sink is made, so that a missing or unusable
//! one fails the start, named by its variable.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::ClientConfig;

/// The TLS settings of the NATS sink (no secrets: paths only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// `SMARTMART_NATS_TLS=required`: TLS even without a CA file, verified
    /// against the system's roots.
    pub required: bool,
    /// `SMARTMART_NATS_CA_FILE`: PEM roots the server's certificate must
    /// chain to, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Mutual TLS: the certificate the service presents.
    pub client_cert: Option<ClientCertificate>,
}

/// A client certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// `SMARTMART_NATS_CLIENT_CERT_FILE`: the certificate, then any intermediates.
    pub cert_file: PathBuf,
    /// `SMARTMART_NATS_CLIENT_KEY_FILE`: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

impl ClientCertificate {
    /// Both files or neither: one without the other is refused, naming both variables.
    pub fn from_files(cert_file: Option<PathBuf>, key_file: Option<PathBuf>) -> anyhow::Result<Option<Self>> {
        match (cert_file, key_file) {
            (Some(cert_file), Some(key_file)) => Ok(Some(ClientCertificate { cert_file, key_file })),
            (None, None) => Ok(None),
            (Some(_), None) => bail!(
                "SMARTMART_NATS_CLIENT_CERT_FILE is set but SMARTMART_NATS_CLIENT_KEY_FILE is not: \
                 mutual TLS needs the certificate and its key"
            ),
            (None, Some(_)) => bail!(
                "SMARTMART_NATS_CLIENT_KEY_FILE is set but SMARTMART_NATS_CLIENT_CERT_FILE is not: \
                 mutual TLS needs the certificate and its key"
            ),
        }
    }
}

impl NatsTls {
    /// The setting that makes TLS required for a connection to `url`, or
    /// `None` when the server decides (TLS only if it asks for it).
    pub fn required_by(&self, url: &str) -> Option<&'static str> {
        if self.required {
            Some("SMARTMART_NATS_TLS=required")
        } else if url.starts_with("tls://") {
            Some("the tls:// scheme of SMARTMART_NATS_URL")
        } else if self.ca_file.is_some() {
            Some("SMARTMART_NATS_CA_FILE")
        } else if self.client_cert.is_some() {
            Some("SMARTMART_NATS_CLIENT_CERT_FILE")
        } else {
            None
        }
    }

    /// Where the server's certificate is checked, for messages.
    pub(super) fn trusted_roots(&self) -> String {
        match &self.ca_file {
            Some(path) => format!("SMARTMART_NATS_CA_FILE={}", path.display()),
            None => "the system's roots; SMARTMART_NATS_CA_FILE is not set".into(),
        }
    }

    /// The client configuration of a sink that requires TLS (ring, as
    /// everywhere in the service), reading every file now; errors name the
    /// variable and the path. `None` when TLS is not required: the client's
    /// own configuration (the system's roots) serves a server that asks for it.
    pub(super) fn client_config(&self, url: &str) -> anyhow::Result<Option<ClientConfig>> {
        if self.required_by(url).is_none() {
            return Ok(None);
        }
        let roots = match &self.ca_file {
            Some(path) => crate::tls::roots_from_pem_file(path)
                .map_err(|why| anyhow::anyhow!("SMARTMART_NATS_CA_FILE {}: {why}", path.display()))?,
            None => crate::tls::system_roots().map_err(|why| {
                anyhow::anyhow!(
                    "TLS to NATS is required but {why}: set SMARTMART_NATS_CA_FILE to the PEM file of the CA that \
                     signed the server's certificate"
                )
            })?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("setting up TLS to NATS")?
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some(client) => {
                let chain = crate::tls::certificates_from_pem_file(&client.cert_file).map_err(|why| {
                    anyhow::anyhow!("SMARTMART_NATS_CLIENT_CERT_FILE {}: {why}", client.cert_file.display())
                })?;
                let key = crate::tls::private_key_from_pem_file(&client.key_file).map_err(|why| {
                    anyhow::anyhow!("SMARTMART_NATS_CLIENT_KEY_FILE {}: {why}", client.key_file.display())
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    anyhow::anyhow!(
                        "SMARTMART_NATS_CLIENT_CERT_FILE {} and SMARTMART_NATS_CLIENT_KEY_FILE {} do not make a \
                         client certificate: {e}",
                        client.cert_file.display(),
                        client.key_file.display()
                    )
                })?
            }
        };
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn tls_is_required_by_any_tls_setting_or_a_tls_url() {
        let plain = NatsTls::default();
        assert_eq!(plain.required_by("nats://n:4222"), None);
        assert_eq!(plain.required_by("tls://n:4222"), Some("the tls:// scheme of SMARTMART_NATS_URL"));
        let required = NatsTls { required: true, ..NatsTls::default() };
        assert_eq!(required.required_by("nats://n:4222"), Some("SMARTMART_NATS_TLS=required"));
        let ca = NatsTls { ca_file: Some("ca.pem".into()), ..NatsTls::default() };
        assert_eq!(ca.required_by("nats://n:4222"), Some("SMARTMART_NATS_CA_FILE"));
        let client = ClientCertificate { cert_file: "c.pem".into(), key_file: "k.pem".into() };
        let mutual = NatsTls { client_cert: Some(client), ..NatsTls::default() };
        assert_eq!(mutual.required_by("nats://n:4222"), Some("SMARTMART_NATS_CLIENT_CERT_FILE"));
        assert!(plain.client_config("nats://n:4222").unwrap().is_none(), "the server decides");
    }

    #[test]
    fn a_client_certificate_needs_both_files() {
        assert_eq!(ClientCertificate::from_files(None, None).unwrap(), None);
        let both = ClientCertificate::from_files(Some("c.pem".into()), Some("k.pem".into())).unwrap();
        assert_eq!(both.map(|c| c.key_file), Some(PathBuf::from("k.pem")));
        for (cert, key) in [(Some("c.pem"), None), (None, Some("k.pem"))] {
            let error = ClientCertificate::from_files(cert.map(Into::into), key.map(Into::into)).unwrap_err();
            let text = error.to_string();
            assert!(
                text.contains("SMARTMART_NATS_CLIENT_CERT_FILE") && text.contains("SMARTMART_NATS_CLIENT_KEY_FILE"),
                "{text}"
            );
        }
    }

    #[test]
    fn unusable_files_fail_naming_the_variable_and_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "just text\n").unwrap();
        for path in [&missing, &not_pem] {
            let tls = NatsTls { ca_file: Some(path.clone()), ..NatsTls::default() };
            let text = tls.client_config("nats://n:4222").unwrap_err().to_string();
            assert!(text.contains("SMARTMART_NATS_CA_FILE") && text.contains(&path.display().to_string()), "{text}");
        }

        // A CA file that works, and client files that do not.
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (ca, cert, key) = (dir.path().join("ca.pem"), dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&ca, issued.cert.pem()).unwrap();
        std::fs::write(&cert, issued.cert.pem()).unwrap();
        std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
        let with_client = |cert_file: &Path, key_file: &Path| NatsTls {
            ca_file: Some(ca.clone()),
            client_cert: Some(ClientCertificate { cert_file: cert_file.into(), key_file: key_file.into() }),
            ..NatsTls::default()
        };
        assert!(with_client(&cert, &key).client_config("nats://n:4222").unwrap().is_some());
        for (cert_file, key_file, variable) in [
            (&not_pem, &key, "SMARTMART_NATS_CLIENT_CERT_FILE"),
            (&cert, &not_pem, "SMARTMART_NATS_CLIENT_KEY_FILE"),
            (&missing, &key, "SMARTMART_NATS_CLIENT_CERT_FILE"),
        ] {
            let text = with_client(cert_file, key_file).client_config("nats://n:4222").unwrap_err().to_string();
            assert!(text.contains(variable), "{text}");
        }
    }
}

//! The secrets the HTTP edge checks: each channel's key, the admin key and
//! the identity secret of customer tokens. Read and validated by `config`;
//! never logged.

use std::collections::BTreeMap;

/// The credentials the service checks. Never logged: `Debug` is redacted.
#[derive(Clone)]
pub struct Credentials {
    /// Channel name → key.
    pub channel_keys: BTreeMap<String, String>,
    pub admin_key: String,
    pub identity_secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("channels", &self.channel_keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Random credentials for development, shown once by `serve --dev`.
    pub fn generate() -> Credentials {
        let key = || {
            use rand::Rng as _;
            let bytes: [u8; 24] = rand::rng().random();
            hex::encode(bytes)
        };
        Credentials {
            channel_keys: ["web", "mobile", "partner"].into_iter().map(|c| (c.to_string(), key())).collect(),
            admin_key: key(),
            identity_secret: key(),
        }
    }
}

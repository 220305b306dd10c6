//! How the NATS sink proves who it is: a user and password, a token, an
//! NKey, or a `.creds` file (a user JWT and its NKey seed, NATS's
//! decentralized authentication) — at most one of them, from the
//! `SMARTMART_NATS_*` settings or from the URL's user info.
//!
//! The URL's `user:password@` and `token@` are read here, as the `nats`
//! tools read them: async-nats itself never sends them (nats-io/nats.rs#1623),
//! so they are taken out of the URL and set as options. Secrets never show:
//! `Debug` and every message name the variable, never the value.

use std::fmt;
use std::path::PathBuf;

use anyhow::bail;
use async_nats::ConnectOptions;
use percent_encoding::percent_decode_str;

/// The credentials the sink connects with.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// None: the server lets anyone in (or refuses, and the error says what to set).
    #[default]
    None,
    /// `SMARTMART_NATS_USER` and `SMARTMART_NATS_PASSWORD`.
    UserPassword { user: String, password: String },
    /// `SMARTMART_NATS_TOKEN`.
    Token(String),
    /// `SMARTMART_NATS_NKEY_SEED`: the seed (`SU…`) of a user NKey; the
    /// server knows its public key (`U…`).
    NKeySeed(String),
    /// `SMARTMART_NATS_CREDS_FILE`: a `.creds` file (user JWT and NKey seed),
    /// read at each connection so that a renewed file is used.
    CredsFile(PathBuf),
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::UserPassword { user, .. } => {
                f.debug_struct("UserPassword").field("user", user).field("password", &"***").finish()
            }
            NatsAuth::Token(_) => f.write_str("Token(***)"),
            NatsAuth::NKeySeed(_) => f.write_str("NKeySeed(***)"),
            NatsAuth::CredsFile(path) => f.debug_tuple("CredsFile").field(path).finish(),
        }
    }
}

impl NatsAuth {
    /// The credentials the `SMARTMART_NATS_*` settings give (an empty value
    /// counts as unset). A user needs its password and a password its user;
    /// two ways of authenticating at once are refused, naming them.
    pub fn from_settings(
        user: Option<String>,
        password: Option<String>,
        token: Option<String>,
        nkey_seed: Option<String>,
        creds_file: Option<PathBuf>,
    ) -> anyhow::Result<NatsAuth> {
        let set = |value: Option<String>| value.filter(|v| !v.is_empty());
        let (user, password, token, nkey_seed) = (set(user), set(password), set(token), set(nkey_seed));
        let creds_file = creds_file.filter(|p| !p.as_os_str().is_empty());
        let mut chosen = Vec::new();
        match (user, password) {
            (Some(user), Some(password)) => {
                chosen.push(("SMARTMART_NATS_USER/SMARTMART_NATS_PASSWORD", NatsAuth::UserPassword { user, password }))
            }
            (Some(_), None) => bail!("SMARTMART_NATS_USER is set but SMARTMART_NATS_PASSWORD is not"),
            (None, Some(_)) => bail!("SMARTMART_NATS_PASSWORD is set but SMARTMART_NATS_USER is not"),
            (None, None) => {}
        }
        chosen.extend(token.map(|t| ("SMARTMART_NATS_TOKEN", NatsAuth::Token(t))));
        chosen.extend(nkey_seed.map(|s| ("SMARTMART_NATS_NKEY_SEED", NatsAuth::NKeySeed(s))));
        chosen.extend(creds_file.map(|p| ("SMARTMART_NATS_CREDS_FILE", NatsAuth::CredsFile(p))));
        if let [first @ .., last] = chosen.as_slice()
            && !first.is_empty()
        {
            let first: Vec<&str> = first.iter().map(|(name, _)| *name).collect();
            bail!(
                "conflicting NATS credentials: {} and {} are set; set one way to authenticate",
                first.join(", "),
                last.0
            );
        }
        Ok(chosen.pop().map(|(_, auth)| auth).unwrap_or_default())
    }

    /// The URL without its user info, and the credentials that user info
    /// carried: `user:password@` a user and password, `token@` a token
    /// (percent-decoded, as URLs encode them).
    pub fn split_url(url: &str) -> (String, NatsAuth) {
        let Some((scheme, rest)) = url.split_once("://") else {
            return (url.to_string(), NatsAuth::None);
        };
        let Some((user_info, host)) = rest.rsplit_once('@') else {
            return (url.to_string(), NatsAuth::None);
        };
        let decode = |text: &str| percent_decode_str(text).decode_utf8_lossy().into_owned();
        let auth = match user_info.split_once(':') {
            Some((user, password)) => NatsAuth::UserPassword { user: decode(user), password: decode(password) },
            None if user_info.is_empty() => NatsAuth::None,
            None => NatsAuth::Token(decode(user_info)),
        };
        (format!("{scheme}://{host}"), auth)
    }

    /// Whether any credentials are set.
    pub fn is_set(&self) -> bool {
        *self != NatsAuth::None
    }

    /// What these credentials are and where they come from, for the message
    /// of a refusal: the variable, the user name or the NKey's public key,
    /// never a secret.
    pub(super) fn describe(&self, from_url: bool) -> String {
        match (self, from_url) {
            (NatsAuth::None, _) => "no credentials".into(),
            (NatsAuth::UserPassword { user, .. }, true) => {
                format!("the user `{user}` and password in SMARTMART_NATS_URL")
            }
            (NatsAuth::UserPassword { user, .. }, false) => {
                format!("the user `{user}` and password of SMARTMART_NATS_USER and SMARTMART_NATS_PASSWORD")
            }
            (NatsAuth::Token(_), true) => "the token in SMARTMART_NATS_URL".into(),
            (NatsAuth::Token(_), false) => "the token of SMARTMART_NATS_TOKEN".into(),
            (NatsAuth::NKeySeed(seed), _) => match nkeys::KeyPair::from_seed(seed) {
                Ok(key) => format!("the NKey {} of SMARTMART_NATS_NKEY_SEED", key.public_key()),
                Err(_) => "the NKey of SMARTMART_NATS_NKEY_SEED".into(),
            },
            (NatsAuth::CredsFile(path), _) => format!("the user JWT of SMARTMART_NATS_CREDS_FILE={}", path.display()),
        }
    }

    /// Start-up checks, so that a bad value fails the start rather than each
    /// connection: the seed is a user NKey's, the `.creds` file can be read
    /// and holds a user JWT and a seed. Errors name the variable, never the secret.
    pub(super) fn check(&self) -> anyhow::Result<()> {
        match self {
            NatsAuth::NKeySeed(seed) => {
                let key = nkeys::KeyPair::from_seed(seed).map_err(|e| {
                    anyhow::anyhow!(
                        "SMARTMART_NATS_NKEY_SEED is not an NKey seed ({e}): it is the `SU…` line of a user's .nk file"
                    )
                })?;
                if !key.public_key().starts_with('U') {
                    bail!(
                        "SMARTMART_NATS_NKEY_SEED is the seed of another kind of NKey (public key {}): \
                         a client authenticates with a user NKey, whose seed starts with `SU`",
                        key.public_key()
                    );
                }
                Ok(())
            }
            NatsAuth::CredsFile(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("SMARTMART_NATS_CREDS_FILE: cannot read {}: {e}", path.display()))?;
                ConnectOptions::new().credentials(&text).map_err(|e| {
                    anyhow::anyhow!("SMARTMART_NATS_CREDS_FILE {} is not a NATS credentials file: {e}", path.display())
                })?;
                Ok(())
            }
            NatsAuth::None | NatsAuth::UserPassword { .. } | NatsAuth::Token(_) => Ok(()),
        }
    }

    /// `options` with these credentials.
    pub(super) async fn apply(&self, options: ConnectOptions) -> anyhow::Result<ConnectOptions> {
        Ok(match self {
            NatsAuth::None => options,
            NatsAuth::UserPassword { user, password } => options.user_and_password(user.clone(), password.clone()),
            NatsAuth::Token(token) => options.token(token.clone()),
            NatsAuth::NKeySeed(seed) => options.nkey(seed.clone()),
            NatsAuth::CredsFile(path) => options
                .credentials_file(path)
                .await
                .map_err(|e| anyhow::anyhow!("SMARTMART_NATS_CREDS_FILE {}: {e}", path.display()))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &str) -> Option<String> {
        Some(value.to_string())
    }

    #[test]
    fn one_way_to_authenticate_from_the_settings() {
        assert_eq!(NatsAuth::from_settings(None, None, None, None, None).unwrap(), NatsAuth::None);
        assert_eq!(
            NatsAuth::from_settings(text("svc"), text("pw"), None, None, None).unwrap(),
            NatsAuth::UserPassword { user: "svc".into(), password: "pw".into() }
        );
        assert_eq!(NatsAuth::from_settings(None, None, text("t"), None, None).unwrap(), NatsAuth::Token("t".into()));
        assert_eq!(
            NatsAuth::from_settings(None, None, None, None, Some("a.creds".into())).unwrap(),
            NatsAuth::CredsFile("a.creds".into())
        );
        assert_eq!(
            NatsAuth::from_settings(text(""), None, text(""), None, None).unwrap(),
            NatsAuth::None,
            "an empty value is no value"
        );

        let refused = |auth: anyhow::Result<NatsAuth>| auth.unwrap_err().to_string();
        let text_of = refused(NatsAuth::from_settings(text("svc"), None, None, None, None));
        assert!(text_of.contains("SMARTMART_NATS_PASSWORD is not"), "{text_of}");
        let text_of = refused(NatsAuth::from_settings(None, text("pw-secret"), None, None, None));
        assert!(text_of.contains("SMARTMART_NATS_USER is not") && !text_of.contains("pw-secret"), "{text_of}");
        let text_of = refused(NatsAuth::from_settings(text("svc"), text("pw-secret"), text("tok-secret"), None, None));
        assert!(text_of.contains("conflicting NATS credentials"), "{text_of}");
        assert!(text_of.contains("SMARTMART_NATS_USER") && text_of.contains("SMARTMART_NATS_TOKEN"), "{text_of}");
        assert!(!text_of.contains("secret"), "no value in {text_of}");
        let text_of = refused(NatsAuth::from_settings(None, None, None, text("SUAB"), Some("a.creds".into())));
        assert!(text_of.contains("SMARTMART_NATS_NKEY_SEED and SMARTMART_NATS_CREDS_FILE are set"), "{text_of}");
    }

    #[test]
    fn the_url_carries_a_user_and_password_or_a_token() {
        assert_eq!(
            NatsAuth::split_url("nats://svc:p%40ss%3Aword@nats.internal:4222"),
            (
                "nats://nats.internal:4222".to_string(),
                NatsAuth::UserPassword { user: "svc".into(), password: "p@ss:word".into() }
            )
        );
        assert_eq!(
            NatsAuth::split_url("tls://s3cr3t@nats.internal:4222"),
            ("tls://nats.internal:4222".to_string(), NatsAuth::Token("s3cr3t".into()))
        );
        assert_eq!(NatsAuth::split_url("nats://127.0.0.1:4222"), ("nats://127.0.0.1:4222".to_string(), NatsAuth::None));
    }

    #[test]
    fn secrets_never_show() {
        let all = [
            NatsAuth::UserPassword { user: "svc".into(), password: "hunter2-secret".into() },
            NatsAuth::Token("hunter2-secret".into()),
            NatsAuth::NKeySeed("hunter2-secret".into()),
        ];
        for auth in &all {
            assert!(!format!("{auth:?}").contains("hunter2"), "{auth:?}");
            for from_url in [false, true] {
                assert!(!auth.describe(from_url).contains("hunter2"));
            }
            let error = auth.check().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(!error.contains("hunter2"), "{error}");
        }
        assert_eq!(format!("{:?}", all[0]), r#"UserPassword { user: "svc", password: "***" }"#);
    }

    #[test]
    fn seeds_and_creds_files_are_checked_at_start() {
        let user = nkeys::KeyPair::new_user();
        let seed = user.seed().unwrap();
        assert!(NatsAuth::NKeySeed(seed.clone()).check().is_ok());
        assert!(NatsAuth::NKeySeed(seed).describe(false).contains(&user.public_key()), "the public key helps");
        let account = nkeys::KeyPair::new_account().seed().unwrap();
        let error = NatsAuth::NKeySeed(account).check().unwrap_err().to_string();
        assert!(error.contains("another kind of NKey"), "{error}");
        let error = NatsAuth::NKeySeed("not-a-seed".into()).check().unwrap_err().to_string();
        assert!(error.contains("SMARTMART_NATS_NKEY_SEED is not an NKey seed"), "{error}");

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.creds");
        let error = NatsAuth::CredsFile(missing.clone()).check().unwrap_err().to_string();
        assert!(
            error.contains("SMARTMART_NATS_CREDS_FILE") && error.contains(&missing.display().to_string()),
            "{error}"
        );
        let junk = dir.path().join("junk.creds");
        std::fs::write(&junk, "not a creds file\n").unwrap();
        let error = NatsAuth::CredsFile(junk).check().unwrap_err().to_string();
        assert!(error.contains("is not a NATS credentials file"), "{error}");
    }
}

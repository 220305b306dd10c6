//! Module signatures: ed25519 over a module's `sha256:…` digest, in a
//! `<file>.sig` beside it (hex). The host checks them when trusted keys are
//! configured (`SMARTMART_TRUSTED_KEYS`); these helpers make them.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ed25519_dalek::{Signer as _, SigningKey};
use sha2::{Digest, Sha256};

/// The `sha256:…` digest of a file, as the host names modules.
pub fn digest_of(file: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(&bytes))))
}

/// Writes a new secret key (hex, mode 0600) to `file`; returns the public key (hex).
pub fn keygen(file: &Path) -> anyhow::Result<String> {
    let secret: [u8; 32] = rand::random();
    let key = SigningKey::from_bytes(&secret);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(file).with_context(|| format!("creating {} (it must not exist)", file.display()))?;
    std::io::Write::write_all(&mut out, hex::encode(secret).as_bytes())?;
    Ok(hex::encode(key.verifying_key().to_bytes()))
}

/// Signs `module` with the secret key in `key_file`; returns the `.sig` path.
pub fn sign_file(module: &Path, key_file: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(key_file).with_context(|| format!("reading {}", key_file.display()))?;
    let secret: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{}: expected 64 hex digits", key_file.display()))?;
    let signature = SigningKey::from_bytes(&secret).sign(digest_of(module)?.as_bytes());
    let path = PathBuf::from(format!("{}.sig", module.display()));
    std::fs::write(&path, hex::encode(signature.to_bytes()))?;
    Ok(path)
}

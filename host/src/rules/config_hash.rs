//! The hash that names a module's configuration: figures of an experiment
//! arm are kept per (module digest, config hash), so that orders under
//! `percent = 15` are never mixed with orders under `percent = 20` of the
//! same module.

use sha2::{Digest, Sha256};

use super::ModuleConfig;

/// `sha256:` and the hex digest of the configuration's canonical encoding:
/// each key and value (in key order) as its length (8 bytes, big endian)
/// then its bytes, so no two configurations encode alike.
pub fn config_hash(config: &ModuleConfig) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in config {
        for part in [key, value] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> ModuleConfig {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn equal_configurations_hash_alike_and_any_change_shows() {
        let a = config(&[("percent", "15"), ("tier", "GOLD")]);
        assert_eq!(config_hash(&a), config_hash(&a.clone()));
        assert_ne!(config_hash(&a), config_hash(&config(&[("percent", "20"), ("tier", "GOLD")])));
        // Boundaries are encoded: moving a character between key and value differs.
        assert_ne!(config_hash(&config(&[("ab", "c")])), config_hash(&config(&[("a", "bc")])));
        assert_ne!(config_hash(&config(&[])), config_hash(&config(&[("", "")])));
        assert!(config_hash(&a).starts_with("sha256:") && config_hash(&a).len() == 7 + 64);
    }
}

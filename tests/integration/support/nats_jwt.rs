//! NATS decentralized authentication, made by hand as `nsc` makes it: an
//! operator, its system account and accounts with JetStream, each a JWT
//! signed with NKeys (JWT v2: header `ed25519-nkey`, the signature over
//! `header.payload`), the server configuration that trusts the operator
//! (accounts preloaded in a memory resolver), and `.creds` files of users.
//! Only the claims nats-server reads are set.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde_json::{Value, json};

/// An operator: the root of trust a server is configured with.
pub struct Operator {
    key: KeyPair,
    jwt: String,
    system: Account,
}

/// An account, signed by its operator; it signs its users.
pub struct Account {
    key: KeyPair,
    jwt: String,
}

impl Operator {
    /// A new operator with its system account (nats-server needs one for JetStream).
    pub fn generate() -> Operator {
        let key = KeyPair::new_operator();
        let jwt = sign(
            json!({"sub": key.public_key(), "name": "test-operator", "nats": {"type": "operator", "version": 2}}),
            &key,
        );
        let system = Account::signed_by(&key, "SYS", false);
        Operator { key, jwt, system }
    }

    /// A new account of this operator, JetStream enabled without limits.
    pub fn account(&self, name: &str) -> Account {
        Account::signed_by(&self.key, name, true)
    }

    /// The server configuration that trusts this operator and knows
    /// `accounts` (the operator's JWT written to `dir`).
    pub fn server_config(&self, dir: &Path, accounts: &[&Account]) -> String {
        let file = dir.join("operator.jwt");
        std::fs::write(&file, &self.jwt).expect("writing the operator JWT");
        let preload: Vec<String> = [&self.system]
            .into_iter()
            .chain(accounts.iter().copied())
            .map(|a| format!("{}: \"{}\"", a.key.public_key(), a.jwt))
            .collect();
        format!(
            "operator: \"{}\"\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n{}\n}}\n",
            file.display(),
            self.system.key.public_key(),
            preload.join("\n")
        )
    }
}

impl Account {
    fn signed_by(operator: &KeyPair, name: &str, jetstream: bool) -> Account {
        let key = KeyPair::new_account();
        let mut limits = json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
        });
        if jetstream {
            for limit in ["mem_storage", "disk_storage", "streams", "consumer"] {
                limits[limit] = json!(-1);
            }
        }
        let claims = json!({
            "sub": key.public_key(),
            "name": name,
            "nats": {"limits": limits, "type": "account", "version": 2},
        });
        let jwt = sign(claims, operator);
        Account { key, jwt }
    }

    /// The `.creds` file of a new user `name` of this account: the user's
    /// JWT (signed by the account) and its NKey seed.
    pub fn user_creds(&self, name: &str) -> String {
        let user = KeyPair::new_user();
        let claims = json!({
            "sub": user.public_key(),
            "name": name,
            "nats": {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2},
        });
        let jwt = sign(claims, &self.key);
        let seed = user.seed().expect("a new user key has its seed");
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        )
    }
}

/// `claims` as a JWT issued by `issuer` (its public key as `iss`), now.
fn sign(mut claims: Value, issuer: &KeyPair) -> String {
    claims["iss"] = json!(issuer.public_key());
    claims["iat"] = json!(super::server::now_secs());
    claims["jti"] = json!(hex::encode_upper(rand::random::<[u8; 16]>()));
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let signature = issuer.sign(signed.as_bytes()).expect("signing with a full key pair");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

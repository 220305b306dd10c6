//! The sandbox gateway built into the host: a stand-in for an external
//! payment provider, driven by magic tokens.
//!
//! | token | behaviour |
//! |---|---|
//! | `tok_ok`, or any other `tok_…` not below | captured at once |
//! | `tok_decline` | declined ("card declined") |
//! | `tok_transient_N` (N = 1..=9) | the first N attempts for an idempotency key fail transiently, then it captures |
//! | `tok_down` | every attempt fails transiently |
//! | anything not starting with `tok_` | declined ("invalid payment token") |
//!
//! Its ledger of captured charges lives in the store's database (its own
//! table, `store::ledger`), written through the same writer as the orders:
//! after a crash the pipeline asks it (`lookup`) what was really charged, as
//! it would ask a real provider, and any process sharing the database can.
//! The attempt counters of `tok_transient_N` are only in memory; after a
//! restart a key starts failing again from zero, which is harmless because a
//! key that was captured is never captured twice.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use super::gateway::{Charge, ChargeRequest, GatewayError, PaymentGateway};
use crate::store::Store;
use crate::store::ledger::{Captured, LedgerCharge};

/// The built-in sandbox gateway. Cheap to clone: clones share one ledger.
#[derive(Clone)]
pub struct SandboxGateway {
    store: Store,
    /// Attempts seen per idempotency key, for `tok_transient_N`.
    attempts: Arc<Mutex<HashMap<String, u32>>>,
}

impl fmt::Debug for SandboxGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxGateway").finish_non_exhaustive()
    }
}

/// What a token asks the sandbox to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Capture,
    Decline,
    Invalid,
    /// Fail this many attempts per idempotency key, then capture.
    FailFirst(u32),
    Down,
}

impl Behaviour {
    fn of(token: &str) -> Behaviour {
        let Some(rest) = token.strip_prefix("tok_") else {
            return Behaviour::Invalid;
        };
        match rest {
            "decline" => Behaviour::Decline,
            "down" => Behaviour::Down,
            _ => match rest.strip_prefix("transient_").and_then(|n| n.parse::<u32>().ok()) {
                // Only a single digit 1..=9 is magic; `tok_transient_0` or
                // `tok_transient_12` are just "any other tok_…".
                Some(n @ 1..=9) if rest.len() == "transient_".len() + 1 => Behaviour::FailFirst(n),
                _ => Behaviour::Capture,
            },
        }
    }
}

impl SandboxGateway {
    /// A sandbox whose ledger is the store's `sandbox_charges` table.
    pub fn new(store: Store) -> Self {
        SandboxGateway { store, attempts: Arc::default() }
    }

    /// Every captured charge, oldest first, with its idempotency key: what the
    /// "provider" would bill. Tests use it to prove that no charge exists
    /// without an order, and none twice.
    ///
    /// # Panics
    ///
    /// If the ledger cannot be read: an empty list would be a lie.
    pub fn charges(&self) -> Vec<(String, Charge)> {
        let charges = self.store.ledger_charges().unwrap_or_else(|e| panic!("cannot read the sandbox ledger: {e}"));
        charges.into_iter().map(|c| (c.idempotency_key.clone(), charge_of(c))).collect()
    }

    /// Counts this attempt for `key` and says whether it is one of the first
    /// `failures` (which must fail).
    fn fails_this_attempt(&self, key: &str, failures: u32) -> Option<u32> {
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = attempts.entry(key.to_owned()).or_insert(0);
        *seen = seen.saturating_add(1);
        (*seen <= failures).then_some(*seen)
    }

    /// Records a capture for the request's key, or finds the one already
    /// recorded. A failing ledger is a gateway outage: transient.
    async fn capture(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        if i64::try_from(request.amount_cents).is_err() {
            return Err(GatewayError::declined("amount too large"));
        }
        let recorded = self
            .store
            .ledger_capture(&request.idempotency_key, &request.order_id, request.amount_cents, &request.currency)
            .await
            .map_err(|e| GatewayError::transient(format!("sandbox ledger unavailable: {e}")))?;
        match recorded {
            Captured::New(charge) | Captured::Existing(charge) => Ok(charge_of(charge)),
            Captured::Mismatch(reason) => Err(GatewayError::declined(reason)),
        }
    }
}

fn charge_of(charge: LedgerCharge) -> Charge {
    Charge { transaction_id: charge.transaction_id, amount_cents: charge.amount_cents }
}

#[async_trait]
impl PaymentGateway for SandboxGateway {
    fn name(&self) -> &str {
        "sandbox"
    }

    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        match Behaviour::of(&request.token) {
            Behaviour::Invalid => return Err(GatewayError::declined("invalid payment token")),
            Behaviour::Decline => return Err(GatewayError::declined("card declined")),
            Behaviour::Down => return Err(GatewayError::transient("sandbox gateway is down")),
            Behaviour::FailFirst(failures) => {
                if let Some(attempt) = self.fails_this_attempt(&request.idempotency_key, failures) {
                    return Err(GatewayError::transient(format!(
                        "simulated transient failure {attempt} of {failures}"
                    )));
                }
            }
            Behaviour::Capture => {}
        }
        self.capture(request).await
    }

    async fn lookup(&self, idempotency_key: &str) -> Result<Option<Charge>, GatewayError> {
        self.store
            .ledger_lookup(idempotency_key)
            .await
            .map(|found| found.map(charge_of))
            .map_err(|e| GatewayError::transient(format!("sandbox ledger unavailable: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> (SandboxGateway, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite"), &Default::default()).unwrap();
        (SandboxGateway::new(store), dir)
    }

    #[test]
    fn tokens_map_to_behaviours() {
        assert_eq!(Behaviour::of("tok_ok"), Behaviour::Capture);
        assert_eq!(Behaviour::of("tok_visa_4242"), Behaviour::Capture);
        assert_eq!(Behaviour::of("tok_decline"), Behaviour::Decline);
        assert_eq!(Behaviour::of("tok_down"), Behaviour::Down);
        assert_eq!(Behaviour::of("tok_transient_1"), Behaviour::FailFirst(1));
        assert_eq!(Behaviour::of("tok_transient_9"), Behaviour::FailFirst(9));
        assert_eq!(Behaviour::of("tok_transient_0"), Behaviour::Capture);
        assert_eq!(Behaviour::of("tok_transient_12"), Behaviour::Capture);
        assert_eq!(Behaviour::of("tok_transient_+3"), Behaviour::Capture);
        assert_eq!(Behaviour::of("ok"), Behaviour::Invalid);
        assert_eq!(Behaviour::of(""), Behaviour::Invalid);
        assert_eq!(Behaviour::of("TOK_ok"), Behaviour::Invalid);
    }

    fn request(key: &str, token: &str, amount_cents: u64) -> ChargeRequest {
        ChargeRequest {
            idempotency_key: key.into(),
            order_id: format!("ord_{key}"),
            amount_cents,
            currency: "USD".into(),
            token: token.into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transient_counters_are_per_idempotency_key() {
        let (sandbox, _dir) = sandbox();
        let a = request("a", "tok_transient_1", 100);
        let b = request("b", "tok_transient_1", 100);
        assert!(sandbox.charge(&a).await.unwrap_err().is_transient());
        assert!(sandbox.charge(&b).await.unwrap_err().is_transient());
        let charged_a = sandbox.charge(&a).await.unwrap();
        let charged_b = sandbox.charge(&b).await.unwrap();
        assert_ne!(charged_a.transaction_id, charged_b.transaction_id);
        assert_eq!(sandbox.charges().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reused_key_with_another_amount_or_currency_is_declined_and_charges_nothing() {
        let (sandbox, _dir) = sandbox();
        let first = sandbox.charge(&request("k", "tok_ok", 100)).await.unwrap();
        assert_eq!(
            sandbox.charge(&request("k", "tok_ok", 101)).await,
            Err(GatewayError::declined("idempotency key reused with another amount"))
        );
        let euros = ChargeRequest { currency: "EUR".into(), ..request("k", "tok_ok", 100) };
        assert_eq!(
            sandbox.charge(&euros).await,
            Err(GatewayError::declined("idempotency key reused with another currency"))
        );
        assert_eq!(sandbox.charges(), vec![("k".to_owned(), first)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn amounts_beyond_sqlite_integers_are_declined() {
        let (sandbox, _dir) = sandbox();
        let result = sandbox.charge(&request("k", "tok_ok", u64::MAX)).await;
        assert_eq!(result, Err(GatewayError::declined("amount too large")));
        assert!(sandbox.charges().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transaction_ids_are_txn_and_a_uuid_v7() {
        let (sandbox, _dir) = sandbox();
        let charge = sandbox.charge(&request("k", "tok_ok", 100)).await.unwrap();
        let uuid = charge.transaction_id.strip_prefix("txn_").expect("txn_ prefix");
        assert_eq!(uuid.len(), 32, "simple (unhyphenated) form: {uuid}");
        assert_eq!(uuid::Uuid::parse_str(uuid).unwrap().get_version_num(), 7);
    }
}

//! The sandbox gateway built into the host: a stand-in for an external
//! payment provider, driven by magic tokens.
//!
//! | token | behaviour |
//! |---|---|
//! | `tok_ok`, or any other `tok_…` not below | captured at once |
//! | `tok_decline` | declined ("card declined") |
//! | `tok_transient_N` (N = 1..=9) | the first N attempts for an idempotency key fail with an unknown outcome (nothing captured), then it captures |
//! | `tok_down` | the gateway cannot be reached: every attempt fails before it is sent, nothing is captured |
//! | `tok_lost` | every attempt captures (once per key) but its answer is lost: the outcome is unknown until a lookup finds the charge (→ confirmed) |
//! | `tok_stall` | every attempt stalls and its outcome is unknown; nothing is captured, so the cancel kills the key (→ payment failed, nothing charged) |
//! | `tok_pending_N` (N = 1..=60) | the first attempt captures but its answer is lost, and for N seconds from it every charge, lookup and cancel of the key has an unknown outcome: past the answer deadline the order is answered `202 PAYMENT_PENDING`, and the reconciler confirms it afterwards |
//! | anything not starting with `tok_` | declined ("invalid payment token") |
//!
//! Its ledger of captured charges lives in the store's database (its own
//! table, `store::ledger`), written through the same writer as the orders:
//! after a crash the pipeline asks it (`lookup`, `cancel`) what was really
//! charged, as it would ask a real provider, and any process sharing the
//! database can. A cancel (protocol v2) is recorded there too, so no capture
//! with a cancelled key ever happens. The attempt counters of
//! `tok_transient_N` and the silences of `tok_pending_N` are only in
//! memory; after a restart they start again from zero, which is harmless
//! because a key that was captured is never captured twice.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::gateway::{CancelOutcome, Charge, ChargeRequest, GatewayError, PaymentGateway};
use crate::store::Store;
use crate::store::ledger::{Captured, LedgerCancel, LedgerCharge};

/// How long a `tok_stall` attempt takes before its outcome is lost: long
/// enough to be seen, short against any answer deadline.
const STALL: Duration = Duration::from_millis(100);

/// The built-in sandbox gateway. Cheap to clone: clones share one ledger.
#[derive(Clone)]
pub struct SandboxGateway {
    store: Store,
    /// Attempts seen per idempotency key, for `tok_transient_N`.
    attempts: Arc<Mutex<HashMap<String, u32>>>,
    /// Keys the gateway answers nothing for until the given time (`tok_pending_N`).
    silent_until: Arc<Mutex<HashMap<String, Instant>>>,
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
    /// Capture, and lose every answer.
    Lost,
    /// Capture nothing, and lose every answer.
    Stall,
    /// Capture on the first attempt, then answer nothing for this many seconds.
    Pending(u32),
}

impl Behaviour {
    fn of(token: &str) -> Behaviour {
        let Some(rest) = token.strip_prefix("tok_") else {
            return Behaviour::Invalid;
        };
        let numbered = |prefix: &str, range: std::ops::RangeInclusive<u32>| {
            let digits = rest.strip_prefix(prefix)?;
            // Only plain digits are magic (`tok_transient_+3` is just "any other tok_…").
            let n: u32 = digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse().ok())??;
            (range.contains(&n) && digits.len() <= 2).then_some(n)
        };
        match rest {
            "decline" => Behaviour::Decline,
            "down" => Behaviour::Down,
            "lost" => Behaviour::Lost,
            "stall" => Behaviour::Stall,
            _ => {
                // Only a single digit 1..=9 is magic for `tok_transient_`;
                // `tok_transient_0` or `tok_transient_12` are just "any other tok_…".
                if let Some(n) = numbered("transient_", 1..=9).filter(|_| rest.len() == "transient_".len() + 1) {
                    Behaviour::FailFirst(n)
                } else if let Some(n) = numbered("pending_", 1..=60) {
                    Behaviour::Pending(n)
                } else {
                    Behaviour::Capture
                }
            }
        }
    }
}

impl SandboxGateway {
    /// A sandbox whose ledger is the store's `sandbox_charges` table.
    pub fn new(store: Store) -> Self {
        SandboxGateway { store, attempts: Arc::default(), silent_until: Arc::default() }
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

    /// Whether the gateway answers nothing for `key` now (`tok_pending_N`).
    fn silent(&self, key: &str) -> bool {
        let silent = self.silent_until.lock().unwrap_or_else(PoisonError::into_inner);
        silent.get(key).is_some_and(|until| Instant::now() < *until)
    }

    /// Starts `key`'s silence of `seconds`, once: true on the key's first attempt.
    fn start_silence(&self, key: &str, seconds: u32) -> bool {
        let mut silent = self.silent_until.lock().unwrap_or_else(PoisonError::into_inner);
        if silent.contains_key(key) {
            return false;
        }
        silent.insert(key.to_owned(), Instant::now() + Duration::from_secs(u64::from(seconds)));
        true
    }

    /// Records a capture for the request's key, or finds the one already
    /// recorded. A failing ledger is a gateway outage with an unknown outcome.
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
            Captured::Cancelled => Err(GatewayError::declined("rejected by gateway: idempotency key cancelled")),
        }
    }

    /// The unknown outcome of a request whose answer the sandbox loses.
    fn lost(what: &str) -> GatewayError {
        GatewayError::transient(format!("sandbox: the answer to {what} was lost"))
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
        let key = &request.idempotency_key;
        match Behaviour::of(&request.token) {
            Behaviour::Invalid => return Err(GatewayError::declined("invalid payment token")),
            Behaviour::Decline => return Err(GatewayError::declined("card declined")),
            Behaviour::Down => return Err(GatewayError::unreachable("sandbox gateway is down")),
            Behaviour::FailFirst(failures) => {
                if let Some(attempt) = self.fails_this_attempt(key, failures) {
                    return Err(GatewayError::transient(format!(
                        "simulated transient failure {attempt} of {failures}"
                    )));
                }
            }
            Behaviour::Lost => {
                self.capture(request).await?;
                return Err(Self::lost("the charge"));
            }
            Behaviour::Stall => {
                tokio::time::sleep(STALL).await;
                return Err(Self::lost("the charge"));
            }
            Behaviour::Pending(seconds) => {
                if self.start_silence(key, seconds) {
                    self.capture(request).await?;
                }
                if self.silent(key) {
                    return Err(Self::lost("the charge"));
                }
            }
            Behaviour::Capture => {}
        }
        self.capture(request).await
    }

    async fn lookup(&self, idempotency_key: &str) -> Result<Option<Charge>, GatewayError> {
        if self.silent(idempotency_key) {
            return Err(Self::lost("the lookup"));
        }
        self.store
            .ledger_lookup(idempotency_key)
            .await
            .map(|found| found.map(charge_of))
            .map_err(|e| GatewayError::transient(format!("sandbox ledger unavailable: {e}")))
    }

    async fn cancel(&self, idempotency_key: &str) -> Result<CancelOutcome, GatewayError> {
        if self.silent(idempotency_key) {
            return Err(Self::lost("the cancel"));
        }
        let cancelled = self
            .store
            .ledger_cancel(idempotency_key)
            .await
            .map_err(|e| GatewayError::transient(format!("sandbox ledger unavailable: {e}")))?;
        Ok(match cancelled {
            LedgerCancel::Captured(charge) => CancelOutcome::Captured(charge_of(charge)),
            LedgerCancel::Cancelled => CancelOutcome::Cancelled,
        })
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
        assert_eq!(Behaviour::of("tok_lost"), Behaviour::Lost);
        assert_eq!(Behaviour::of("tok_stall"), Behaviour::Stall);
        assert_eq!(Behaviour::of("tok_pending_1"), Behaviour::Pending(1));
        assert_eq!(Behaviour::of("tok_pending_60"), Behaviour::Pending(60));
        assert_eq!(Behaviour::of("tok_pending_61"), Behaviour::Capture);
        assert_eq!(Behaviour::of("tok_pending_0"), Behaviour::Capture);
        assert_eq!(Behaviour::of("tok_pending_+5"), Behaviour::Capture);
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
            request_id: None,
            traceparent: None,
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
    async fn a_lost_answer_still_captures_once_and_a_lookup_finds_it() {
        let (sandbox, _dir) = sandbox();
        let lost = request("k", "tok_lost", 100);
        for _ in 0..3 {
            assert!(sandbox.charge(&lost).await.unwrap_err().may_have_charged());
        }
        let found = sandbox.lookup("k").await.unwrap().expect("the lost capture is in the ledger");
        assert_eq!(sandbox.charges(), vec![("k".to_owned(), found.clone())]);
        assert_eq!(sandbox.cancel("k").await, Ok(CancelOutcome::Captured(found)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_key_is_cancelled_and_can_never_capture_after() {
        let (sandbox, _dir) = sandbox();
        assert!(sandbox.charge(&request("k", "tok_stall", 100)).await.unwrap_err().may_have_charged());
        assert_eq!(sandbox.lookup("k").await, Ok(None));
        assert_eq!(sandbox.cancel("k").await, Ok(CancelOutcome::Cancelled));
        assert_eq!(sandbox.cancel("k").await, Ok(CancelOutcome::Cancelled), "a cancel is idempotent");
        let late = sandbox.charge(&request("k", "tok_ok", 100)).await;
        assert!(matches!(late, Err(GatewayError::Declined { .. })), "{late:?}");
        assert!(sandbox.charges().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pending_key_is_silent_for_its_seconds_then_found() {
        let (sandbox, _dir) = sandbox();
        let pending = request("k", "tok_pending_1", 100);
        assert!(sandbox.charge(&pending).await.unwrap_err().may_have_charged());
        assert!(sandbox.lookup("k").await.is_err());
        assert!(sandbox.cancel("k").await.is_err());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let found = sandbox.lookup("k").await.unwrap().expect("captured on the first attempt");
        assert_eq!(sandbox.charge(&pending).await, Ok(found));
        assert_eq!(sandbox.charges().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_down_gateway_never_received_the_request() {
        let (sandbox, _dir) = sandbox();
        let error = sandbox.charge(&request("k", "tok_down", 100)).await.unwrap_err();
        assert!(error.is_transient() && !error.may_have_charged(), "{error:?}");
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

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
//! It simulates a system OUTSIDE the host, so its ledger of captured charges
//! lives in its own SQLite file, never in the host's database: after a crash
//! the pipeline can ask it (`lookup`) what was really charged, as it would ask
//! a real provider. The attempt counters of `tok_transient_N` are only in
//! memory; after a restart a key starts failing again from zero, which is
//! harmless because a key that was captured is never captured twice.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::gateway::{Charge, ChargeRequest, GatewayError, PaymentGateway};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS charges (
    idempotency_key TEXT PRIMARY KEY,
    transaction_id  TEXT NOT NULL UNIQUE,
    order_id        TEXT NOT NULL,
    amount_cents    INTEGER NOT NULL CHECK (amount_cents >= 0),
    currency        TEXT NOT NULL,
    created_at      TEXT NOT NULL
) STRICT;
";

/// The sandbox ledger could not be opened or prepared.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the sandbox gateway's ledger {}: {source}", path.display())]
pub struct SandboxOpenError {
    /// The ledger file (`:memory:` for an in-memory ledger).
    pub path: PathBuf,
    /// What SQLite said.
    #[source]
    pub source: rusqlite::Error,
}

/// The built-in sandbox gateway. Cheap to clone: clones share one ledger.
#[derive(Clone)]
pub struct SandboxGateway {
    inner: Arc<Inner>,
}

struct Inner {
    /// A std mutex, not tokio's: the connection is only used inside
    /// `spawn_blocking` (or briefly by `charges`), never across an `.await`.
    /// One connection is enough for a simulated gateway, and the mutex makes
    /// "look up the key, else insert it" atomic within the process.
    ledger: Mutex<Connection>,
    /// Attempts seen per idempotency key, for `tok_transient_N`.
    attempts: Mutex<HashMap<String, u32>>,
}

impl Inner {
    fn ledger(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock dropped any open transaction, which
        // rolls it back: the connection is still consistent, so keep using it.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
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

/// The result of trying to record a capture in the ledger.
enum Recorded {
    New(Charge),
    Existing(Charge),
    Mismatch(&'static str),
}

impl SandboxGateway {
    /// Opens the ledger file at `path`, creating it (and its table) if needed.
    /// The file uses WAL so that reads (`lookup`, `charges`) do not block on
    /// a writer in another process.
    pub fn open(path: &Path) -> Result<Self, SandboxOpenError> {
        let prepare = || -> rusqlite::Result<Connection> {
            let connection = Connection::open(path)?;
            connection.busy_timeout(Duration::from_secs(5))?;
            let _mode: String = connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
            // Durable against a crash of the process, like the host's store
            // (WAL, no fsync per commit): the sandbox stands in for a remote
            // provider, whose own durability is not what is being tested.
            connection.pragma_update(None, "synchronous", "NORMAL")?;
            connection.execute_batch(SCHEMA)?;
            Ok(connection)
        };
        let connection = prepare().map_err(|source| SandboxOpenError { path: path.to_owned(), source })?;
        Ok(Self::with_connection(connection))
    }

    /// A sandbox whose ledger lives in memory and dies with it, for unit tests.
    pub fn in_memory() -> Result<Self, SandboxOpenError> {
        let prepare = || -> rusqlite::Result<Connection> {
            let connection = Connection::open_in_memory()?;
            connection.execute_batch(SCHEMA)?;
            Ok(connection)
        };
        let connection = prepare().map_err(|source| SandboxOpenError { path: ":memory:".into(), source })?;
        Ok(Self::with_connection(connection))
    }

    fn with_connection(connection: Connection) -> Self {
        SandboxGateway {
            inner: Arc::new(Inner { ledger: Mutex::new(connection), attempts: Mutex::new(HashMap::new()) }),
        }
    }

    /// Every captured charge, oldest first, with its idempotency key: what the
    /// "provider" would bill. Tests use it to prove that no charge exists
    /// without an order, and none twice.
    ///
    /// Blocks on SQLite briefly; meant for tests and inspection, not hot paths.
    ///
    /// # Panics
    ///
    /// If the ledger cannot be read: an empty list would be a lie.
    pub fn charges(&self) -> Vec<(String, Charge)> {
        let connection = self.inner.ledger();
        let read = || -> rusqlite::Result<Vec<(String, Charge)>> {
            let mut statement = connection
                .prepare("SELECT idempotency_key, transaction_id, amount_cents FROM charges ORDER BY rowid")?;
            let rows = statement.query_map([], |row| Ok((row.get(0)?, charge_from_row(row, 1)?)))?;
            rows.collect()
        };
        read().unwrap_or_else(|error| panic!("cannot read the sandbox gateway's ledger: {error}"))
    }

    /// Counts this attempt for `key` and says whether it is one of the first
    /// `failures` (which must fail).
    fn fails_this_attempt(&self, key: &str, failures: u32) -> Option<u32> {
        let mut attempts = self.inner.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = attempts.entry(key.to_owned()).or_insert(0);
        *seen = seen.saturating_add(1);
        (*seen <= failures).then_some(*seen)
    }

    /// Runs blocking ledger work off the async runtime. A failing ledger is
    /// a gateway outage: transient.
    async fn with_ledger<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, GatewayError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&mut inner.ledger()))
            .await
            .map_err(|error| GatewayError::transient(format!("sandbox ledger task failed: {error}")))?
            .map_err(|error| GatewayError::transient(format!("sandbox ledger unavailable: {error}")))
    }

    /// Records a capture for the request's key, or finds the one already
    /// recorded. One IMMEDIATE transaction, so that two processes sharing the
    /// file cannot both insert.
    async fn capture(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        let amount_cents = request.amount_cents;
        // SQLite integers are signed 64-bit.
        let Ok(amount) = i64::try_from(amount_cents) else {
            return Err(GatewayError::declined("amount too large"));
        };
        let key = request.idempotency_key.clone();
        let order_id = request.order_id.clone();
        let currency = request.currency.clone();
        let recorded = self
            .with_ledger(move |connection| {
                let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let existing = transaction
                    .query_row(
                        "SELECT transaction_id, amount_cents, currency FROM charges WHERE idempotency_key = ?1",
                        [&key],
                        |row| Ok((charge_from_row(row, 0)?, row.get::<_, String>(2)?)),
                    )
                    .optional()?;
                let recorded = match existing {
                    Some((charge, _)) if charge.amount_cents != amount_cents => {
                        Recorded::Mismatch("idempotency key reused with another amount")
                    }
                    Some((_, stored_currency)) if stored_currency != currency => {
                        Recorded::Mismatch("idempotency key reused with another currency")
                    }
                    Some((charge, _)) => Recorded::Existing(charge),
                    None => {
                        let transaction_id = format!("txn_{}", Uuid::now_v7().simple());
                        let created_at = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
                        transaction.execute(
                            "INSERT INTO charges (idempotency_key, transaction_id, order_id, amount_cents, currency, created_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                            params![key, transaction_id, order_id, amount, currency, created_at],
                        )?;
                        Recorded::New(Charge { transaction_id, amount_cents })
                    }
                };
                transaction.commit()?;
                Ok(recorded)
            })
            .await?;
        match recorded {
            Recorded::New(charge) | Recorded::Existing(charge) => Ok(charge),
            Recorded::Mismatch(reason) => Err(GatewayError::declined(reason)),
        }
    }
}

/// Reads `transaction_id, amount_cents` starting at column `first`.
fn charge_from_row(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Charge> {
    let amount: i64 = row.get(first + 1)?;
    let amount_cents =
        u64::try_from(amount).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(first + 1, amount))?;
    Ok(Charge { transaction_id: row.get(first)?, amount_cents })
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
        let key = idempotency_key.to_owned();
        self.with_ledger(move |connection| {
            connection
                .query_row(
                    "SELECT transaction_id, amount_cents FROM charges WHERE idempotency_key = ?1",
                    [&key],
                    |row| charge_from_row(row, 0),
                )
                .optional()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn transient_counters_are_per_idempotency_key() {
        let sandbox = SandboxGateway::in_memory().unwrap();
        let a = request("a", "tok_transient_1", 100);
        let b = request("b", "tok_transient_1", 100);
        assert!(sandbox.charge(&a).await.unwrap_err().is_transient());
        assert!(sandbox.charge(&b).await.unwrap_err().is_transient());
        let charged_a = sandbox.charge(&a).await.unwrap();
        let charged_b = sandbox.charge(&b).await.unwrap();
        assert_ne!(charged_a.transaction_id, charged_b.transaction_id);
        assert_eq!(sandbox.charges().len(), 2);
    }

    #[tokio::test]
    async fn a_reused_key_with_another_amount_or_currency_is_declined_and_charges_nothing() {
        let sandbox = SandboxGateway::in_memory().unwrap();
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

    #[tokio::test]
    async fn amounts_beyond_sqlite_integers_are_declined() {
        let sandbox = SandboxGateway::in_memory().unwrap();
        let result = sandbox.charge(&request("k", "tok_ok", u64::MAX)).await;
        assert_eq!(result, Err(GatewayError::declined("amount too large")));
        assert!(sandbox.charges().is_empty());
    }

    #[tokio::test]
    async fn transaction_ids_are_txn_and_a_uuid_v7() {
        let sandbox = SandboxGateway::in_memory().unwrap();
        let charge = sandbox.charge(&request("k", "tok_ok", 100)).await.unwrap();
        let uuid = charge.transaction_id.strip_prefix("txn_").expect("txn_ prefix");
        assert_eq!(uuid.len(), 32, "simple (unhyphenated) form: {uuid}");
        assert_eq!(Uuid::parse_str(uuid).unwrap().get_version_num(), 7);
    }
}

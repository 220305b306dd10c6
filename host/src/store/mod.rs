//! The store boundary: every SQL statement of the host lives under this
//! folder, and the rest of the host calls typed operations on [`Store`].
//!
//! The folder has three parts:
//!
//! - the records, neutral as to the back-end (public, each module with its
//!   records only: what callers hand to [`Store`] and get back, and what
//!   both back-ends read and write):
//!   - [`catalog`]: customers, products, warehouses, stock and carts;
//!   - [`orders`]: orders and their holds, payments, idempotency keys, and
//!     the saga's state diagram;
//!   - [`outbox`]: the order's events and sink positions;
//!   - [`ledger`]: the sandbox payment gateway's ledger;
//!   - [`shadows`]: shadow runs of candidate rule modules;
//!   - [`experiments`]: A/B figures per arm, only ever added to;
//!   - [`rollouts`]: canary states and the history of reloads, refusals,
//!     rollbacks, promotions;
//!   - [`retention`]: the tables pruned by age (and row count), and what
//!     is never pruned;
//!   - [`error`]: what callers match on;
//! - the back-ends, two sibling folders implementing the same operations
//!   with one file per module of records (`sqlite/orders.rs` and
//!   `postgres/orders.rs` for [`orders`], …); private to `store`, so
//!   nothing else in the host can call a back-end's function:
//!   - `sqlite/`: an embedded SQLite file written by one process, with its
//!     writer thread (group commit, a SAVEPOINT per command), its inline
//!     readers (WAL readers never wait for the writer), its WAL
//!     checkpointer and its migrations (`PRAGMA user_version`);
//!   - `postgres/`: PostgreSQL, for several replicas of the service on one
//!     database (`SMARTMART_DATABASE_URL`), with its pool, its transactions
//!     retried on a deadlock or serialization failure, its work claimed
//!     with `FOR UPDATE SKIP LOCKED` and leases, and its migrations (table
//!     `smartmart_schema`);
//! - the facade, this file: [`Store`] opens either back-end and sends each
//!   operation to it (`sqlite::orders::reserve` or
//!   `postgres::orders::reserve`, …).
//!
//! A new operation is therefore its records (if any) in a neutral module,
//! one function in each back-end's file and one method of [`Store`]. The
//! two back-ends' migration lists carry the same versions, one for one
//! (checked by the tests in `migrations.rs`); every operation of [`Store`]
//! runs on either back-end and one test suite (`tests/integration/store.rs`)
//! runs on both, so no caller ever sees a connection or knows which
//! database it uses.

pub mod catalog;
pub mod error;
pub mod experiments;
pub mod ledger;
#[cfg(test)]
mod migrations;
pub mod orders;
pub mod outbox;
mod postgres;
pub mod retention;
pub mod rollouts;
pub mod shadows;
mod sqlite;
pub mod stats;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

pub use error::StoreError;
pub use postgres::PostgresOptions;

use catalog::{CartItem, OrderSnapshot, Product, StockLevel, StockedWarehouse, Warehouse};
use experiments::{ArmFigures, ArmKey, ArmRow};
use ledger::{Captured, LedgerCancel, LedgerCharge};
use orders::{
    AwaitingReview, KeyRecord, NewOrder, OpenIntent, PaymentIntent, PendingPayment, PendingPaymentRow, ReserveOutcome,
    Settlement, StoredOrder, Verdict,
};
use outbox::{DueEvent, SinkPosition};
use retention::Retained;
use rollouts::{RolloutEvent, RolloutRecord};
use shadows::{ShadowRun, ShadowSummary};

use crate::domain::customer::Customer;
use crate::domain::order::CartLine;
use crate::domain::status::Channel;

/// How long a replica owns the resolution of a pending payment it claimed
/// (see [`Store::pending_orders`]): its `resolve_after_ms` is pushed this
/// far ahead, so that no other replica asks the gateway about it meanwhile;
/// after that (the replica died, or never set a time) another one does.
pub const RESOLVE_LEASE_MS: i64 = 30_000;

/// `PRAGMA synchronous`, the durability of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// An fsync per commit: a confirmed order survives a power cut. The
    /// writer's group commit shares that fsync among every order of a batch.
    Full,
    /// No fsync per commit (WAL): a confirmed order survives a crash of the
    /// process, but the last commits may be lost if the machine loses power.
    Normal,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            other => Err(format!("durability must be `full` or `normal`, not {other:?}")),
        }
    }
}

/// How the database is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long a statement waits for a lock held by another process
    /// before the store reports itself unavailable.
    pub busy_timeout: Duration,
    pub durability: Durability,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { busy_timeout: Duration::from_secs(2), durability: Durability::Full }
    }
}

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// An embedded SQLite file (one process).
    Sqlite(PathBuf),
    /// A PostgreSQL database, shared by any number of replicas.
    Postgres(String),
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    /// Held by an outbox delivery pass, so that two passes in this process
    /// (the dispatcher and `Engine::drain`) never deliver the same events.
    delivery: tokio::sync::Mutex<()>,
}

enum Backend {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("database", &self.describe()).finish()
    }
}

/// Runs a read: `$sqlite` with the reader connection `$c`, or `$pg` with a
/// pooled PostgreSQL client `$c`.
macro_rules! read {
    ($store:expr, |$c:ident| $sqlite:expr, $pg:expr) => {
        match &$store.inner.backend {
            Backend::Sqlite(db) => db.read(|$c| $sqlite),
            Backend::Postgres(db) => {
                let $c = &db.client().await?;
                $pg.await
            }
        }
    };
}

/// Runs a write: `$sqlite` as one command of the SQLite writer (moved into
/// it: it owns what it uses), or `$pg` in one PostgreSQL transaction `$c`.
macro_rules! write {
    ($store:expr, |$c:ident| $sqlite:expr, $pg:expr) => {
        match &$store.inner.backend {
            Backend::Sqlite(db) => db.write(move |$c| $sqlite).await,
            Backend::Postgres(db) => postgres::transact!(db, |tx| {
                let $c = &tx;
                $pg.await
            }),
        }
    };
}

impl Store {
    fn new(backend: Backend) -> Store {
        Store { inner: Arc::new(Inner { backend, delivery: tokio::sync::Mutex::new(()) }) }
    }

    /// Opens the store at `database`: a SQLite file ([`Store::open`]) or a
    /// PostgreSQL database ([`Store::open_postgres`]).
    pub async fn connect(
        database: &Database,
        sqlite: &StoreOptions,
        pg: &PostgresOptions,
    ) -> Result<Store, StoreError> {
        match database {
            Database::Sqlite(path) => Store::open(path, sqlite),
            Database::Postgres(url) => Store::open_postgres(url, pg).await,
        }
    }

    /// Opens (creating if needed) the SQLite database at `path`, migrates it
    /// and starts its writer thread.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        Ok(Store::new(Backend::Sqlite(sqlite::Sqlite::open(path, options)?)))
    }

    /// Opens the SQLite database at `path` for reading only, beside a
    /// service that may be running on it (tools such as `smartmart rules
    /// replay`): no writer thread, no migration, every connection
    /// `SQLITE_OPEN_READ_ONLY`, so nothing of the database is ever written.
    /// A missing file, or a schema version other than the one this binary
    /// knows, is refused.
    pub fn open_read_only(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        Ok(Store::new(Backend::Sqlite(sqlite::Sqlite::open_read_only(path, options)?)))
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://…`) and
    /// migrates it, unless `options.read_only` (then its schema must be
    /// exactly this binary's, and every transaction is read-only).
    pub async fn open_postgres(url: &str, options: &PostgresOptions) -> Result<Store, StoreError> {
        Ok(Store::new(Backend::Postgres(postgres::Postgres::connect(url, options).await?)))
    }

    /// What the SQLite writer has done so far (batches, commands, where its
    /// time went); `None` on PostgreSQL, where every command is a
    /// transaction of its own.
    pub fn writer_totals(&self) -> Option<stats::WriterTotals> {
        match &self.inner.backend {
            Backend::Sqlite(db) => Some(db.stats.totals()),
            Backend::Postgres(_) => None,
        }
    }

    /// The round trips to the PostgreSQL server and the transactions so
    /// far, counted on the wire (see `postgres::wire`); `None` on SQLite,
    /// which has no server to go to.
    pub fn wire_totals(&self) -> Option<stats::WireTotals> {
        match &self.inner.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(db) => Some(db.wire_totals()),
        }
    }

    /// Which database this is, without secrets (logs, errors).
    pub fn describe(&self) -> String {
        match &self.inner.backend {
            Backend::Sqlite(db) => format!("SQLite {}", db.path.display()),
            Backend::Postgres(db) => format!("PostgreSQL {}", db.display),
        }
    }

    /// Whether other processes may be working on this database at the same
    /// time (replicas on PostgreSQL). On SQLite this process is the only
    /// writer: an order it did not start and that is not finished was
    /// interrupted; on a shared database it may be running on another replica.
    pub fn is_shared(&self) -> bool {
        matches!(self.inner.backend, Backend::Postgres(_))
    }

    /// Runs a read that tools and tests call without a runtime (or from
    /// inside one, blocking): SQLite reads inline; PostgreSQL gets a
    /// connection of its own on a thread with its own runtime.
    fn read_blocking<T: Send>(
        &self,
        sqlite: impl FnOnce(&Connection) -> Result<T, StoreError>,
        pg: impl AsyncFnOnce(&deadpool_postgres::Object) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(db) => db.read(sqlite),
            Backend::Postgres(db) => std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .map_err(|e| StoreError::Unavailable(format!("cannot start a runtime: {e}")))?;
                        runtime.block_on(async {
                            let options =
                                PostgresOptions { pool_size: 1, read_only: true, ..PostgresOptions::default() };
                            let own = postgres::Postgres::connect(db.url(), &options).await?;
                            pg(&own.client().await?).await
                        })
                    })
                    .join()
                    .unwrap_or_else(|_| Err(StoreError::Unavailable("the reading thread panicked".into())))
            }),
        }
    }

    /// Whether the database answers a trivial query (readiness).
    pub async fn ping(&self) -> bool {
        let answer: Result<i64, StoreError> = async { read!(self, |c| sqlite::ping(c), postgres::ping(c)) }.await;
        answer.is_ok()
    }

    // ---------------------------------------------------------------- catalog

    /// Whether any customer exists (an empty store gets the demo data set).
    pub async fn has_customers(&self) -> Result<bool, StoreError> {
        read!(self, |c| sqlite::catalog::has_customers(c), postgres::catalog::has_customers(c))
    }

    pub async fn customer(&self, id: &str) -> Result<Option<Customer>, StoreError> {
        read!(self, |c| sqlite::catalog::get_customer(c, id), postgres::catalog::get_customer(c, id))
    }

    pub async fn upsert_customer(&self, customer: Customer) -> Result<(), StoreError> {
        write!(
            self,
            |c| sqlite::catalog::upsert_customer(c, &customer),
            postgres::catalog::upsert_customer(c, &customer)
        )
    }

    pub async fn product(&self, sku: &str) -> Result<Option<Product>, StoreError> {
        read!(self, |c| sqlite::catalog::get_product(c, sku), postgres::catalog::get_product(c, sku))
    }

    pub async fn upsert_product(&self, product: Product) -> Result<(), StoreError> {
        write!(self, |c| sqlite::catalog::upsert_product(c, &product), postgres::catalog::upsert_product(c, &product))
    }

    pub async fn upsert_warehouse(&self, warehouse: Warehouse) -> Result<(), StoreError> {
        write!(
            self,
            |c| sqlite::catalog::upsert_warehouse(c, &warehouse),
            postgres::catalog::upsert_warehouse(c, &warehouse)
        )
    }

    /// Sets the units on hand (see `sqlite::catalog::set_stock`).
    pub async fn set_stock(&self, warehouse_id: &str, sku: &str, on_hand: u64) -> Result<StockLevel, StoreError> {
        let (warehouse_id, sku) = (warehouse_id.to_string(), sku.to_string());
        write!(
            self,
            |c| sqlite::catalog::set_stock(c, &warehouse_id, &sku, on_hand),
            postgres::catalog::set_stock(c, &warehouse_id, &sku, on_hand)
        )
    }

    /// Writes a whole catalog in one command: all of it or none.
    pub async fn load_catalog(
        &self,
        customers: Vec<Customer>,
        products: Vec<Product>,
        warehouses: Vec<Warehouse>,
        stock: Vec<(String, String, u64)>,
    ) -> Result<(), StoreError> {
        write!(
            self,
            |c| {
                customers.iter().try_for_each(|customer| sqlite::catalog::upsert_customer(c, customer))?;
                products.iter().try_for_each(|product| sqlite::catalog::upsert_product(c, product))?;
                warehouses.iter().try_for_each(|warehouse| sqlite::catalog::upsert_warehouse(c, warehouse))?;
                for (warehouse_id, sku, on_hand) in &stock {
                    sqlite::catalog::set_stock(c, warehouse_id, sku, *on_hand)?;
                }
                Ok(())
            },
            async {
                use postgres::catalog as pg;
                for customer in &customers {
                    pg::upsert_customer(c, customer).await?;
                }
                for product in &products {
                    pg::upsert_product(c, product).await?;
                }
                for warehouse in &warehouses {
                    pg::upsert_warehouse(c, warehouse).await?;
                }
                for (warehouse_id, sku, on_hand) in &stock {
                    pg::set_stock(c, warehouse_id, sku, *on_hand).await?;
                }
                Ok(())
            }
        )
    }

    pub async fn stock_of_sku(&self, sku: &str) -> Result<Vec<StockLevel>, StoreError> {
        read!(self, |c| sqlite::catalog::stock_of_sku(c, sku), postgres::catalog::stock_of_sku(c, sku))
    }

    /// Warehouses holding any of `skus`, with the availability of each.
    pub async fn stocked_warehouses(&self, skus: &[&str]) -> Result<Vec<StockedWarehouse>, StoreError> {
        read!(self, |c| sqlite::catalog::stocked_warehouses(c, skus), postgres::catalog::stocked_warehouses(c, skus))
    }

    /// Replaces a customer's cart; `NotFound` names the first unknown sku.
    pub async fn replace_cart(&self, customer_id: &str, items: Vec<CartItem>) -> Result<Vec<CartLine>, StoreError> {
        let customer_id = customer_id.to_string();
        write!(
            self,
            |c| sqlite::catalog::replace_cart(c, &customer_id, &items),
            postgres::catalog::replace_cart(c, &customer_id, &items)
        )
    }

    /// The cart priced now, and the skus no longer in the catalog.
    pub async fn cart(&self, customer_id: &str) -> Result<(Vec<CartLine>, Vec<String>), StoreError> {
        read!(self, |c| sqlite::catalog::cart_lines(c, customer_id), postgres::catalog::cart_lines(c, customer_id))
    }

    /// Everything an order reads before it writes: its customer, its cart
    /// priced now and the stock of the warehouses holding the cart's skus.
    /// With `key` (channel, `Idempotency-Key`), also whether an earlier
    /// request used that key.
    pub async fn order_snapshot(
        &self,
        customer_id: &str,
        key: Option<(&str, &str)>,
    ) -> Result<OrderSnapshot, StoreError> {
        read!(
            self,
            |c| sqlite::catalog::order_snapshot(c, customer_id, key),
            postgres::catalog::order_snapshot(c, customer_id, key)
        )
    }

    // ---------------------------------------------------------------- orders

    /// Creates the order PENDING, claims its key, holds its stock (see `sqlite::orders::reserve`).
    pub async fn reserve(&self, order: NewOrder) -> Result<ReserveOutcome, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(db) => db.write(move |c| sqlite::orders::reserve(c, &order)).await,
            Backend::Postgres(db) => postgres::transact_steps!(db, |tx| postgres::orders::reserve(&tx, &order).await),
        }
    }

    /// Records the payment intent with the draft invoice and the payment
    /// token, kept until the order settles (see `sqlite::orders::record_intent`).
    pub async fn record_intent(&self, intent: PaymentIntent) -> Result<(), StoreError> {
        write!(self, |c| sqlite::orders::record_intent(c, &intent), postgres::orders::record_intent(c, &intent))
    }

    /// The order's final state (see `sqlite::orders::settle`); an order answered
    /// PAYMENT_PENDING settles the same way, its key's `202` replaced by the
    /// final answer.
    pub async fn settle(&self, settlement: Settlement) -> Result<(), StoreError> {
        write!(self, |c| sqlite::orders::settle(c, &settlement), postgres::orders::settle(c, &settlement))
    }

    /// Answers PAYMENT_PENDING: hands the order to the reconciler, its
    /// stock still held and its key answering `202` with the pending
    /// invoice (see `sqlite::orders::mark_payment_pending`).
    pub async fn mark_payment_pending(&self, pending: PendingPayment) -> Result<(), StoreError> {
        write!(
            self,
            |c| sqlite::orders::mark_payment_pending(c, &pending),
            postgres::orders::mark_payment_pending(c, &pending)
        )
    }

    /// When the reconciler looks at the order's open payment again (see
    /// `sqlite::orders::defer_resolution`); nothing once it is no longer open.
    pub async fn defer_resolution(&self, order_id: &str, resolve_after_ms: i64) -> Result<(), StoreError> {
        let order_id = order_id.to_string();
        write!(
            self,
            |c| sqlite::orders::defer_resolution(c, &order_id, resolve_after_ms),
            postgres::orders::defer_resolution(c, &order_id, resolve_after_ms)
        )
    }

    /// Up to `limit` orders answered PAYMENT_PENDING and not settled yet,
    /// oldest first (operators' list).
    pub async fn payments_pending(&self, limit: usize) -> Result<Vec<PendingPaymentRow>, StoreError> {
        read!(self, |c| sqlite::orders::payments_pending(c, limit), postgres::orders::payments_pending(c, limit))
    }

    /// How many orders are answered PAYMENT_PENDING and not settled yet.
    pub async fn payments_pending_count(&self) -> Result<u64, StoreError> {
        read!(self, |c| sqlite::orders::payments_pending_count(c), postgres::orders::payments_pending_count(c))
    }

    /// Undoes a PENDING order (see `sqlite::orders::cancel`); whether it was pending.
    pub async fn cancel(&self, order_id: &str, reason: &str) -> Result<bool, StoreError> {
        let (order_id, reason) = (order_id.to_string(), reason.to_string());
        write!(self, |c| sqlite::orders::cancel(c, &order_id, &reason), postgres::orders::cancel(c, &order_id, &reason))
    }

    /// Removes a PENDING order refused for its input (see `sqlite::orders::discard`).
    pub async fn discard(&self, order_id: &str) -> Result<bool, StoreError> {
        let order_id = order_id.to_string();
        write!(self, |c| sqlite::orders::discard(c, &order_id), postgres::orders::discard(c, &order_id))
    }

    pub async fn order(&self, order_id: &str) -> Result<Option<StoredOrder>, StoreError> {
        read!(self, |c| sqlite::orders::get_order(c, order_id), postgres::orders::get_order(c, order_id))
    }

    /// What an idempotency key holds, if it was used.
    pub async fn key_record(&self, channel: &str, key: &str) -> Result<Option<KeyRecord>, StoreError> {
        read!(self, |c| sqlite::orders::key_record(c, channel, key), postgres::orders::key_record(c, channel, key))
    }

    /// PENDING orders last touched before `updated_before` (RFC 3339): the
    /// unpaid ones and the payment intents to reconcile; and the orders
    /// answered PAYMENT_PENDING whose resolution is due (`resolve_after_ms <=
    /// now_ms`) however recently touched, which are never returned before
    /// that (see `sqlite::orders::pending_orders`). On a shared database they are
    /// claimed for this replica: no other replica gets them until they are
    /// as old again, or for [`RESOLVE_LEASE_MS`] when due for resolution.
    pub async fn pending_orders(
        &self,
        updated_before: &str,
        now_ms: i64,
    ) -> Result<(Vec<String>, Vec<OpenIntent>), StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(db) => db.read(|c| sqlite::orders::pending_orders(c, updated_before, now_ms)),
            Backend::Postgres(db) => {
                postgres::transact!(db, |tx| postgres::orders::claim_pending_orders(&tx, updated_before, now_ms).await)
            }
        }
    }

    /// Settled orders whose fraud checks have not run, with their waiting
    /// events (claimed for a while on a shared database).
    pub async fn awaiting_verdict(&self, limit: usize) -> Result<Vec<AwaitingReview>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(db) => db.read(|c| sqlite::orders::awaiting_verdict(c, limit)),
            Backend::Postgres(db) => {
                postgres::transact!(db, |tx| postgres::orders::claim_awaiting_verdict(&tx, limit).await)
            }
        }
    }

    pub async fn record_verdicts(&self, verdicts: Vec<Verdict>) -> Result<(), StoreError> {
        write!(self, |c| sqlite::orders::record_verdicts(c, &verdicts), postgres::orders::record_verdicts(c, &verdicts))
    }

    /// The last `limit` settled orders (CONFIRMED or PAYMENT_FAILED, newest
    /// first) with their invoices and fraud reviews: what `rules replay`
    /// reconstructs rule inputs from. Blocking (tools call it without a runtime).
    pub fn recent_settled_orders(&self, limit: usize) -> Result<Vec<StoredOrder>, StoreError> {
        self.recent_settled(limit, None)
    }

    /// [`Store::recent_settled_orders`] of the sales channels `channels`
    /// only: the orders a rule limited to them ran on (`rules replay`, the
    /// reload's replay gate).
    pub fn recent_settled_orders_of(&self, limit: usize, channels: &[Channel]) -> Result<Vec<StoredOrder>, StoreError> {
        self.recent_settled(limit, Some(channels))
    }

    fn recent_settled(&self, limit: usize, channels: Option<&[Channel]>) -> Result<Vec<StoredOrder>, StoreError> {
        self.read_blocking(
            |c| sqlite::orders::recent_settled(c, limit, channels),
            async move |c| postgres::orders::recent_settled(c, limit, channels).await,
        )
    }

    pub async fn escalations(&self, limit: usize) -> Result<Vec<StoredOrder>, StoreError> {
        read!(self, |c| sqlite::orders::escalations(c, limit), postgres::orders::escalations(c, limit))
    }

    // ---------------------------------------------------------------- outbox

    /// Taken for one outbox delivery pass (see `events::deliver_due`).
    pub async fn delivery_pass(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.delivery.lock().await
    }

    /// Up to `limit` events due for delivery, oldest first. On a shared
    /// database they are claimed for this replica for a while (see
    /// `postgres::outbox`).
    pub async fn due_events(&self, now_ms: i64, limit: usize) -> Result<Vec<DueEvent>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(db) => db.read(|c| sqlite::outbox::due_events(c, now_ms, limit)),
            Backend::Postgres(db) => {
                postgres::transact!(db, |tx| postgres::outbox::claim_due_events(&tx, now_ms, limit).await)
            }
        }
    }

    pub async fn mark_delivered(&self, seqs: Vec<i64>, position: Option<SinkPosition>) -> Result<(), StoreError> {
        write!(
            self,
            |c| sqlite::outbox::mark_delivered(c, &seqs, position.as_ref()),
            postgres::outbox::mark_delivered(c, &seqs, position.as_ref())
        )
    }

    pub async fn mark_retry(&self, seqs: Vec<i64>, error: String, next_attempt_ms: i64) -> Result<(), StoreError> {
        write!(
            self,
            |c| sqlite::outbox::mark_retry(c, &seqs, &error, next_attempt_ms),
            postgres::outbox::mark_retry(c, &seqs, &error, next_attempt_ms)
        )
    }

    pub async fn sink_positions(&self) -> Result<Vec<SinkPosition>, StoreError> {
        read!(self, |c| sqlite::outbox::sink_positions(c), postgres::outbox::sink_positions(c))
    }

    /// Events not yet delivered, and the age in ms of the oldest of them.
    pub async fn outbox_backlog(&self) -> Result<(u64, i64), StoreError> {
        read!(self, |c| sqlite::outbox::outbox_backlog(c), postgres::outbox::outbox_backlog(c))
    }

    // ---------------------------------------------------------------- sandbox ledger

    pub async fn ledger_capture(
        &self,
        key: &str,
        order_id: &str,
        amount_cents: u64,
        currency: &str,
    ) -> Result<Captured, StoreError> {
        let (key, order_id, currency) = (key.to_string(), order_id.to_string(), currency.to_string());
        write!(
            self,
            |c| sqlite::ledger::capture(c, &key, &order_id, amount_cents, &currency),
            postgres::ledger::capture(c, &key, &order_id, amount_cents, &currency)
        )
    }

    /// Cancels `key` in the sandbox ledger: the charge if it was captured,
    /// otherwise no capture will ever be made under it (see
    /// `sqlite::ledger::cancel`); a capture and a cancel of one key never interleave.
    pub async fn ledger_cancel(&self, key: &str) -> Result<LedgerCancel, StoreError> {
        let key = key.to_string();
        write!(self, |c| sqlite::ledger::cancel(c, &key), postgres::ledger::cancel(c, &key))
    }

    pub async fn ledger_lookup(&self, key: &str) -> Result<Option<LedgerCharge>, StoreError> {
        read!(self, |c| sqlite::ledger::lookup(c, key), postgres::ledger::lookup(c, key))
    }

    /// Every capture of the sandbox ledger, oldest first (tests, inspection). Blocking.
    pub fn ledger_charges(&self) -> Result<Vec<LedgerCharge>, StoreError> {
        self.read_blocking(sqlite::ledger::all, async |c| postgres::ledger::all(c).await)
    }

    // ---------------------------------------------------------------- shadows

    pub async fn record_shadow_runs(&self, runs: Vec<ShadowRun>) -> Result<(), StoreError> {
        write!(self, |c| sqlite::shadows::record_shadow_runs(c, &runs), postgres::shadows::record_shadow_runs(c, &runs))
    }

    pub async fn shadow_summaries(&self) -> Result<Vec<ShadowSummary>, StoreError> {
        read!(self, |c| sqlite::shadows::shadow_summaries(c), postgres::shadows::shadow_summaries(c))
    }

    // ---------------------------------------------------------------- rollouts

    pub async fn record_rollout_event(&self, event: RolloutEvent) -> Result<(), StoreError> {
        write!(self, |c| sqlite::rollouts::record_event(c, &event), postgres::rollouts::record_event(c, &event))
    }

    /// Stores a canary's state and the event that moved it, in one command.
    pub async fn record_rollout_state(&self, record: RolloutRecord, event: RolloutEvent) -> Result<(), StoreError> {
        write!(
            self,
            |c| sqlite::rollouts::record_state(c, &record, &event),
            postgres::rollouts::record_state(c, &record, &event)
        )
    }

    /// The stored state of the canary `entry` (blocking: a read connection).
    pub fn rollout_state(&self, entry: &str) -> Result<Option<RolloutRecord>, StoreError> {
        self.read_blocking(
            |c| sqlite::rollouts::state_of(c, entry),
            async move |c| postgres::rollouts::state_of(c, entry).await,
        )
    }

    /// The `limit` most recent rollout events, newest first.
    pub async fn rollout_events(&self, limit: usize) -> Result<Vec<RolloutEvent>, StoreError> {
        read!(self, |c| sqlite::rollouts::recent_events(c, limit), postgres::rollouts::recent_events(c, limit))
    }

    // ---------------------------------------------------------------- retention

    /// Deletes up to `limit` rows of `table` older than `before_ms` (ms
    /// since the epoch), oldest first, and says how many: one batch of a
    /// retention pass (see `sqlite::retention::prune`). Never a key without
    /// a final answer nor an undelivered event; on a shared database rows
    /// another replica is pruning are skipped, never waited for.
    pub async fn prune(&self, table: Retained, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(db) => db.write(move |c| sqlite::retention::prune(c, table, before_ms, limit)).await,
            Backend::Postgres(db) => postgres::retention::prune(&db.client().await?, table, before_ms, limit).await,
        }
    }

    /// The time of the newest row of `table` beyond its `keep` newest:
    /// rows up to that time are over the table's row cap. `None` when it
    /// holds no more than `keep`, or has no cap (see
    /// `sqlite::retention::time_beyond_newest`).
    pub async fn time_beyond_newest(&self, table: Retained, keep: u64) -> Result<Option<i64>, StoreError> {
        read!(
            self,
            |c| sqlite::retention::time_beyond_newest(c, table, keep),
            postgres::retention::time_beyond_newest(c, table, keep)
        )
    }

    // ---------------------------------------------------------------- experiments

    /// Adds each delta to its A/B figures row, in one command (see
    /// `sqlite::experiments::add_arm_figures`): rows only ever grow, so figures
    /// written by several processes add up.
    pub async fn add_arm_figures(&self, deltas: Vec<(ArmKey, ArmFigures)>) -> Result<(), StoreError> {
        write!(
            self,
            |c| sqlite::experiments::add_arm_figures(c, &deltas),
            postgres::experiments::add_arm_figures(c, &deltas)
        )
    }

    /// Every A/B figures row with its latency buckets, in key order.
    pub async fn arm_rows(&self) -> Result<Vec<ArmRow>, StoreError> {
        read!(self, |c| sqlite::experiments::arm_rows(c), postgres::experiments::arm_rows(c))
    }
}

//! The store boundary: every SQL statement of the host lives under this
//! folder, and the rest of the host calls typed operations on [`Store`].
//!
//! - [`writer`] (private): one thread owns the write connection and commits
//!   every waiting command in one transaction (group commit, a SAVEPOINT per
//!   command); callers await their command's durable answer;
//! - [`readers`] (private): read connections used inline by the reading
//!   thread (WAL readers never wait for the writer);
//! - [`catalog`]: customers, products, warehouses, stock and carts;
//! - [`orders`]: orders, reservations, payments, idempotency keys;
//! - [`outbox`]: the order's events and sink positions;
//! - [`ledger`]: the sandbox payment gateway's ledger;
//! - [`shadows`]: shadow runs of candidate rule modules;
//! - [`experiments`]: A/B figures per arm, only ever added to;
//! - `schema` (private): versioned migrations; [`error`]: what callers match on.
//!
//! The store is SQLite today; its operations are what a second back-end
//! implements, so no caller ever sees a connection.

pub mod catalog;
pub mod error;
pub mod experiments;
pub mod ledger;
pub mod orders;
pub mod outbox;
mod readers;
mod schema;
pub mod shadows;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

pub use error::StoreError;

use catalog::{CartItem, Customer, Product, StockLevel, StockedWarehouse, Warehouse};
use experiments::{ArmFigures, ArmKey, ArmRow};
use ledger::{Captured, LedgerCharge};
use orders::{AwaitingReview, KeyRecord, NewOrder, OpenIntent, ReserveOutcome, Settlement, StoredOrder, Verdict};
use outbox::{DueEvent, SinkPosition};
use readers::Readers;
use shadows::{ShadowRun, ShadowSummary};
use writer::Writer;

use crate::rules::types::CartLine;

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

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` for a store opened read-only (tools beside a running service).
    writer: Option<Writer>,
    readers: Readers,
    path: PathBuf,
    /// Held by an outbox delivery pass, so that two passes in this process
    /// (the dispatcher and `Engine::drain`) never deliver the same events.
    delivery: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.inner.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`, migrates it and
    /// starts its writer thread.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(options.busy_timeout)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", options.durability.pragma())?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Each store command runs in a savepoint, whose undo pages SQLite
        // keeps in a statement journal: in memory, not in a temp file.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // Every statement is `prepare_cached`; rusqlite keeps 16 by default,
        // so the hot path would parse and plan its SQL again on every call.
        conn.set_prepared_statement_cache_capacity(readers::STATEMENT_CACHE_CAPACITY);
        schema::migrate(&mut conn)?;
        let writer =
            Writer::start(conn).map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                writer: Some(writer),
                readers: Readers::new(path, options.busy_timeout),
                path: path.to_owned(),
                delivery: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Opens the database at `path` for reading only, beside a service that
    /// may be running on it (tools such as `smartmart rules replay`): no
    /// writer thread, no migration, every connection `SQLITE_OPEN_READ_ONLY`,
    /// so nothing of the database is ever written. A missing file, or a
    /// schema version other than the one this binary knows, is refused.
    pub fn open_read_only(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        if !path.is_file() {
            return Err(StoreError::NotFound(format!(
                "no database at {} (is this the service's data dir?)",
                path.display()
            )));
        }
        let readers = Readers::new(path, options.busy_timeout);
        readers.read(schema::check_current)?;
        Ok(Store {
            inner: Arc::new(Inner {
                writer: None,
                readers,
                path: path.to_owned(),
                delivery: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.inner.readers.read(f)
    }

    async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        match &self.inner.writer {
            Some(writer) => writer.write(op).await,
            None => Err(StoreError::Unavailable(format!("{} was opened read-only", self.inner.path.display()))),
        }
    }

    /// Whether the database answers a trivial query (readiness).
    pub async fn ping(&self) -> bool {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?)).is_ok()
    }

    // ---------------------------------------------------------------- catalog

    /// Whether any customer exists (an empty store gets the demo data set).
    pub async fn has_customers(&self) -> Result<bool, StoreError> {
        self.read(|c| Ok(c.prepare_cached("SELECT 1 FROM customers LIMIT 1")?.exists([])?))
    }

    pub async fn customer(&self, id: &str) -> Result<Option<Customer>, StoreError> {
        self.read(|c| catalog::get_customer(c, id))
    }

    pub async fn upsert_customer(&self, customer: Customer) -> Result<(), StoreError> {
        self.write(move |c| catalog::upsert_customer(c, &customer)).await
    }

    pub async fn product(&self, sku: &str) -> Result<Option<Product>, StoreError> {
        self.read(|c| catalog::get_product(c, sku))
    }

    pub async fn upsert_product(&self, product: Product) -> Result<(), StoreError> {
        self.write(move |c| catalog::upsert_product(c, &product)).await
    }

    pub async fn upsert_warehouse(&self, warehouse: Warehouse) -> Result<(), StoreError> {
        self.write(move |c| catalog::upsert_warehouse(c, &warehouse)).await
    }

    /// Sets the units on hand (see [`catalog::set_stock`]).
    pub async fn set_stock(&self, warehouse_id: &str, sku: &str, on_hand: u64) -> Result<StockLevel, StoreError> {
        let (warehouse_id, sku) = (warehouse_id.to_string(), sku.to_string());
        self.write(move |c| catalog::set_stock(c, &warehouse_id, &sku, on_hand)).await
    }

    /// Writes a whole catalog in one command: all of it or none.
    pub async fn load_catalog(
        &self,
        customers: Vec<Customer>,
        products: Vec<Product>,
        warehouses: Vec<Warehouse>,
        stock: Vec<(String, String, u64)>,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            customers.iter().try_for_each(|customer| catalog::upsert_customer(c, customer))?;
            products.iter().try_for_each(|product| catalog::upsert_product(c, product))?;
            warehouses.iter().try_for_each(|warehouse| catalog::upsert_warehouse(c, warehouse))?;
            for (warehouse_id, sku, on_hand) in &stock {
                catalog::set_stock(c, warehouse_id, sku, *on_hand)?;
            }
            Ok(())
        })
        .await
    }

    pub async fn stock_of_sku(&self, sku: &str) -> Result<Vec<StockLevel>, StoreError> {
        self.read(|c| catalog::stock_of_sku(c, sku))
    }

    /// Warehouses holding any of `skus`, with the availability of each.
    pub async fn stocked_warehouses(&self, skus: &[&str]) -> Result<Vec<StockedWarehouse>, StoreError> {
        self.read(|c| catalog::stocked_warehouses(c, skus))
    }

    /// Replaces a customer's cart; `NotFound` names the first unknown sku.
    pub async fn replace_cart(&self, customer_id: &str, items: Vec<CartItem>) -> Result<Vec<CartLine>, StoreError> {
        let customer_id = customer_id.to_string();
        self.write(move |c| catalog::replace_cart(c, &customer_id, &items)).await
    }

    /// The cart priced now, and the skus no longer in the catalog.
    pub async fn cart(&self, customer_id: &str) -> Result<(Vec<CartLine>, Vec<String>), StoreError> {
        self.read(|c| catalog::cart_lines(c, customer_id))
    }

    // ---------------------------------------------------------------- orders

    /// Creates the order PENDING, claims its key, holds its stock (see [`orders::reserve`]).
    pub async fn reserve(&self, order: NewOrder) -> Result<ReserveOutcome, StoreError> {
        self.write(move |c| orders::reserve(c, &order)).await
    }

    /// Records the payment intent with the draft invoice and the payment
    /// token, kept until the order settles (see [`orders::record_intent`]).
    pub async fn record_intent(
        &self,
        order_id: &str,
        draft_invoice: String,
        idempotency_key: &str,
        gateway: &str,
        amount_cents: u64,
        token: &str,
    ) -> Result<(), StoreError> {
        let (order_id, key, gateway, token) =
            (order_id.to_string(), idempotency_key.to_string(), gateway.to_string(), token.to_string());
        self.write(move |c| orders::record_intent(c, &order_id, &draft_invoice, &key, &gateway, amount_cents, &token))
            .await
    }

    pub async fn settle(&self, settlement: Settlement) -> Result<(), StoreError> {
        self.write(move |c| orders::settle(c, &settlement)).await
    }

    /// Undoes a PENDING order (see [`orders::cancel`]); whether it was pending.
    pub async fn cancel(&self, order_id: &str, reason: &str) -> Result<bool, StoreError> {
        let (order_id, reason) = (order_id.to_string(), reason.to_string());
        self.write(move |c| orders::cancel(c, &order_id, &reason)).await
    }

    /// Removes a PENDING order refused for its input (see [`orders::discard`]).
    pub async fn discard(&self, order_id: &str) -> Result<bool, StoreError> {
        let order_id = order_id.to_string();
        self.write(move |c| orders::discard(c, &order_id)).await
    }

    pub async fn order(&self, order_id: &str) -> Result<Option<StoredOrder>, StoreError> {
        self.read(|c| orders::get_order(c, order_id))
    }

    /// What an idempotency key holds, if it was used.
    pub async fn key_record(&self, channel: &str, key: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.read(|c| orders::key_record(c, channel, key))
    }

    /// PENDING orders last touched before `updated_before` (RFC 3339).
    pub async fn pending_orders(&self, updated_before: &str) -> Result<(Vec<String>, Vec<OpenIntent>), StoreError> {
        self.read(|c| orders::pending_orders(c, updated_before))
    }

    pub async fn awaiting_verdict(&self, limit: usize) -> Result<Vec<AwaitingReview>, StoreError> {
        self.read(|c| orders::awaiting_verdict(c, limit))
    }

    pub async fn record_verdicts(&self, verdicts: Vec<Verdict>) -> Result<(), StoreError> {
        self.write(move |c| orders::record_verdicts(c, &verdicts)).await
    }

    /// The last `limit` settled orders (CONFIRMED or PAYMENT_FAILED, newest
    /// first) with their invoices and fraud reviews: what `rules replay`
    /// reconstructs rule inputs from. Reads inline (tools call it without a
    /// runtime).
    pub fn recent_settled_orders(&self, limit: usize) -> Result<Vec<StoredOrder>, StoreError> {
        self.read(|c| orders::recent_settled(c, limit))
    }

    pub async fn escalations(&self, limit: usize) -> Result<Vec<StoredOrder>, StoreError> {
        self.read(|c| orders::escalations(c, limit))
    }

    // ---------------------------------------------------------------- outbox

    /// Taken for one outbox delivery pass (see `events::deliver_due`).
    pub async fn delivery_pass(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.delivery.lock().await
    }

    pub async fn due_events(&self, now_ms: i64, limit: usize) -> Result<Vec<DueEvent>, StoreError> {
        self.read(|c| outbox::due_events(c, now_ms, limit))
    }

    pub async fn mark_delivered(&self, seqs: Vec<i64>, position: Option<SinkPosition>) -> Result<(), StoreError> {
        self.write(move |c| outbox::mark_delivered(c, &seqs, position.as_ref())).await
    }

    pub async fn mark_retry(&self, seqs: Vec<i64>, error: String, next_attempt_ms: i64) -> Result<(), StoreError> {
        self.write(move |c| outbox::mark_retry(c, &seqs, &error, next_attempt_ms)).await
    }

    pub async fn sink_positions(&self) -> Result<Vec<SinkPosition>, StoreError> {
        self.read(outbox::sink_positions)
    }

    /// Events not yet delivered, and the age in ms of the oldest of them.
    pub async fn outbox_backlog(&self) -> Result<(u64, i64), StoreError> {
        self.read(outbox::outbox_backlog)
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
        self.write(move |c| ledger::capture(c, &key, &order_id, amount_cents, &currency)).await
    }

    pub async fn ledger_lookup(&self, key: &str) -> Result<Option<LedgerCharge>, StoreError> {
        self.read(|c| ledger::lookup(c, key))
    }

    /// Every capture of the sandbox ledger, oldest first (tests, inspection).
    pub fn ledger_charges(&self) -> Result<Vec<LedgerCharge>, StoreError> {
        self.read(ledger::all)
    }

    // ---------------------------------------------------------------- shadows

    pub async fn record_shadow_runs(&self, runs: Vec<ShadowRun>) -> Result<(), StoreError> {
        self.write(move |c| shadows::record_shadow_runs(c, &runs)).await
    }

    pub async fn shadow_summaries(&self) -> Result<Vec<ShadowSummary>, StoreError> {
        self.read(shadows::shadow_summaries)
    }

    // ---------------------------------------------------------------- experiments

    /// Adds each delta to its A/B figures row, in one command (see
    /// [`experiments::add_arm_figures`]): rows only ever grow, so figures
    /// written by several processes add up.
    pub async fn add_arm_figures(&self, deltas: Vec<(ArmKey, ArmFigures)>) -> Result<(), StoreError> {
        self.write(move |c| experiments::add_arm_figures(c, &deltas)).await
    }

    /// Every A/B figures row with its latency buckets, in key order.
    pub async fn arm_rows(&self) -> Result<Vec<ArmRow>, StoreError> {
        self.read(experiments::arm_rows)
    }
}

/// The current time as RFC 3339 UTC with millisecond precision.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(now.millisecond() as u32 * 1_000_000).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

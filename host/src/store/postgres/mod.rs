//! The PostgreSQL back-end of the store: the same operations as the SQLite
//! one (`store::sqlite`, its sibling), for several replicas of the service
//! on one database. Private to `store`: the rest of the host reaches it
//! only through `Store`, with the records of the neutral modules
//! (`store::orders`, `store::catalog`, …).
//!
//! Where the SQLite back-end relies on being the database's only writer
//! (one process, one writer thread), this one relies on the database:
//!
//! - every write operation is one transaction (PostgreSQL groups the
//!   commits of concurrent transactions itself), retried from the start
//!   when PostgreSQL aborts it for a deadlock or a serialization failure;
//! - stock is held by a conditional update (`… WHERE on_hand - reserved >= $q`),
//!   rows locked in one order (by warehouse, then sku) by every operation;
//! - an idempotency key is claimed by an insert on its primary key: two
//!   replicas racing on one key see one order;
//! - work any replica may pick up (due events, fraud checks, interrupted
//!   orders) is claimed with `FOR UPDATE SKIP LOCKED` and a lease, so each
//!   item is taken by one replica at a time and by another when its lease
//!   runs out (its replica died).
//!
//! The driver is `tokio-postgres` with the `deadpool-postgres` pool: async
//! on the service's runtime, statements prepared once per connection.
//!
//! Round trips are what a replica's order costs on a database over the
//! network, so the four phases of an order's answer path are one round
//! trip each, in its own implicit transaction: the order's read
//! (`catalog::order_snapshot`, one query), `orders::reserve`, the sandbox
//! gateway's `ledger::capture` and `orders::settle` are each one call of a
//! server-side function (schema version 8) that does the whole operation,
//! all or nothing, its plans kept by the server. Each connection prepares
//! the four calls when it opens ([`prepare_order_path`]), so the server
//! only binds and runs them: an unnamed statement would be parsed,
//! analysed and planned again for every order. A write's transaction
//! begins with its first statement ([`tx::Tx`]), so such a call costs no
//! `BEGIN` and `COMMIT` of its own. Every connection counts its round trips
//! and transactions on the wire ([`wire`], `Store::wire_totals`), in the
//! clear or inside TLS, which the URL's `sslmode` and `sslrootcert` ask
//! for as they do of libpq ([`tls`]).

pub(super) mod catalog;
mod connect;
mod conninfo;
pub(super) mod experiments;
pub(super) mod ledger;
pub(super) mod orders;
pub(super) mod outbox;
pub(super) mod retention;
pub(super) mod rollouts;
pub(super) mod schema;
pub(super) mod shadows;
mod tls;
pub(super) mod tx;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{ClientWrapper, Hook, HookError, Manager, ManagerConfig, Object, Pool, RecyclingMethod};

use super::StoreError;
use super::stats::{WireStats, WireTotals};
pub(super) use tx::{Db, OrderCall};

/// The calls of an order's answer path, prepared on every connection.
const ORDER_PATH: [&OrderCall; 4] = [&catalog::ORDER_SNAPSHOT, &orders::RESERVE, &ledger::CAPTURE, &orders::SETTLE];

/// Prepares the order path's calls on a connection (each a round trip,
/// once per connection), so that [`Db::call_prepared`] finds them.
async fn prepare_order_path(client: &ClientWrapper) -> Result<(), tokio_postgres::Error> {
    for call in ORDER_PATH {
        client.prepare_typed_cached(call.sql, call.types).await?;
    }
    Ok(())
}

/// Times a transaction is run again after a deadlock or serialization failure.
pub(super) const MAX_RETRIES: u32 = 8;

/// How the PostgreSQL store is reached.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Connections kept by this process.
    pub pool_size: usize,
    /// How long a caller waits for a free connection, and a new connection
    /// to be made, before the store reports itself unavailable.
    pub connect_timeout: Duration,
    /// Opened for reading only (tools beside a running service).
    pub read_only: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions { pool_size: 16, connect_timeout: Duration::from_secs(5), read_only: false }
    }
}

/// The domain's text enums as PostgreSQL `text` columns: written as their
/// text, read back through `FromStr`, a word the service does not know
/// being an error (a corrupt row), never a default.
macro_rules! text_columns {
    ($($name:ty),+) => {$(
        impl tokio_postgres::types::ToSql for $name {
            fn to_sql(
                &self,
                ty: &tokio_postgres::types::Type,
                out: &mut tokio_postgres::types::private::BytesMut,
            ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
                self.as_str().to_sql(ty, out)
            }

            fn accepts(ty: &tokio_postgres::types::Type) -> bool {
                <&str as tokio_postgres::types::ToSql>::accepts(ty)
            }

            tokio_postgres::types::to_sql_checked!();
        }

        impl<'a> tokio_postgres::types::FromSql<'a> for $name {
            fn from_sql(
                ty: &tokio_postgres::types::Type,
                raw: &'a [u8],
            ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                Ok(<&str as tokio_postgres::types::FromSql>::from_sql(ty, raw)?.parse::<$name>()?)
            }

            fn accepts(ty: &tokio_postgres::types::Type) -> bool {
                <&str as tokio_postgres::types::FromSql>::accepts(ty)
            }
        }
    )+};
}

text_columns!(crate::domain::status::Slot, crate::domain::status::CanaryState, crate::domain::status::RolloutEventKind);

pub(super) struct Postgres {
    pool: Pool,
    url: String,
    /// The URL without its password, for messages.
    pub(super) display: String,
    /// What the pool's connections said to the server.
    wire: Arc<WireStats>,
}

/// The URL with any password replaced, safe for logs and errors.
fn redacted(url: &str, config: &tokio_postgres::Config) -> String {
    match config.get_password() {
        Some(password) => url.replace(&String::from_utf8_lossy(password).to_string(), "***"),
        None => url.to_string(),
    }
}

impl Postgres {
    /// Connects, and migrates the database unless `read_only` (then the
    /// schema must be exactly this binary's).
    pub(super) async fn connect(url: &str, options: &PostgresOptions) -> Result<Postgres, StoreError> {
        let invalid = |e: String| StoreError::Unavailable(format!("invalid PostgreSQL URL: {e}"));
        // The driver refuses verify-ca, verify-full and sslrootcert: they are the store's to read.
        let (driver_url, tls_params) = conninfo::take_tls_params(url).map_err(invalid)?;
        let mut config: tokio_postgres::Config =
            driver_url.parse().map_err(|e: tokio_postgres::Error| invalid(e.to_string()))?;
        let display = redacted(url, &config);
        config.ssl_mode(tls_params.mode.driver_mode());
        let tls =
            tls::Tls::new(&tls_params).map_err(|e| StoreError::Unavailable(format!("PostgreSQL at {display}: {e}")))?;
        config.connect_timeout(options.connect_timeout);
        if options.read_only {
            let extra = config.get_options().map(|o| format!("{o} ")).unwrap_or_default();
            config.options(format!("{extra}-c default_transaction_read_only=on"));
        }
        let wire = Arc::new(WireStats::default());
        let connect = connect::CountingConnect { stats: wire.clone(), tls };
        let manager = Manager::from_connect(config, connect, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        // The functions exist once the schema is migrated (or checked):
        // the connection that does it prepares them after, the others as
        // they open.
        let schema_ready = Arc::new(AtomicBool::new(false));
        let prepare = {
            let schema_ready = schema_ready.clone();
            Hook::async_fn(move |client: &mut ClientWrapper, _| {
                let schema_ready = schema_ready.load(Ordering::Acquire);
                Box::pin(async move {
                    if schema_ready {
                        prepare_order_path(client).await.map_err(HookError::Backend)?;
                    }
                    Ok(())
                })
            })
        };
        let pool = Pool::builder(manager)
            .post_create(prepare)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot build the connection pool: {e}")))?;
        let store = Postgres { pool, url: url.to_string(), display, wire };
        let mut client = store.client().await?;
        if options.read_only {
            schema::check_current(&client).await?;
        } else {
            schema::migrate(&mut client).await?;
        }
        schema_ready.store(true, Ordering::Release);
        prepare_order_path(&client).await?;
        Ok(store)
    }

    /// The URL it was opened with (password included: never log it).
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// A pooled connection.
    pub(super) async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            let why = match crate::tls::certificate_refused(&e) {
                Some(refused) => format!("TLS certificate refused: {refused}"),
                None => with_causes(&e),
            };
            StoreError::Unavailable(format!("PostgreSQL at {}: {why}", self.display))
        })
    }

    /// Round trips and transactions so far, every connection of the pool together.
    pub(super) fn wire_totals(&self) -> WireTotals {
        self.wire.totals()
    }
}

/// `e` and what caused it, for a message: "error communicating with the
/// server: cannot connect to 127.0.0.1:5432: Connection refused" rather
/// than its first words only.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// What a transaction's body decided.
pub(super) enum Step<T> {
    /// Keep what it wrote.
    Commit(T),
    /// Roll back what it wrote (e.g. a shortfall after some stock was held).
    Undo(T),
}

/// Runs `$body` — an expression using the transaction `$tx` (a [`tx::Tx`],
/// begun by its first statement) that evaluates to `Result<Step<T>,
/// StoreError>` — on a pooled connection; the whole transaction runs again
/// when PostgreSQL aborted it for a deadlock or a serialization failure.
macro_rules! transact_steps {
    ($pg:expr, |$tx:ident| $body:expr) => {{
        let mut attempt = 0u32;
        loop {
            let $tx = $crate::store::postgres::tx::Tx::new($pg.client().await?);
            let outcome: Result<$crate::store::postgres::Step<_>, StoreError> = async { $body }.await;
            let outcome = match outcome {
                Ok($crate::store::postgres::Step::Commit(value)) => {
                    $tx.commit().await.map(|()| value).map_err(StoreError::from)
                }
                Ok($crate::store::postgres::Step::Undo(value)) => {
                    $tx.rollback().await.map(|()| value).map_err(StoreError::from)
                }
                Err(e) => {
                    // The body's error is the one to report; a failing
                    // ROLLBACK means the connection is gone, and with it
                    // the transaction.
                    let _ = $tx.rollback().await;
                    Err(e)
                }
            };
            match outcome {
                Err(e) if e.is_transient() && attempt < $crate::store::postgres::MAX_RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "PostgreSQL transaction aborted; running it again");
                }
                other => break other,
            }
        }
    }};
}

/// [`transact_steps!`] for a body that always commits (`Result<T, StoreError>`).
macro_rules! transact {
    ($pg:expr, |$tx:ident| $body:expr) => {
        $crate::store::postgres::transact_steps!($pg, |$tx| ($body).map($crate::store::postgres::Step::Commit))
    };
}

pub(super) use {transact, transact_steps};

/// Converts a count or amount for a `BIGINT` column.
pub(super) fn bigint(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Conflict(format!("{what} does not fit in 63 bits")))
}

/// Whether the database answers a trivial query (readiness).
pub(super) async fn ping(db: &impl Db) -> Result<i64, StoreError> {
    Ok(db.query_one("SELECT 1::bigint", &[]).await?.get::<_, i64>(0))
}

/// The local server the tests run on (`SMARTMART_TEST_DATABASE_URL`, as
/// the integration tests) and a connection of the test's own to it, with a
/// fresh name for a schema the test makes and drops (`prefix` and random
/// hex).
#[cfg(test)]
pub(super) async fn test_server(prefix: &str) -> (tokio_postgres::Client, String, String) {
    let url =
        std::env::var("SMARTMART_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("the PostgreSQL server at {url} does not answer: {e}"));
    tokio::spawn(connection);
    let schema = format!("{prefix}_{}", hex::encode(rand::random::<[u8; 6]>()));
    (client, url, schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the local server (`SMARTMART_TEST_DATABASE_URL`, as the
    /// integration tests), in a schema of the test's own: every connection
    /// of the pool has the order path's calls prepared — the one that
    /// migrated the schema (opened before the functions existed) and one
    /// opened after — and the order's read is inlined into its call, no
    /// function scan left in its plan.
    #[tokio::test]
    async fn every_connection_prepares_the_order_path_and_the_read_is_inlined() {
        let (admin, base, schema) = test_server("t_prep").await;
        admin.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");

        let result = async {
            let store = Postgres::connect(&url, &PostgresOptions::default()).await?;
            // Two at once: the migration's connection and a new one.
            let (first, second) = (store.client().await?, store.client().await?);
            let mut prepared = Vec::new();
            for client in [&first, &second] {
                let statements: Vec<String> = client
                    .query("SELECT statement FROM pg_prepared_statements", &[])
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                prepared.push(ORDER_PATH.iter().filter(|call| statements.iter().any(|s| s == call.sql)).count());
            }
            let plan: Vec<String> = first
                .query(&format!("EXPLAIN {}", catalog::ORDER_SNAPSHOT.sql), &[&"C-1", &None::<&str>, &None::<&str>])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            Ok::<_, StoreError>((prepared, plan))
        }
        .await;
        admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
        let (prepared, plan) = result.unwrap();
        assert_eq!(prepared, [ORDER_PATH.len(), ORDER_PATH.len()], "the order path's calls prepared per connection");
        assert!(
            plan.iter().all(|line| !line.contains("Function Scan")),
            "the read is not inlined:\n{}",
            plan.join("\n")
        );
        assert!(
            plan.iter().any(|line| line.contains("customers")),
            "the read's own tables in its plan:\n{}",
            plan.join("\n")
        );
    }
}

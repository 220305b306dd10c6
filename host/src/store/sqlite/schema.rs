//! Versioned migrations of the SQLite back-end, tracked in `PRAGMA
//! user_version`. Version N here makes the same tables, columns and indexes
//! as version N of the PostgreSQL back-end (`store::postgres::schema`); the
//! tests of `store::migrations` hold the two lists to that. Append only: a
//! released migration is never edited.

use rusqlite::Connection;

use super::super::StoreError;

pub(in crate::store) const MIGRATIONS: &[&str] = &[
    // 1: catalog, carts, orders and their saga state, outbox.
    r#"
    CREATE TABLE customers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        email TEXT NOT NULL,
        phone TEXT NOT NULL,
        tier TEXT NOT NULL CHECK (tier IN ('GOLD', 'SILVER', 'STANDARD')),
        status TEXT NOT NULL CHECK (status IN ('ACTIVE', 'BLOCKED')),
        lat REAL NOT NULL,
        lon REAL NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE products (
        sku TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        category TEXT NOT NULL,
        unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents >= 0),
        updated_at TEXT NOT NULL
    );
    CREATE TABLE warehouses (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        lat REAL NOT NULL,
        lon REAL NOT NULL,
        updated_at TEXT NOT NULL
    );
    -- available = on_hand - reserved; the CHECKs make a negative figure
    -- impossible whatever a caller does.
    CREATE TABLE stock (
        warehouse_id TEXT NOT NULL REFERENCES warehouses (id),
        sku TEXT NOT NULL REFERENCES products (sku),
        on_hand INTEGER NOT NULL CHECK (on_hand >= 0),
        reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= on_hand),
        PRIMARY KEY (warehouse_id, sku)
    ) WITHOUT ROWID;
    CREATE INDEX stock_by_sku ON stock (sku);
    CREATE TABLE carts (
        customer_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        sku TEXT NOT NULL,
        quantity INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 1000000),
        PRIMARY KEY (customer_id, sku)
    );
    CREATE TABLE orders (
        id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'PAYMENT_FAILED', 'CANCELLED')),
        total_cents INTEGER NOT NULL,
        currency TEXT NOT NULL,
        invoice TEXT,
        fraud_review TEXT,
        fraud_action TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX orders_by_status ON orders (status);
    CREATE INDEX orders_escalated ON orders (fraud_action, created_at);
    CREATE TABLE reservations (
        order_id TEXT NOT NULL REFERENCES orders (id),
        warehouse_id TEXT NOT NULL,
        sku TEXT NOT NULL,
        quantity INTEGER NOT NULL CHECK (quantity > 0),
        state TEXT NOT NULL CHECK (state IN ('HELD', 'COMMITTED', 'RELEASED')),
        PRIMARY KEY (order_id, warehouse_id, sku)
    );
    CREATE INDEX reservations_held ON reservations (state) WHERE state = 'HELD';
    -- Written before the gateway is called: a crash between charge and
    -- commit leaves an INTENT that start-up reconciles with the gateway.
    CREATE TABLE payments (
        order_id TEXT PRIMARY KEY REFERENCES orders (id),
        idempotency_key TEXT NOT NULL UNIQUE,
        gateway TEXT NOT NULL,
        amount_cents INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('INTENT', 'CAPTURED', 'FAILED')),
        transaction_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        failure TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE idempotency (
        channel TEXT NOT NULL,
        key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        order_id TEXT,
        status_code INTEGER,
        body TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (channel, key)
    );
    -- Events leave only through here. The fraud event waits for the
    -- verdict (AWAITING_VERDICT) before it is READY to deliver.
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        order_id TEXT NOT NULL,
        type TEXT NOT NULL CHECK (type IN ('audit', 'analytics', 'fraud')),
        envelope TEXT,
        state TEXT NOT NULL CHECK (state IN ('AWAITING_VERDICT', 'READY', 'DELIVERED')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_ms INTEGER NOT NULL,
        delivered_ms INTEGER
    );
    CREATE INDEX outbox_pending ON outbox (state, next_attempt_ms) WHERE state != 'DELIVERED';
    "#,
    // 2: shadow runs of candidate rule modules.
    r#"
    CREATE TABLE shadow_runs (
        order_id TEXT NOT NULL,
        slot TEXT NOT NULL,
        active_module TEXT NOT NULL,
        active_digest TEXT NOT NULL,
        candidate_module TEXT NOT NULL,
        candidate_version TEXT NOT NULL,
        candidate_digest TEXT NOT NULL,
        active TEXT NOT NULL,
        candidate TEXT NOT NULL,
        money_difference_cents INTEGER NOT NULL,
        differs INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (order_id, slot, active_digest, candidate_digest)
    );
    "#,
    // 3: the outbox rows of one order (the fraud verdict readies its
    // event): without it every verdict scans the pending events.
    r#"
    CREATE INDEX outbox_by_order ON outbox (order_id);
    "#,
    // 4: the idempotency key is claimed when the order is created (its
    // answer filled in at settlement, found by order); the sandbox gateway's
    // ledger moves into this database (one writer, one commit); sinks'
    // positions are recorded with the delivery marks (exactly once in files).
    r#"
    CREATE INDEX idempotency_by_order ON idempotency (order_id);
    CREATE TABLE sandbox_charges (
        idempotency_key TEXT PRIMARY KEY,
        transaction_id TEXT NOT NULL UNIQUE,
        order_id TEXT NOT NULL,
        amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),
        currency TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    -- The customer's payment token, kept only while the payment is in
    -- flight (INTENT) so that recovery can re-drive it with the order's
    -- own gateway key; erased when the order settles or is undone.
    ALTER TABLE payments ADD COLUMN token TEXT;
    CREATE TABLE sink_positions (
        stream TEXT PRIMARY KEY,
        offset INTEGER NOT NULL CHECK (offset >= 0)
    );
    "#,
    // 5: rollouts (canary states, the history of reloads, refusals,
    // rollbacks and promotions), and shadow runs named by the candidate's
    // rule name, version and configuration, with its failures counted apart.
    // Times in integer ms.
    r#"
    CREATE TABLE rollout_states (
        entry TEXT PRIMARY KEY,
        slot TEXT NOT NULL,
        stable_digest TEXT NOT NULL,
        stable_config_hash TEXT NOT NULL,
        canary_digest TEXT NOT NULL,
        canary_config_hash TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('running', 'rolled_back', 'promoted')),
        reason TEXT,
        calls INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        at_ms INTEGER NOT NULL
    );
    CREATE TABLE rollout_events (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('reload', 'refused', 'rollback', 'promote')),
        entry TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX rollout_events_by_time ON rollout_events (at_ms);
    ALTER TABLE shadow_runs ADD COLUMN candidate_name TEXT NOT NULL DEFAULT '';
    ALTER TABLE shadow_runs ADD COLUMN candidate_config_hash TEXT NOT NULL DEFAULT '';
    ALTER TABLE shadow_runs ADD COLUMN candidate_config TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE shadow_runs ADD COLUMN failed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE shadow_runs ADD COLUMN created_ms INTEGER NOT NULL DEFAULT 0;
    "#,
    // 6: A/B figures, one row per (experiment, variant, module digest,
    // config hash) of running sums, and its rule-latency histogram; only
    // ever added to (see store::experiments). Portable types: BIGINT and
    // DOUBLE PRECISION mean the same in SQLite and PostgreSQL.
    r#"
    CREATE TABLE experiment_arms (
        experiment TEXT NOT NULL,
        variant TEXT NOT NULL,
        module_digest TEXT NOT NULL,
        config_hash TEXT NOT NULL,
        slot TEXT NOT NULL,
        module TEXT NOT NULL,
        version TEXT NOT NULL,
        orders BIGINT NOT NULL DEFAULT 0,
        fired_orders BIGINT NOT NULL DEFAULT 0,
        discount_cents BIGINT NOT NULL DEFAULT 0,
        confirmed_orders BIGINT NOT NULL DEFAULT 0,
        revenue_cents BIGINT NOT NULL DEFAULT 0,
        revenue_squares DOUBLE PRECISION NOT NULL DEFAULT 0,
        payment_failures BIGINT NOT NULL DEFAULT 0,
        rule_errors BIGINT NOT NULL DEFAULT 0,
        calls BIGINT NOT NULL DEFAULT 0,
        latency_us_sum DOUBLE PRECISION NOT NULL DEFAULT 0,
        updated_at_ms BIGINT NOT NULL,
        PRIMARY KEY (experiment, variant, module_digest, config_hash)
    );
    CREATE TABLE experiment_latency (
        experiment TEXT NOT NULL,
        variant TEXT NOT NULL,
        module_digest TEXT NOT NULL,
        config_hash TEXT NOT NULL,
        le_us BIGINT NOT NULL,
        calls BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (experiment, variant, module_digest, config_hash, le_us)
    );
    "#,
    // 7: an unknown payment outcome is never a failure. A payment whose
    // outcome the gateway had not given by the time the answer was due is
    // answered PAYMENT_PENDING and handed to the reconciler: `resolve_after_ms`
    // (NULL = not handed over) is when the reconciler looks at it again. The
    // partial index holds only the payments handed over and still open, so
    // the reconciler finds the due ones without reading every order. The
    // sandbox ledger's cancelled keys: a cancelled key is never captured.
    r#"
    ALTER TABLE payments ADD COLUMN resolve_after_ms INTEGER;
    CREATE INDEX payments_to_resolve ON payments (resolve_after_ms)
        WHERE status = 'INTENT' AND resolve_after_ms IS NOT NULL;
    CREATE TABLE sandbox_cancelled (
        idempotency_key TEXT PRIMARY KEY,
        cancelled_at TEXT NOT NULL
    );
    "#,
    // 8: nothing to make here. PostgreSQL's version 8 makes functions (an
    // order's read, reserve, capture and settlement, each one round trip
    // to the server); SQLite runs its commands in the process, where a
    // round trip costs nothing, and has no functions of that kind. The
    // statement only keeps the version numbers one for one.
    r#"
    SELECT 1;
    "#,
    // 9: indexes an order's rows do not churn through. `reservations_held`
    // served no query (an order's holds are read by its primary key) and
    // cost an index write at each hold and settlement; on PostgreSQL the
    // per-order functions' cached plans even chose it, and a bitmap scan of
    // it read every dead entry left by settled orders (~7,400 per call,
    // before vacuum). The outbox's pending events are indexed by `seq`, per
    // state, so that a claim reads them in order with an index scan (which
    // marks dead entries on PostgreSQL, where a bitmap scan never does),
    // and a lease update (`next_attempt_ms`) changes no indexed column.
    r#"
    DROP INDEX reservations_held;
    DROP INDEX outbox_pending;
    CREATE INDEX outbox_ready ON outbox (seq) WHERE state = 'READY';
    CREATE INDEX outbox_awaiting_verdict ON outbox (seq) WHERE state = 'AWAITING_VERDICT';
    "#,
    // 10: retention (`store::retention`). Each pruned table is read oldest
    // first through an index, so that a prune never scans a table that
    // grows with every order. None of them is churned by an order: a key's
    // claim time is written once, at the claim, and never changes (its
    // settlement updates columns no index holds); the delivered events'
    // index holds DELIVERED rows only, an entry written once per event, at
    // delivery (a row never leaves that state but by being pruned); shadow
    // runs are only ever inserted. Rollout events have their time index
    // already (version 5).
    r#"
    CREATE INDEX idempotency_by_time ON idempotency (created_at);
    CREATE INDEX outbox_delivered ON outbox (delivered_ms) WHERE state = 'DELIVERED';
    CREATE INDEX shadow_runs_by_time ON shadow_runs (created_ms);
    "#,
    // 11: nothing to make here: PostgreSQL's version 11 replaces the
    // order's read function (see version 8); the statement only keeps the
    // version numbers one for one.
    r#"
    SELECT 1;
    "#,
    // 12: an order's holds live on its row (`holds`: a JSON array of
    // `[warehouse_id, sku, quantity]`, one per (warehouse, sku), sorted),
    // not as rows of their own: phase 1 writes them with the order, and
    // their state follows the order's status (PENDING: held; CONFIRMED:
    // taken out of stock; PAYMENT_FAILED or CANCELLED: given back), so a
    // settlement changes no hold row and no hold index. The reservations
    // of orders placed before are moved onto their orders.
    r#"
    ALTER TABLE orders ADD COLUMN holds TEXT;
    UPDATE orders SET holds = (
        SELECT json_group_array(json_array(r.warehouse_id, r.sku, r.quantity))
        FROM (SELECT warehouse_id, sku, quantity FROM reservations WHERE order_id = orders.id
              ORDER BY warehouse_id, sku) r)
    WHERE id IN (SELECT order_id FROM reservations);
    DROP TABLE reservations;
    "#,
    // 13: indexes that hold only the rows their queries look for, so that
    // an order writes fewer index entries on its way: the PENDING orders
    // (the reconciler's; an entry written at phase 1 and removed at
    // settlement, instead of one per status), the escalated orders (the
    // dashboard's; most orders never have an entry). `outbox_by_order`
    // serves no query any more: the fraud verdict finds its event by id.
    // On PostgreSQL the PENDING index is keyed by id (see its twin).
    r#"
    DROP INDEX orders_by_status;
    CREATE INDEX orders_pending ON orders (status) WHERE status = 'PENDING';
    DROP INDEX orders_escalated;
    CREATE INDEX orders_escalated ON orders (id) WHERE fraud_action = 'ESCALATE';
    DROP INDEX outbox_by_order;
    "#,
    // 14: A/B figures of the warehouse and fraud slots, on the same rows
    // (see store::experiments): a warehouse arm's stock-outs, shipped and
    // split orders and the sums of its shipped orders' distances; a fraud
    // arm's escalations and reviews. Only columns added, each 0 on the rows
    // written before (discount rows never count them). Self-contained: it
    // only adds these columns, whatever migration comes before it.
    r#"
    ALTER TABLE experiment_arms ADD COLUMN stock_outs BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE experiment_arms ADD COLUMN shipped_orders BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE experiment_arms ADD COLUMN split_orders BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE experiment_arms ADD COLUMN distance_km_sum DOUBLE PRECISION NOT NULL DEFAULT 0;
    ALTER TABLE experiment_arms ADD COLUMN distance_km_squares DOUBLE PRECISION NOT NULL DEFAULT 0;
    ALTER TABLE experiment_arms ADD COLUMN escalations BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE experiment_arms ADD COLUMN reviews BIGINT NOT NULL DEFAULT 0;
    "#,
    // 15: what each order's warehouse selector saw (`selector_input`: the
    // candidate warehouses with their stock of the order's skus, compact
    // JSON, at most 4 KiB, else its length; see `pipeline::selector_input`),
    // so that selectors can be replayed on real orders. On the order's row,
    // written by phase 1 with the order: no table, no statement, no index
    // of its own. Orders placed before keep none.
    r#"
    ALTER TABLE orders ADD COLUMN selector_input TEXT;
    "#,
    // 16: a leaner record: fewer B-trees written per order. Each commit
    // rewrites a page of every B-tree it touches, so a table with a rowid
    // and a primary key of its own (two B-trees) or a unique column nothing
    // looks up (one more) costs whole pages per order. These tables are
    // rebuilt `WITHOUT ROWID` (their rows live in their primary key) and
    // lose the unique indexes that guarded values unique by construction:
    // a payment's gateway key is `pay_` + its order's id (the primary key),
    // a sandbox capture's transaction id and an event's id are fresh
    // UUIDv7s. Their other indexes are made again as they were. The outbox
    // keeps its rowid (`seq`, the delivery order; AUTOINCREMENT: never
    // reused, its counter carried over) and loses only the index on the
    // event id (a fraud verdict finds its event by `seq`). PostgreSQL (no
    // rowids) drops the same three unique constraints.
    r#"
    CREATE TABLE payments_v16 (
        order_id TEXT PRIMARY KEY REFERENCES orders (id),
        idempotency_key TEXT NOT NULL,
        gateway TEXT NOT NULL,
        amount_cents INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('INTENT', 'CAPTURED', 'FAILED')),
        transaction_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        failure TEXT,
        updated_at TEXT NOT NULL,
        token TEXT,
        resolve_after_ms INTEGER
    ) WITHOUT ROWID;
    INSERT INTO payments_v16 (order_id, idempotency_key, gateway, amount_cents, status, transaction_id, attempts,
                              failure, updated_at, token, resolve_after_ms)
        SELECT order_id, idempotency_key, gateway, amount_cents, status, transaction_id, attempts,
               failure, updated_at, token, resolve_after_ms FROM payments;
    DROP TABLE payments;
    ALTER TABLE payments_v16 RENAME TO payments;
    CREATE INDEX payments_to_resolve ON payments (resolve_after_ms)
        WHERE status = 'INTENT' AND resolve_after_ms IS NOT NULL;

    CREATE TABLE sandbox_charges_v16 (
        idempotency_key TEXT PRIMARY KEY,
        transaction_id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),
        currency TEXT NOT NULL,
        created_at TEXT NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO sandbox_charges_v16 (idempotency_key, transaction_id, order_id, amount_cents, currency, created_at)
        SELECT idempotency_key, transaction_id, order_id, amount_cents, currency, created_at FROM sandbox_charges;
    DROP TABLE sandbox_charges;
    ALTER TABLE sandbox_charges_v16 RENAME TO sandbox_charges;

    CREATE TABLE carts_v16 (
        customer_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        sku TEXT NOT NULL,
        quantity INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 1000000),
        PRIMARY KEY (customer_id, sku)
    ) WITHOUT ROWID;
    INSERT INTO carts_v16 (customer_id, position, sku, quantity)
        SELECT customer_id, position, sku, quantity FROM carts;
    DROP TABLE carts;
    ALTER TABLE carts_v16 RENAME TO carts;

    CREATE TABLE idempotency_v16 (
        channel TEXT NOT NULL,
        key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        order_id TEXT,
        status_code INTEGER,
        body TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (channel, key)
    ) WITHOUT ROWID;
    INSERT INTO idempotency_v16 (channel, key, request_hash, order_id, status_code, body, created_at)
        SELECT channel, key, request_hash, order_id, status_code, body, created_at FROM idempotency;
    DROP TABLE idempotency;
    ALTER TABLE idempotency_v16 RENAME TO idempotency;
    CREATE INDEX idempotency_by_order ON idempotency (order_id);
    CREATE INDEX idempotency_by_time ON idempotency (created_at);

    CREATE TABLE outbox_v16 (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        type TEXT NOT NULL CHECK (type IN ('audit', 'analytics', 'fraud')),
        envelope TEXT,
        state TEXT NOT NULL CHECK (state IN ('AWAITING_VERDICT', 'READY', 'DELIVERED')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_ms INTEGER NOT NULL,
        delivered_ms INTEGER
    );
    INSERT INTO outbox_v16 (seq, id, order_id, type, envelope, state, attempts, next_attempt_ms, last_error,
                            created_ms, delivered_ms)
        SELECT seq, id, order_id, type, envelope, state, attempts, next_attempt_ms, last_error,
               created_ms, delivered_ms FROM outbox;
    -- The counter of the seqs handed out (pruned rows' included) goes with
    -- the rows: the rename carries it to the new table's name.
    DELETE FROM sqlite_sequence WHERE name = 'outbox_v16';
    UPDATE sqlite_sequence SET name = 'outbox_v16' WHERE name = 'outbox';
    DROP TABLE outbox;
    ALTER TABLE outbox_v16 RENAME TO outbox;
    CREATE INDEX outbox_ready ON outbox (seq) WHERE state = 'READY';
    CREATE INDEX outbox_awaiting_verdict ON outbox (seq) WHERE state = 'AWAITING_VERDICT';
    CREATE INDEX outbox_delivered ON outbox (delivered_ms) WHERE state = 'DELIVERED';
    "#,
    // 17: nothing to make here. PostgreSQL's version 17 makes its order's
    // read an SQL function the planner inlines into the prepared call; the
    // SQLite back-end reads in the process, with statements of its own.
    r#"
    SELECT 1;
    "#,
];

/// Refuses a database whose schema is not exactly the one this binary
/// knows: what a read-only opener checks instead of migrating (it may not
/// write, and an older or newer schema may lack or change what it reads).
pub(super) fn check_current(conn: &Connection) -> Result<(), StoreError> {
    let current = conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))?;
    let known = MIGRATIONS.len() as i64;
    match current {
        v if v == known => Ok(()),
        0 => Err(StoreError::Corrupt("the database has no SmartMart schema (schema version 0)".into())),
        v if v < known => Err(StoreError::Corrupt(format!(
            "database schema version {v} is older than this binary's ({known}): start the service on it once to migrate it"
        ))),
        v => Err(StoreError::Corrupt(format!(
            "database schema version {v} is newer than this binary knows ({known}): use the binary that wrote it"
        ))),
    }
}

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this binary knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "applied database migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of `table`'s indexes, and whether each is unique.
    fn indexes(conn: &Connection, table: &str) -> Vec<(String, bool)> {
        let mut stmt = conn.prepare("SELECT name, \"unique\" FROM pragma_index_list(?1) ORDER BY name").unwrap();
        stmt.query_map([table], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
    }

    /// Version 16 rebuilds five tables: a database of version 15 keeps
    /// every row of them, the indexes that serve queries are there again,
    /// four have no rowid and no unique index left beside their primary
    /// key, the outbox keeps its seqs and its counter.
    #[test]
    fn version_16_rebuilds_its_tables_keeping_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("v15.sqlite")).unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        for sql in &MIGRATIONS[..15] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 15).unwrap();
        conn.execute_batch(
            "INSERT INTO orders (id, customer_id, channel, status, total_cents, currency, created_at, updated_at)
                 VALUES ('ord_1', 'c1', 'web', 'PENDING', 1000, 'USD', 't0', 't0');
             INSERT INTO payments (order_id, idempotency_key, gateway, amount_cents, status, updated_at, token,
                                   resolve_after_ms)
                 VALUES ('ord_1', 'pay_ord_1', 'sandbox', 1000, 'INTENT', 't0', 'tok', 42);
             INSERT INTO sandbox_charges (idempotency_key, transaction_id, order_id, amount_cents, currency, created_at)
                 VALUES ('pay_ord_1', 'txn_1', 'ord_1', 1000, 'USD', 't0');
             INSERT INTO carts (customer_id, position, sku, quantity) VALUES ('c1', 0, 'SKU-1', 2), ('c1', 1, 'SKU-2', 1);
             INSERT INTO idempotency (channel, key, request_hash, order_id, status_code, created_at)
                 VALUES ('web', 'k1', 'h1', 'ord_1', 202, 't0');
             INSERT INTO outbox (id, order_id, type, state, created_ms) VALUES
                 ('evt_1', 'ord_1', 'audit', 'READY', 1), ('evt_2', 'ord_1', 'fraud', 'AWAITING_VERDICT', 1),
                 ('evt_3', 'ord_1', 'analytics', 'DELIVERED', 1);
             DELETE FROM outbox WHERE id = 'evt_3';",
        )
        .unwrap();

        migrate(&mut conn).unwrap();

        // Migrated to the latest version, 16 and whatever came after it.
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let row = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, String>(0)).unwrap();
        assert_eq!(
            row("SELECT order_id || idempotency_key || status || token || resolve_after_ms FROM payments"),
            "ord_1pay_ord_1INTENTtok42"
        );
        assert_eq!(
            row("SELECT idempotency_key || transaction_id || amount_cents FROM sandbox_charges"),
            "pay_ord_1txn_11000"
        );
        assert_eq!(
            row(
                "SELECT group_concat(item, ',') FROM (SELECT sku || 'x' || quantity AS item FROM carts ORDER BY position)"
            ),
            "SKU-1x2,SKU-2x1"
        );
        assert_eq!(
            row("SELECT channel || key || request_hash || order_id || status_code FROM idempotency"),
            "webk1h1ord_1202"
        );
        assert_eq!(
            row("SELECT group_concat(seq || id, ',') FROM (SELECT seq, id FROM outbox ORDER BY seq)"),
            "1evt_1,2evt_2"
        );
        // A seq is never handed out twice, the pruned last one's included.
        conn.execute(
            "INSERT INTO outbox (id, order_id, type, state, created_ms) VALUES ('evt_4', 'ord_1', 'audit', 'READY', 2)",
            [],
        )
        .unwrap();
        assert_eq!(row("SELECT seq || id FROM outbox WHERE id = 'evt_4'"), "4evt_4");
        for table in ["payments", "sandbox_charges", "carts", "idempotency"] {
            let without_rowid = conn.prepare(&format!("SELECT rowid FROM {table}")).is_err();
            assert!(without_rowid, "{table} still has a rowid");
        }
        // Only the primary keys are unique (`sqlite_autoindex_…_1`, as
        // SQLite names a WITHOUT ROWID table's key); the indexes queries
        // use are back.
        let unique = |table: &str| indexes(&conn, table).into_iter().filter(|(_, unique)| *unique).count();
        for table in ["payments", "sandbox_charges", "carts", "idempotency"] {
            assert_eq!(unique(table), 1, "{table}: {:?}", indexes(&conn, table));
        }
        assert_eq!(unique("outbox"), 0, "the outbox's key is its rowid: {:?}", indexes(&conn, "outbox"));
        let names = |table: &str| indexes(&conn, table).into_iter().map(|(name, _)| name).collect::<Vec<_>>();
        assert!(names("payments").contains(&"payments_to_resolve".to_string()));
        assert!(names("idempotency").contains(&"idempotency_by_order".to_string()));
        assert!(names("idempotency").contains(&"idempotency_by_time".to_string()));
        assert_eq!(names("outbox"), ["outbox_awaiting_verdict", "outbox_delivered", "outbox_ready"]);
        // The payment still refers to its order.
        let orphan = conn.execute(
            "INSERT INTO payments (order_id, idempotency_key, gateway, amount_cents, status, updated_at)
             VALUES ('ord_none', 'pay_ord_none', 'sandbox', 1, 'INTENT', 't0')",
            [],
        );
        assert!(orphan.is_err(), "a payment without its order was accepted");
    }
}

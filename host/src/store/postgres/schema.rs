//! Versioned migrations of the PostgreSQL back-end, tracked in the table
//! `smartmart_schema`. Version N here makes the same tables, columns and
//! indexes as version N of the SQLite back-end (`store::sqlite::schema`;
//! the tests of `store::migrations` hold the two lists to that), in
//! PostgreSQL's types: integers are `BIGINT` (the store's values are
//! `i64`), times stay RFC 3339 text as in SQLite (and are compared as
//! `timestamptz`). Append only: a released migration is never edited.
//!
//! Replicas starting together on one database migrate it once: the whole
//! migration runs under a transaction-scoped advisory lock.

use deadpool_postgres::GenericClient;

use super::super::StoreError;

/// Any constant of our own, the same for every replica.
const MIGRATION_LOCK: i64 = 0x5347_4d41_5254; // "SMART"

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
        lat DOUBLE PRECISION NOT NULL,
        lon DOUBLE PRECISION NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE products (
        sku TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        category TEXT NOT NULL,
        unit_price_cents BIGINT NOT NULL CHECK (unit_price_cents >= 0),
        updated_at TEXT NOT NULL
    );
    CREATE TABLE warehouses (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        lat DOUBLE PRECISION NOT NULL,
        lon DOUBLE PRECISION NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE stock (
        warehouse_id TEXT NOT NULL REFERENCES warehouses (id),
        sku TEXT NOT NULL REFERENCES products (sku),
        on_hand BIGINT NOT NULL CHECK (on_hand >= 0),
        reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= on_hand),
        PRIMARY KEY (warehouse_id, sku)
    );
    CREATE INDEX stock_by_sku ON stock (sku);
    CREATE TABLE carts (
        customer_id TEXT NOT NULL,
        position BIGINT NOT NULL,
        sku TEXT NOT NULL,
        quantity BIGINT NOT NULL CHECK (quantity BETWEEN 1 AND 1000000),
        PRIMARY KEY (customer_id, sku)
    );
    CREATE TABLE orders (
        id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'PAYMENT_FAILED', 'CANCELLED')),
        total_cents BIGINT NOT NULL,
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
        quantity BIGINT NOT NULL CHECK (quantity > 0),
        state TEXT NOT NULL CHECK (state IN ('HELD', 'COMMITTED', 'RELEASED')),
        PRIMARY KEY (order_id, warehouse_id, sku)
    );
    CREATE INDEX reservations_held ON reservations (state) WHERE state = 'HELD';
    CREATE TABLE payments (
        order_id TEXT PRIMARY KEY REFERENCES orders (id),
        idempotency_key TEXT NOT NULL UNIQUE,
        gateway TEXT NOT NULL,
        amount_cents BIGINT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('INTENT', 'CAPTURED', 'FAILED')),
        transaction_id TEXT,
        attempts BIGINT NOT NULL DEFAULT 0,
        failure TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE idempotency (
        channel TEXT NOT NULL,
        key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        order_id TEXT,
        status_code BIGINT,
        body TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (channel, key)
    );
    CREATE TABLE outbox (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        order_id TEXT NOT NULL,
        type TEXT NOT NULL CHECK (type IN ('audit', 'analytics', 'fraud')),
        envelope TEXT,
        state TEXT NOT NULL CHECK (state IN ('AWAITING_VERDICT', 'READY', 'DELIVERED')),
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_ms BIGINT NOT NULL DEFAULT 0,
        last_error TEXT,
        created_ms BIGINT NOT NULL,
        delivered_ms BIGINT
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
        money_difference_cents BIGINT NOT NULL,
        differs BOOLEAN NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (order_id, slot, active_digest, candidate_digest)
    );
    "#,
    // 3: the outbox rows of one order.
    r#"
    CREATE INDEX outbox_by_order ON outbox (order_id);
    "#,
    // 4: the key claimed with the order; the sandbox gateway's ledger;
    // sinks' positions; the payment token kept while the payment is in flight.
    r#"
    CREATE INDEX idempotency_by_order ON idempotency (order_id);
    CREATE TABLE sandbox_charges (
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        idempotency_key TEXT PRIMARY KEY,
        transaction_id TEXT NOT NULL UNIQUE,
        order_id TEXT NOT NULL,
        amount_cents BIGINT NOT NULL CHECK (amount_cents >= 0),
        currency TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    ALTER TABLE payments ADD COLUMN token TEXT;
    CREATE TABLE sink_positions (
        stream TEXT PRIMARY KEY,
        "offset" BIGINT NOT NULL CHECK ("offset" >= 0)
    );
    "#,
    // 5: rollouts (canary states; reloads, refusals, rollbacks and
    // promotions), and shadow runs named by the candidate's rule name,
    // version and configuration, with its failures counted apart.
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
        calls BIGINT NOT NULL,
        errors BIGINT NOT NULL,
        at_ms BIGINT NOT NULL
    );
    CREATE TABLE rollout_events (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('reload', 'refused', 'rollback', 'promote')),
        entry TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX rollout_events_by_time ON rollout_events (at_ms);
    ALTER TABLE shadow_runs ADD COLUMN candidate_name TEXT NOT NULL DEFAULT '';
    ALTER TABLE shadow_runs ADD COLUMN candidate_config_hash TEXT NOT NULL DEFAULT '';
    ALTER TABLE shadow_runs ADD COLUMN candidate_config TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE shadow_runs ADD COLUMN failed BOOLEAN NOT NULL DEFAULT false;
    ALTER TABLE shadow_runs ADD COLUMN created_ms BIGINT NOT NULL DEFAULT 0;
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
    // 7: payments answered PAYMENT_PENDING, handed to the reconciler until
    // `resolve_after_ms` (NULL = not handed over), found through a partial
    // index of the open ones; the sandbox ledger's cancelled keys.
    r#"
    ALTER TABLE payments ADD COLUMN resolve_after_ms BIGINT;
    CREATE INDEX payments_to_resolve ON payments (resolve_after_ms)
        WHERE status = 'INTENT' AND resolve_after_ms IS NOT NULL;
    CREATE TABLE sandbox_cancelled (
        idempotency_key TEXT PRIMARY KEY,
        cancelled_at TEXT NOT NULL
    );
    "#,
    // 8: an order's answer path as functions, so that each phase is one
    // round trip in one implicit transaction, all or nothing, its plans kept
    // by the server (`postgres::catalog::order_snapshot`,
    // `postgres::orders::reserve` and `settle`, `postgres::ledger::capture`
    // call them and hold their contract). Stock rows are locked in
    // (warehouse_id, sku) order, byte order (`COLLATE "C"`), by every
    // operation that takes several.
    r#"
    -- What an order reads, in one snapshot: one row per part of the answer
    -- (`part`), each filling its own columns, the others NULL:
    --   customer: the customer, if it exists;
    --   line: each cart line (`position`: the cart's order), priced now; a
    --     sku no longer in the catalog has no name;
    --   stock: for each line still in the catalog, each warehouse stocking
    --     its sku, with the units available there.
    -- Rows come by cart position. The output columns are named like the
    -- tables' columns: those names mean the columns inside.
    CREATE FUNCTION smartmart_order_snapshot(p_customer_id TEXT) RETURNS TABLE (
        part TEXT, "position" BIGINT, id TEXT, name TEXT, email TEXT, phone TEXT, tier TEXT, status TEXT,
        lat DOUBLE PRECISION, lon DOUBLE PRECISION, sku TEXT, category TEXT, quantity BIGINT, price BIGINT,
        available BIGINT
    ) LANGUAGE plpgsql STABLE AS $$
    #variable_conflict use_column
    BEGIN
        RETURN QUERY
        WITH line AS (
            SELECT c.position, c.sku, c.quantity, p.name, p.category, p.unit_price_cents
            FROM carts c LEFT JOIN products p ON p.sku = c.sku
            WHERE c.customer_id = p_customer_id
        )
        SELECT 'customer'::TEXT, NULL::BIGINT, cu.id, cu.name, cu.email, cu.phone, cu.tier, cu.status, cu.lat,
               cu.lon, NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT
        FROM customers cu WHERE cu.id = p_customer_id
        UNION ALL
        SELECT 'line', l.position, NULL, l.name, NULL, NULL, NULL, NULL, NULL, NULL,
               l.sku, l.category, l.quantity, l.unit_price_cents, NULL
        FROM line l
        UNION ALL
        SELECT 'stock', l.position, w.id, w.name, NULL, NULL, NULL, NULL, w.lat, w.lon,
               l.sku, NULL, NULL, NULL, s.on_hand - s.reserved
        FROM line l JOIN stock s ON s.sku = l.sku JOIN warehouses w ON w.id = s.warehouse_id
        WHERE l.name IS NOT NULL
        ORDER BY 2, 3;
    END
    $$;

    -- The order PENDING with its key claimed, its stock held and its payment
    -- intent recorded (the intent's arguments NULL: none yet). 'key_taken'
    -- when another order holds the key (nothing written); a hold that does
    -- not fit raises SQLSTATE SM001 with the hold's position in the
    -- arrays (from 1) as its DETAIL, which undoes the whole call.
    CREATE FUNCTION smartmart_reserve(
        p_order_id TEXT, p_customer_id TEXT, p_channel TEXT, p_currency TEXT, p_now TEXT,
        p_key_channel TEXT, p_key TEXT, p_request_hash TEXT,
        p_warehouse_ids TEXT[], p_skus TEXT[], p_quantities BIGINT[],
        p_invoice TEXT, p_total_cents BIGINT, p_payment_key TEXT, p_gateway TEXT, p_token TEXT
    ) RETURNS TEXT LANGUAGE plpgsql AS $$
    DECLARE
        hold RECORD;
    BEGIN
        IF p_key IS NOT NULL THEN
            -- Waits for a racing call holding the same key, then sees its row.
            INSERT INTO idempotency (channel, key, request_hash, order_id, created_at)
            VALUES (p_key_channel, p_key, p_request_hash, p_order_id, p_now)
            ON CONFLICT (channel, key) DO NOTHING;
            IF NOT FOUND THEN
                RETURN 'key_taken';
            END IF;
        END IF;
        INSERT INTO orders (id, customer_id, channel, status, total_cents, currency, invoice, created_at, updated_at)
        VALUES (p_order_id, p_customer_id, p_channel, 'PENDING', coalesce(p_total_cents, 0), p_currency, p_invoice,
                p_now, p_now);
        FOR hold IN
            SELECT h.warehouse_id, h.sku, h.quantity, h.n
            FROM unnest(p_warehouse_ids, p_skus, p_quantities) WITH ORDINALITY AS h (warehouse_id, sku, quantity, n)
            ORDER BY h.warehouse_id COLLATE "C", h.sku COLLATE "C", h.n
        LOOP
            UPDATE stock SET reserved = reserved + hold.quantity
            WHERE warehouse_id = hold.warehouse_id AND sku = hold.sku AND on_hand - reserved >= hold.quantity;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'not enough % in %', hold.sku, hold.warehouse_id
                    USING ERRCODE = 'SM001', DETAIL = hold.n::text;
            END IF;
            INSERT INTO reservations (order_id, warehouse_id, sku, quantity, state)
            VALUES (p_order_id, hold.warehouse_id, hold.sku, hold.quantity, 'HELD')
            ON CONFLICT (order_id, warehouse_id, sku) DO UPDATE SET quantity = reservations.quantity + hold.quantity;
        END LOOP;
        IF p_payment_key IS NOT NULL THEN
            INSERT INTO payments (order_id, idempotency_key, gateway, amount_cents, status, updated_at, token)
            VALUES (p_order_id, p_payment_key, p_gateway, p_total_cents, 'INTENT', p_now, p_token);
        END IF;
        RETURN 'reserved';
    END
    $$;

    -- The order's final state: false, and nothing written, when it is no
    -- longer PENDING. Its holds are taken out of stock (p_take) or
    -- released, its cart emptied when paid, its payment's outcome stored
    -- and its token erased, its events queued in the given order, and its
    -- key's answer stored (replacing a 202).
    CREATE FUNCTION smartmart_settle(
        p_order_id TEXT, p_customer_id TEXT, p_status TEXT, p_invoice TEXT, p_now TEXT,
        p_take BOOLEAN, p_hold_state TEXT, p_payment_status TEXT,
        p_transaction_id TEXT, p_attempts BIGINT, p_failure TEXT,
        p_event_ids TEXT[], p_event_types TEXT[], p_envelopes TEXT[], p_event_states TEXT[], p_created_ms BIGINT,
        p_status_code BIGINT, p_body TEXT
    ) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
    DECLARE
        hold RECORD;
    BEGIN
        UPDATE orders SET status = p_status, invoice = p_invoice, updated_at = p_now
        WHERE id = p_order_id AND status = 'PENDING';
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        FOR hold IN
            SELECT warehouse_id, sku, quantity FROM reservations WHERE order_id = p_order_id AND state = 'HELD'
            ORDER BY warehouse_id COLLATE "C", sku COLLATE "C"
        LOOP
            IF p_take THEN
                UPDATE stock SET reserved = reserved - hold.quantity, on_hand = on_hand - hold.quantity
                WHERE warehouse_id = hold.warehouse_id AND sku = hold.sku;
            ELSE
                UPDATE stock SET reserved = reserved - hold.quantity
                WHERE warehouse_id = hold.warehouse_id AND sku = hold.sku;
            END IF;
        END LOOP;
        UPDATE reservations SET state = p_hold_state WHERE order_id = p_order_id AND state = 'HELD';
        IF p_take THEN
            DELETE FROM carts WHERE customer_id = p_customer_id;
        END IF;
        UPDATE payments SET status = p_payment_status, transaction_id = p_transaction_id, attempts = p_attempts,
            failure = p_failure, updated_at = p_now, token = NULL
        WHERE order_id = p_order_id;
        FOR i IN 1 .. coalesce(array_length(p_event_ids, 1), 0) LOOP
            INSERT INTO outbox (id, order_id, type, envelope, state, created_ms)
            VALUES (p_event_ids[i], p_order_id, p_event_types[i], p_envelopes[i], p_event_states[i], p_created_ms);
        END LOOP;
        UPDATE idempotency SET status_code = p_status_code, body = p_body
        WHERE order_id = p_order_id AND (status_code IS NULL OR status_code = 202);
        RETURN true;
    END
    $$;

    -- The sandbox gateway's capture under the key's advisory lock (the one
    -- `postgres::ledger::cancel` takes): 'cancelled' (nothing captured),
    -- 'new' (this charge), or 'existing' with the charge recorded before
    -- (no row if it vanished).
    CREATE FUNCTION smartmart_ledger_capture(
        p_lock INTEGER, p_key TEXT, p_transaction_id TEXT, p_order_id TEXT, p_amount_cents BIGINT,
        p_currency TEXT, p_now TEXT
    ) RETURNS TABLE (
        outcome TEXT, charge_transaction_id TEXT, charge_order_id TEXT, charge_amount_cents BIGINT,
        charge_currency TEXT
    ) LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock(p_lock, hashtext(p_key));
        IF EXISTS (SELECT 1 FROM sandbox_cancelled c WHERE c.idempotency_key = p_key) THEN
            RETURN QUERY SELECT 'cancelled'::TEXT, NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::TEXT;
            RETURN;
        END IF;
        INSERT INTO sandbox_charges (idempotency_key, transaction_id, order_id, amount_cents, currency, created_at)
        VALUES (p_key, p_transaction_id, p_order_id, p_amount_cents, p_currency, p_now)
        ON CONFLICT (idempotency_key) DO NOTHING;
        IF FOUND THEN
            RETURN QUERY SELECT 'new'::TEXT, p_transaction_id, p_order_id, p_amount_cents, p_currency;
            RETURN;
        END IF;
        RETURN QUERY SELECT 'existing'::TEXT, c.transaction_id, c.order_id, c.amount_cents, c.currency
            FROM sandbox_charges c WHERE c.idempotency_key = p_key;
    END
    $$;
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
    // 10: retention (`store::retention`): each pruned table read oldest
    // first through an index that no order churns (see the SQLite twin).
    // A key's times are RFC 3339 text compared byte-wise, so its index is
    // built `COLLATE "C"` as the prune compares (the database's collation
    // may order punctuation otherwise). The delivered events' index is
    // partial: written once per event, at delivery, and read by an index
    // scan in `delivered_ms` order, which skips the dead entries of rows
    // pruned before it (a bitmap scan would read them all again, as the
    // comment of version 9 says). Built in the migration's transaction, so
    // on a large existing database writes to these tables wait while it builds.
    r#"
    CREATE INDEX idempotency_by_time ON idempotency (created_at COLLATE "C");
    CREATE INDEX outbox_delivered ON outbox (delivered_ms) WHERE state = 'DELIVERED';
    CREATE INDEX shadow_runs_by_time ON shadow_runs (created_ms);
    "#,
    // 11: the order's read also says whether the request's idempotency key
    // was used, so that a request with a key costs no round trip of its
    // own before its order (the key's record is read only for a retry).
    r#"
    DROP FUNCTION smartmart_order_snapshot(TEXT);
    CREATE FUNCTION smartmart_order_snapshot(p_customer_id TEXT, p_key_channel TEXT, p_key TEXT) RETURNS TABLE (
        part TEXT, "position" BIGINT, id TEXT, name TEXT, email TEXT, phone TEXT, tier TEXT, status TEXT,
        lat DOUBLE PRECISION, lon DOUBLE PRECISION, sku TEXT, category TEXT, quantity BIGINT, price BIGINT,
        available BIGINT
    ) LANGUAGE plpgsql STABLE AS $$
    #variable_conflict use_column
    BEGIN
        RETURN QUERY
        WITH line AS (
            SELECT c.position, c.sku, c.quantity, p.name, p.category, p.unit_price_cents
            FROM carts c LEFT JOIN products p ON p.sku = c.sku
            WHERE c.customer_id = p_customer_id
        )
        SELECT 'key'::TEXT, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::TEXT,
               NULL::DOUBLE PRECISION, NULL::DOUBLE PRECISION, NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::BIGINT,
               NULL::BIGINT
        FROM idempotency i WHERE p_key IS NOT NULL AND i.channel = p_key_channel AND i.key = p_key
        UNION ALL
        SELECT 'customer'::TEXT, NULL::BIGINT, cu.id, cu.name, cu.email, cu.phone, cu.tier, cu.status, cu.lat,
               cu.lon, NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT
        FROM customers cu WHERE cu.id = p_customer_id
        UNION ALL
        SELECT 'line', l.position, NULL, l.name, NULL, NULL, NULL, NULL, NULL, NULL,
               l.sku, l.category, l.quantity, l.unit_price_cents, NULL
        FROM line l
        UNION ALL
        SELECT 'stock', l.position, w.id, w.name, NULL, NULL, NULL, NULL, w.lat, w.lon,
               l.sku, NULL, NULL, NULL, s.on_hand - s.reserved
        FROM line l JOIN stock s ON s.sku = l.sku JOIN warehouses w ON w.id = s.warehouse_id
        WHERE l.name IS NOT NULL
        ORDER BY 2, 3;
    END
    $$;
    "#,
    // 12: an order's holds live on its row (see the SQLite twin): phase 1
    // writes them with the order (`p_holds`, the JSON the store builds),
    // and the settlement reads them from the row it updates, so neither
    // writes a hold row. The reservations of orders placed before are moved
    // onto their orders. The settlement queues its events in one statement
    // (in the given order, which is their `seq` order) instead of one per
    // event. Both functions change their arguments, so they are made anew.
    r#"
    ALTER TABLE orders ADD COLUMN holds TEXT;
    UPDATE orders o SET holds = r.holds
    FROM (SELECT order_id,
                 json_agg(json_build_array(warehouse_id, sku, quantity)
                          ORDER BY warehouse_id COLLATE "C", sku COLLATE "C")::TEXT AS holds
          FROM reservations GROUP BY order_id) r
    WHERE o.id = r.order_id;
    DROP FUNCTION smartmart_reserve(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT[], TEXT[], BIGINT[], TEXT,
                                    BIGINT, TEXT, TEXT, TEXT);
    DROP FUNCTION smartmart_settle(TEXT, TEXT, TEXT, TEXT, TEXT, BOOLEAN, TEXT, TEXT, TEXT, BIGINT, TEXT, TEXT[],
                                   TEXT[], TEXT[], TEXT[], BIGINT, BIGINT, TEXT);
    DROP TABLE reservations;

    -- As version 8's, the holds written on the order's row.
    CREATE FUNCTION smartmart_reserve(
        p_order_id TEXT, p_customer_id TEXT, p_channel TEXT, p_currency TEXT, p_now TEXT,
        p_key_channel TEXT, p_key TEXT, p_request_hash TEXT,
        p_warehouse_ids TEXT[], p_skus TEXT[], p_quantities BIGINT[], p_holds TEXT,
        p_invoice TEXT, p_total_cents BIGINT, p_payment_key TEXT, p_gateway TEXT, p_token TEXT
    ) RETURNS TEXT LANGUAGE plpgsql AS $$
    DECLARE
        hold RECORD;
    BEGIN
        IF p_key IS NOT NULL THEN
            -- Waits for a racing call holding the same key, then sees its row.
            INSERT INTO idempotency (channel, key, request_hash, order_id, created_at)
            VALUES (p_key_channel, p_key, p_request_hash, p_order_id, p_now)
            ON CONFLICT (channel, key) DO NOTHING;
            IF NOT FOUND THEN
                RETURN 'key_taken';
            END IF;
        END IF;
        INSERT INTO orders (id, customer_id, channel, status, total_cents, currency, invoice, created_at, updated_at,
                            holds)
        VALUES (p_order_id, p_customer_id, p_channel, 'PENDING', coalesce(p_total_cents, 0), p_currency, p_invoice,
                p_now, p_now, p_holds);
        FOR hold IN
            SELECT h.warehouse_id, h.sku, h.quantity, h.n
            FROM unnest(p_warehouse_ids, p_skus, p_quantities) WITH ORDINALITY AS h (warehouse_id, sku, quantity, n)
            ORDER BY h.warehouse_id COLLATE "C", h.sku COLLATE "C", h.n
        LOOP
            UPDATE stock SET reserved = reserved + hold.quantity
            WHERE warehouse_id = hold.warehouse_id AND sku = hold.sku AND on_hand - reserved >= hold.quantity;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'not enough % in %', hold.sku, hold.warehouse_id
                    USING ERRCODE = 'SM001', DETAIL = hold.n::text;
            END IF;
        END LOOP;
        IF p_payment_key IS NOT NULL THEN
            INSERT INTO payments (order_id, idempotency_key, gateway, amount_cents, status, updated_at, token)
            VALUES (p_order_id, p_payment_key, p_gateway, p_total_cents, 'INTENT', p_now, p_token);
        END IF;
        RETURN 'reserved';
    END
    $$;

    -- As version 8's, the holds read from the order's row (in lock order)
    -- and the events queued in one statement.
    CREATE FUNCTION smartmart_settle(
        p_order_id TEXT, p_customer_id TEXT, p_status TEXT, p_invoice TEXT, p_now TEXT,
        p_take BOOLEAN, p_payment_status TEXT,
        p_transaction_id TEXT, p_attempts BIGINT, p_failure TEXT,
        p_event_ids TEXT[], p_event_types TEXT[], p_envelopes TEXT[], p_event_states TEXT[], p_created_ms BIGINT,
        p_status_code BIGINT, p_body TEXT
    ) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
    DECLARE
        v_holds TEXT;
        hold RECORD;
    BEGIN
        UPDATE orders SET status = p_status, invoice = p_invoice, updated_at = p_now
        WHERE id = p_order_id AND status = 'PENDING'
        RETURNING holds INTO v_holds;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        FOR hold IN
            SELECT h ->> 0 AS warehouse_id, h ->> 1 AS sku, (h ->> 2)::BIGINT AS quantity
            FROM json_array_elements(coalesce(v_holds, '[]')::JSON) h
            ORDER BY (h ->> 0) COLLATE "C", (h ->> 1) COLLATE "C"
        LOOP
            IF p_take THEN
                UPDATE stock SET reserved = reserved - hold.quantity, on_hand = on_hand - hold.quantity
                WHERE warehouse_id = hold.warehouse_id AND sku = hold.sku;
            ELSE
                UPDATE stock SET reserved = reserved - hold.quantity
                WHERE warehouse_id = hold.warehouse_id AND sku = hold.sku;
            END IF;
        END LOOP;
        IF p_take THEN
            DELETE FROM carts WHERE customer_id = p_customer_id;
        END IF;
        UPDATE payments SET status = p_payment_status, transaction_id = p_transaction_id, attempts = p_attempts,
            failure = p_failure, updated_at = p_now, token = NULL
        WHERE order_id = p_order_id;
        INSERT INTO outbox (id, order_id, type, envelope, state, created_ms)
        SELECT e.id, p_order_id, e.type, e.envelope, e.state, p_created_ms
        FROM unnest(p_event_ids, p_event_types, p_envelopes, p_event_states)
             WITH ORDINALITY AS e (id, type, envelope, state, n)
        ORDER BY e.n;
        UPDATE idempotency SET status_code = p_status_code, body = p_body
        WHERE order_id = p_order_id AND (status_code IS NULL OR status_code = 202);
        RETURN true;
    END
    $$;
    "#,
    // 13: indexes that hold only the rows their queries look for (see the
    // SQLite twin). The PENDING orders' index is keyed by id, so that the
    // plans of the per-order functions, which look an order up by id with
    // `status = 'PENDING'`, read one entry from it if they choose it, never
    // the dead entries of every settled order (see version 9).
    r#"
    DROP INDEX orders_by_status;
    CREATE INDEX orders_pending ON orders (id) WHERE status = 'PENDING';
    DROP INDEX orders_escalated;
    CREATE INDEX orders_escalated ON orders (id) WHERE fraud_action = 'ESCALATE';
    DROP INDEX outbox_by_order;
    "#,
    // 14: A/B figures of the warehouse and fraud slots, on the same rows
    // (see the SQLite twin and store::experiments): a warehouse arm's stock-outs, shipped and
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
    // 15: what each order's warehouse selector saw, on the order's row (see
    // the SQLite twin), written by phase 1: `smartmart_reserve` takes it as
    // one more argument, so it is made anew.
    r#"
    ALTER TABLE orders ADD COLUMN selector_input TEXT;
    DROP FUNCTION smartmart_reserve(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT[], TEXT[], BIGINT[], TEXT,
                                    TEXT, BIGINT, TEXT, TEXT, TEXT);

    -- As version 12's, the selector's input written on the order's row too.
    CREATE FUNCTION smartmart_reserve(
        p_order_id TEXT, p_customer_id TEXT, p_channel TEXT, p_currency TEXT, p_now TEXT,
        p_key_channel TEXT, p_key TEXT, p_request_hash TEXT,
        p_warehouse_ids TEXT[], p_skus TEXT[], p_quantities BIGINT[], p_holds TEXT, p_selector_input TEXT,
        p_invoice TEXT, p_total_cents BIGINT, p_payment_key TEXT, p_gateway TEXT, p_token TEXT
    ) RETURNS TEXT LANGUAGE plpgsql AS $$
    DECLARE
        hold RECORD;
    BEGIN
        IF p_key IS NOT NULL THEN
            -- Waits for a racing call holding the same key, then sees its row.
            INSERT INTO idempotency (channel, key, request_hash, order_id, created_at)
            VALUES (p_key_channel, p_key, p_request_hash, p_order_id, p_now)
            ON CONFLICT (channel, key) DO NOTHING;
            IF NOT FOUND THEN
                RETURN 'key_taken';
            END IF;
        END IF;
        INSERT INTO orders (id, customer_id, channel, status, total_cents, currency, invoice, created_at, updated_at,
                            holds, selector_input)
        VALUES (p_order_id, p_customer_id, p_channel, 'PENDING', coalesce(p_total_cents, 0), p_currency, p_invoice,
                p_now, p_now, p_holds, p_selector_input);
        FOR hold IN
            SELECT h.warehouse_id, h.sku, h.quantity, h.n
            FROM unnest(p_warehouse_ids, p_skus, p_quantities) WITH ORDINALITY AS h (warehouse_id, sku, quantity, n)
            ORDER BY h.warehouse_id COLLATE "C", h.sku COLLATE "C", h.n
        LOOP
            UPDATE stock SET reserved = reserved + hold.quantity
            WHERE warehouse_id = hold.warehouse_id AND sku = hold.sku AND on_hand - reserved >= hold.quantity;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'not enough % in %', hold.sku, hold.warehouse_id
                    USING ERRCODE = 'SM001', DETAIL = hold.n::text;
            END IF;
        END LOOP;
        IF p_payment_key IS NOT NULL THEN
            INSERT INTO payments (order_id, idempotency_key, gateway, amount_cents, status, updated_at, token)
            VALUES (p_order_id, p_payment_key, p_gateway, p_total_cents, 'INTENT', p_now, p_token);
        END IF;
        RETURN 'reserved';
    END
    $$;
    "#,
    // 16: a leaner record (see the SQLite twin): the unique constraints on
    // values unique by construction go, and their indexes with them (a
    // payment's gateway key is `pay_` + its order's id, the primary key; a
    // sandbox capture's transaction id and an event's id are fresh
    // UUIDv7s; a fraud verdict finds its event by `seq`), so an order
    // writes five index entries fewer. SQLite also rebuilds four tables
    // without rowids; a PostgreSQL table is a heap beside its primary key
    // whatever it is declared as, so there is nothing more to make here.
    r#"
    ALTER TABLE payments DROP CONSTRAINT payments_idempotency_key_key;
    ALTER TABLE sandbox_charges DROP CONSTRAINT sandbox_charges_transaction_id_key;
    ALTER TABLE outbox DROP CONSTRAINT outbox_id_key;
    "#,
    // 17: the order's read as an SQL function (version 11's query, the
    // same arguments and columns), which the planner inlines into the
    // statement that calls it: prepared once per connection, the read is
    // planned once, and runs without PL/pgSQL's interpreter, its executor
    // started per statement and the table of rows it fills before
    // returning them. Replaced in place, so a replica of version 16 still
    // running calls it unchanged.
    r#"
    CREATE OR REPLACE FUNCTION smartmart_order_snapshot(p_customer_id TEXT, p_key_channel TEXT, p_key TEXT)
    RETURNS TABLE (
        part TEXT, "position" BIGINT, id TEXT, name TEXT, email TEXT, phone TEXT, tier TEXT, status TEXT,
        lat DOUBLE PRECISION, lon DOUBLE PRECISION, sku TEXT, category TEXT, quantity BIGINT, price BIGINT,
        available BIGINT
    ) LANGUAGE sql STABLE AS $$
        WITH line AS (
            SELECT c.position, c.sku, c.quantity, p.name, p.category, p.unit_price_cents
            FROM carts c LEFT JOIN products p ON p.sku = c.sku
            WHERE c.customer_id = p_customer_id
        )
        SELECT 'key'::TEXT, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::TEXT,
               NULL::DOUBLE PRECISION, NULL::DOUBLE PRECISION, NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::BIGINT,
               NULL::BIGINT
        FROM idempotency i WHERE p_key IS NOT NULL AND i.channel = p_key_channel AND i.key = p_key
        UNION ALL
        SELECT 'customer'::TEXT, NULL::BIGINT, cu.id, cu.name, cu.email, cu.phone, cu.tier, cu.status, cu.lat,
               cu.lon, NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT
        FROM customers cu WHERE cu.id = p_customer_id
        UNION ALL
        SELECT 'line', l.position, NULL, l.name, NULL, NULL, NULL, NULL, NULL, NULL,
               l.sku, l.category, l.quantity, l.unit_price_cents, NULL
        FROM line l
        UNION ALL
        SELECT 'stock', l.position, w.id, w.name, NULL, NULL, NULL, NULL, w.lat, w.lon,
               l.sku, NULL, NULL, NULL, s.on_hand - s.reserved
        FROM line l JOIN stock s ON s.sku = l.sku JOIN warehouses w ON w.id = s.warehouse_id
        WHERE l.name IS NOT NULL
        ORDER BY 2, 3;
    $$;
    "#,
];

/// The schema version this binary writes.
pub(super) fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

async fn current(client: &impl GenericClient) -> Result<i64, StoreError> {
    let exists: bool = client.query_one("SELECT to_regclass('smartmart_schema') IS NOT NULL", &[]).await?.get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client.query_one("SELECT coalesce(max(version), 0) FROM smartmart_schema", &[]).await?.get(0))
}

/// Applies what is missing, all of it in one transaction.
pub(super) async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS smartmart_schema (version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL)",
    )
    .await?;
    let current = current(&tx).await?;
    if current > latest() {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this binary knows ({})",
            latest()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as i64 + 1;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO smartmart_schema (version, applied_at) VALUES ($1, $2)",
            &[&version, &crate::clock::now_rfc3339()],
        )
        .await?;
        tracing::info!(version, "applied database migration (PostgreSQL)");
    }
    tx.commit().await?;
    Ok(())
}

/// What a read-only opener checks instead of migrating (see the SQLite twin).
pub(super) async fn check_current(client: &impl GenericClient) -> Result<(), StoreError> {
    match current(client).await? {
        v if v == latest() => Ok(()),
        0 => Err(StoreError::Corrupt("the database has no SmartMart schema (schema version 0)".into())),
        v if v < latest() => Err(StoreError::Corrupt(format!(
            "database schema version {v} is older than this binary's ({}): start the service on it once to migrate it",
            latest()
        ))),
        v => Err(StoreError::Corrupt(format!(
            "database schema version {v} is newer than this binary knows ({})",
            latest()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Version 16 on a database of version 15 with rows in the tables it
    /// alters, on the local server (`SMARTMART_TEST_DATABASE_URL`, as the
    /// integration tests), in a schema of the test's own.
    #[tokio::test]
    async fn version_16_drops_the_unique_constraints_keeping_every_row() {
        let (client, _, schema) = super::super::test_server("t_v16").await;
        client.batch_execute(&format!("CREATE SCHEMA {schema}; SET search_path TO {schema}")).await.unwrap();
        let result = async {
            for sql in &MIGRATIONS[..15] {
                client.batch_execute(sql).await?;
            }
            client
                .batch_execute(
                    "INSERT INTO orders (id, customer_id, channel, status, total_cents, currency, created_at, updated_at)
                         VALUES ('ord_1', 'c1', 'web', 'PENDING', 1000, 'USD', 't0', 't0');
                     INSERT INTO payments (order_id, idempotency_key, gateway, amount_cents, status, updated_at, token)
                         VALUES ('ord_1', 'pay_ord_1', 'sandbox', 1000, 'INTENT', 't0', 'tok');
                     INSERT INTO sandbox_charges (idempotency_key, transaction_id, order_id, amount_cents, currency,
                                                  created_at)
                         VALUES ('pay_ord_1', 'txn_1', 'ord_1', 1000, 'USD', 't0');",
                )
                .await?;
            client.batch_execute(MIGRATIONS[15]).await?;
            let unique: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_constraint
                     WHERE conrelid IN ('payments'::regclass, 'sandbox_charges'::regclass, 'outbox'::regclass)
                       AND contype = 'u'",
                    &[],
                )
                .await?
                .get(0);
            let kept: String = client
                .query_one(
                    "SELECT p.idempotency_key || p.token || c.transaction_id
                     FROM payments p JOIN sandbox_charges c ON c.idempotency_key = p.idempotency_key",
                    &[],
                )
                .await?
                .get(0);
            Ok::<_, tokio_postgres::Error>((unique, kept))
        }
        .await;
        client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
        let (unique, kept) = result.unwrap();
        assert_eq!(unique, 0, "a unique constraint is left beside the primary keys");
        assert_eq!(kept, "pay_ord_1toktxn_1");
    }
}

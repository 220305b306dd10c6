-- Phase 1 as plain statements in one pipeline, as phase1-pipe.sql, but
-- each hold checked as the function checks it: a stock row that is missing
-- or short updates nothing, and `1 / count(*)` then fails the statement
-- (division by zero), so the transaction is rolled back whatever the row's
-- CHECK would have said (benches/postgres-phases/run.sh).
\set n random(1, 1000000000000)
\startpipeline
BEGIN;
INSERT INTO orders (id, customer_id, channel, status, total_cents, currency, invoice, created_at, updated_at, holds,
                    selector_input)
SELECT 'ord_bench_' || (:client_id)::text || '_' || (:n)::text, 'C-1001', 'web', 'PENDING', 100000, 'USD', invoice,
       '2026-12-07T11:00:00.000Z', '2026-12-07T11:00:00.000Z',
       '[["WH-BLR","PHONE-X12",1],["WH-BLR","TV-55-OLED",1]]', selector_input
FROM bench_payload;
WITH held AS (UPDATE stock SET reserved = reserved + 1
              WHERE warehouse_id = 'WH-BLR' AND sku = 'PHONE-X12' AND on_hand - reserved >= 1 RETURNING 1)
SELECT 1 / count(*) FROM held;
WITH held AS (UPDATE stock SET reserved = reserved + 1
              WHERE warehouse_id = 'WH-BLR' AND sku = 'TV-55-OLED' AND on_hand - reserved >= 1 RETURNING 1)
SELECT 1 / count(*) FROM held;
INSERT INTO payments (order_id, idempotency_key, gateway, amount_cents, status, updated_at, token)
VALUES ('ord_bench_' || (:client_id)::text || '_' || (:n)::text,
        'pay_ord_bench_' || (:client_id)::text || '_' || (:n)::text, 'sandbox', 100000, 'INTENT',
        '2026-12-07T11:00:00.000Z', 'tok_ok');
COMMIT;
\endpipeline

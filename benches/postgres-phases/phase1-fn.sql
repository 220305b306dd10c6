-- Phase 1 as the service runs it: one call of the PL/pgSQL function
-- (benches/postgres-phases/run.sh). A 2-line order without an idempotency key.
\set n random(1, 1000000000000)
SELECT smartmart_reserve('ord_bench_' || (:client_id)::text || '_' || (:n)::text, 'C-1001', 'web', 'USD',
    '2026-12-07T11:00:00.000Z', NULL, NULL, NULL,
    ARRAY['WH-BLR', 'WH-BLR'], ARRAY['PHONE-X12', 'TV-55-OLED'], ARRAY[1, 1]::BIGINT[],
    '[["WH-BLR","PHONE-X12",1],["WH-BLR","TV-55-OLED",1]]',
    (SELECT selector_input FROM bench_payload), (SELECT invoice FROM bench_payload), 100000,
    'pay_ord_bench_' || (:client_id)::text || '_' || (:n)::text, 'sandbox', 'tok_ok');

#!/usr/bin/env bash
# Phase 1 of an order on PostgreSQL two ways, measured by the server's CPU:
# `fn`   = the PL/pgSQL function the service calls (`SELECT smartmart_reserve(...)`);
# `pipe` = the same rows written by plain statements sent as one pipeline
#          (BEGIN, the order's INSERT, the two stock UPDATEs, the payment's
#          INSERT, COMMIT: one round trip, one transaction), a short hold
#          refused by the stock table's CHECK;
# `pipe-checked` = the same pipeline with each hold checked as the function
#          checks it (a missing or short stock row fails its statement).
#
#   benches/postgres-phases/run.sh [BINARY]      default: target/release/smartmart
#   PGHOST, PGPORT, PGUSER (default 127.0.0.1, 5432, root), ROUNDS (2), SECONDS_PER_RUN (10), CLIENTS (8)
#
# Makes a database, lets `smartmart serve --dev --demo-data` migrate it and load
# the demo data, places one real order (its invoice and selector input are the
# payload every benchmark order writes), then runs pgbench on a fresh copy of
# that database per run, the two scripts alternating, and prints transactions/s
# and the CPU of every `postgres` process per transaction. PostgreSQL must run on
# this machine (its processes' CPU is read from /proc). Needs psql, pgbench, curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-target/release/smartmart}"
HERE=benches/postgres-phases
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-root}"
ROUNDS="${ROUNDS:-2}" SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}" CLIENTS="${CLIENTS:-8}"
die() { echo "postgres-phases: $*" >&2; exit 2; }
for tool in psql pgbench curl python3; do command -v "$tool" >/dev/null || die "$tool is missing"; done
[ -x "$BIN" ] || die "$BIN is not an executable (cargo build --release -p smartmart)"

BASE="smartmart_phases_$$"
WORK="$(mktemp -d)"
PID=""
cleanup() {
  [ -z "$PID" ] || { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
  psql -d postgres -qc "DROP DATABASE IF EXISTS $BASE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
psql -d postgres -qc "CREATE DATABASE $BASE"

# The schema and the demo data, by the service itself; then one real order.
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
SMARTMART_DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$BASE?sslmode=disable" RUST_LOG=warn \
  "$BIN" serve --dev --demo-data examples/demo/dataset.json --data-dir "$WORK/data" \
  --plugins-dir plugins/bundled --listen "127.0.0.1:$PORT" >"$WORK/serve.log" 2>&1 &
PID=$!
for _ in $(seq 300); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null || { tail "$WORK/serve.log" >&2; die "the service did not start"; }
WEB="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["channel_keys"]["web"])' "$WORK/data/dev-credentials.json")"
TOKEN="$(env -u SMARTMART_IDENTITY_SECRET "$BIN" token C-1001 --data-dir "$WORK/data")"
curl -fs -X PUT "http://127.0.0.1:$PORT/v1/carts/C-1001" -H "Authorization: Bearer $WEB" -H "X-Customer-Token: $TOKEN" \
  -H 'Content-Type: application/json' -d '{"items":[{"sku":"TV-55-OLED","quantity":1},{"sku":"PHONE-X12","quantity":1}]}' >/dev/null
curl -fs -X POST "http://127.0.0.1:$PORT/v1/orders" -H "Authorization: Bearer $WEB" -H "X-Customer-Token: $TOKEN" \
  -H 'Content-Type: application/json' -d '{"customer_id":"C-1001","payment":{"token":"tok_ok"}}' >/dev/null
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""

# What every benchmark order writes: the real order's invoice and selector
# input, and enough stock for any run.
psql -d "$BASE" -q <<'SQL'
CREATE TABLE bench_payload AS SELECT invoice, selector_input FROM orders WHERE status = 'CONFIRMED' LIMIT 1;
UPDATE stock SET on_hand = 1000000000 WHERE warehouse_id = 'WH-BLR' AND sku IN ('TV-55-OLED', 'PHONE-X12');
SQL
[ "$(psql -d "$BASE" -Atc 'SELECT count(*) FROM bench_payload')" = 1 ] || die "the order was not placed ($WORK/serve.log)"

postgres_cpu() {
  python3 - <<'PY'
import os
hz, total = os.sysconf("SC_CLK_TCK"), 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if open(f"/proc/{pid}/comm").read().strip() != "postgres":
            continue
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15]) / hz  # utime stime cutime cstime
    except OSError:
        pass
print(total)
PY
}
echo "postgres-phases: $(psql -d "$BASE" -Atc "SELECT 'PostgreSQL ' || current_setting('server_version') || ', synchronous_commit=' || current_setting('synchronous_commit') || ', fsync=' || current_setting('fsync')")"
echo "postgres-phases: pgbench -n -M prepared -c $CLIENTS -j 2 -T $SECONDS_PER_RUN, a fresh copy of the database per run"
for round in $(seq "$ROUNDS"); do
  for script in fn pipe pipe-checked; do
    COPY="${BASE}_run"
    PGOPTIONS="-c client_min_messages=warning" psql -d postgres -qc "DROP DATABASE IF EXISTS $COPY" \
      -c "CREATE DATABASE $COPY TEMPLATE $BASE"
    before="$(postgres_cpu)"
    out="$(pgbench -n -M prepared -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -f "$HERE/phase1-$script.sql" "$COPY" 2>&1)" ||
      { echo "$out" >&2; die "pgbench failed"; }
    after="$(postgres_cpu)"
    psql -d postgres -qc "DROP DATABASE $COPY"
    python3 - "$script" "$round" "$before" "$after" "$out" <<'PY'
import re, sys
script, round_, before, after, out = sys.argv[1:]
done = int(re.search(r"actually processed: (\d+)", out).group(1))
failed = re.search(r"failed transactions: (\d+)", out)
tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
cpu = (float(after) - float(before)) * 1000 / done
print(f"{script:<12} round {round_}: {done} transactions, {failed.group(1) if failed else 0} failed, {tps:8.1f}/s, "
      f"PostgreSQL CPU {cpu:.3f} ms per phase 1")
PY
  done
done

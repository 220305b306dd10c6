#!/usr/bin/env bash
# The local services the test suite talks to: checks that each answers on
# loopback and starts it when it does not, then waits (bounded) until it
# answers.
#
#   PostgreSQL  127.0.0.1:5432   pg_ctlcluster --skip-systemctl-redirect <version> main start
#   NATS        127.0.0.1:4222   nats-server with JetStream (-js), store in /var/lib/nats-server
#   Kafka       (no daemon)      the tansu broker binary, built once by .ci/kafka.sh into a
#                                cache outside the repository; each Kafka test starts its own.
#                                20–33 minutes the first time, so not built when
#                                SMARTMART_KAFKA_BROKER=skip (below)
#   Chromium    chromium + chromedriver (Debian's packages) for the dashboard
#               test: installed by .ci/chromium.sh when missing
#
# Run by .ci/run and by `cargo xtask test`, so the README's test command
# works on a fresh machine too. Under CI=true a service that cannot be
# started is a failure (exit 1); elsewhere it is a warning, and the tests
# that need it fail with a message saying how to start it.
#
#   SMARTMART_SERVICES_WAIT_SECS   how long to wait for each service (default 30)
#   SMARTMART_KAFKA_BROKER         `build` (default): build the Kafka test broker when it is
#                                  missing; `skip`: use it when built, else only say so, not
#                                  a failure (`cargo xtask test` with a test filter sets this
#                                  outside CI; the Kafka tests then fail saying the broker is
#                                  missing). Under CI=true the broker is always built.
set -uo pipefail
WAIT="${SMARTMART_SERVICES_WAIT_SECS:-30}"
KAFKA_BROKER="${SMARTMART_KAFKA_BROKER:-build}"
[ "${CI:-}" = "true" ] && KAFKA_BROKER=build
NATS_START=(start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server --
            -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log)

say() { echo "services.sh: $*" >&2; }

# PostgreSQL answers when it accepts a connection on 127.0.0.1:5432
# (pg_isready when installed: it also waits out "the database system is starting up").
postgres_answers() {
  if command -v pg_isready >/dev/null; then
    pg_isready -q -h 127.0.0.1 -p 5432 -t 2
  else
    timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5432' 2>/dev/null
  fi
}

# NATS answers when its INFO greeting says JetStream is enabled (a server
# without -js would fail every event test in a less obvious way).
nats_answers() {
  timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/4222 && IFS= read -r line <&3 && [[ $line == INFO* && $line == *"\"jetstream\":true"* ]]' 2>/dev/null
}

postgres_start() {
  command -v pg_ctlcluster >/dev/null || { say "pg_ctlcluster not found (Debian's postgresql package)"; return 1; }
  local version
  version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$version" ] || { say "no cluster in /etc/postgresql"; return 1; }
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
}

nats_start() {
  [ -x /usr/sbin/nats-server ] || { say "/usr/sbin/nats-server not found (Debian's nats-server package)"; return 1; }
  command -v start-stop-daemon >/dev/null || { say "start-stop-daemon not found"; return 1; }
  mkdir -p /var/lib/nats-server && "${NATS_START[@]}"
}

# ensure NAME CHECK START HOW: CHECK, else START and wait until CHECK passes.
ensure() {
  local name="$1" check="$2" start="$3" how="$4"
  if "$check"; then
    say "$name answers"
    return 0
  fi
  say "$name does not answer; starting it: $how"
  "$start" || say "starting $name failed"
  local deadline=$((SECONDS + WAIT))
  while ((SECONDS < deadline)); do
    if "$check"; then
      say "$name answers"
      return 0
    fi
    sleep 0.5
  done
  say "$name still does not answer after ${WAIT}s; start it with: $how"
  return 1
}

failed=0
ensure "PostgreSQL (127.0.0.1:5432)" postgres_answers postgres_start \
  'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start' || failed=1
ensure "NATS with JetStream (127.0.0.1:4222)" nats_answers nats_start "${NATS_START[*]}" || failed=1
case "$KAFKA_BROKER" in
  build)
    if broker="$(bash "$(dirname "$0")/kafka.sh")"; then
      say "the Kafka test broker is ready: $broker"
    else
      say "the Kafka test broker (tansu) could not be built; see above, then run: bash .ci/kafka.sh"
      failed=1
    fi
    ;;
  skip)
    if broker="$(bash "$(dirname "$0")/kafka.sh" --check)"; then
      say "the Kafka test broker is ready: $broker"
    else
      say "the Kafka test broker (tansu) is not built, and this run does not build it (SMARTMART_KAFKA_BROKER=skip: a filtered \`cargo xtask test\`); the Kafka tests fail saying so. Build it once (20–33 minutes) with: bash .ci/kafka.sh"
    fi
    ;;
  *)
    say "SMARTMART_KAFKA_BROKER must be build or skip, not '$KAFKA_BROKER'"
    failed=1
    ;;
esac
bash "$(dirname "$0")/chromium.sh" || failed=1

if ((failed)); then
  if [ "${CI:-}" = "true" ]; then
    say "a service the tests need is not available (see above)"
    exit 1
  fi
  say "warning: continuing without it; the tests that need it will fail"
fi
exit 0

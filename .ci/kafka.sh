#!/usr/bin/env bash
# The Kafka-protocol broker the Kafka sink's tests run against: tansu
# (crates.io), a Kafka-compatible broker in Rust, with two storage engines:
# in memory (`dynostore`, `memory://`), what most tests use, and SQLite
# (`libsql`, `sqlite://`), the one that keeps SCRAM credentials, for the
# tests of a successful SASL login. Built once with `cargo install` and
# cached outside the repository, so a second run only checks the version:
#
#   $SMARTMART_TOOLS/tansu-$TANSU_VERSION-$TANSU_FEATURES/bin/tansu
#   (SMARTMART_TOOLS defaults to ~/.cache/smartmart-tools; the feature set
#   is in the name so that a build with other features is not taken for it)
#
# The tests (tests/integration/kafka.rs) start their own broker from this
# binary, on a free loopback port, one per test. Prints the binary's path on
# its last line. A first build takes about 20 minutes on two busy cores
# (BENCHMARKS.md).
#
# Run by .ci/services.sh (so by .ci/run and `cargo xtask test`). Exits
# non-zero when the broker cannot be built.
#
#   .ci/kafka.sh --check    only says whether it is built: prints the path
#                           and exits 0, or exits 3 and builds nothing (what
#                           a filtered `cargo xtask test` does outside CI)
set -euo pipefail
TANSU_VERSION=0.6.0
# Comma-separated as cargo takes them; `-`-separated in the directory name.
TANSU_FEATURES=dynostore,libsql
TOOLS="${SMARTMART_TOOLS:-$HOME/.cache/smartmart-tools}"
ROOT="$TOOLS/tansu-$TANSU_VERSION-${TANSU_FEATURES//,/-}"
BIN="$ROOT/bin/tansu"

say() { echo "kafka.sh: $*" >&2; }

case "${1:-}" in
  "" | --check) ;;
  *) say "usage: .ci/kafka.sh [--check]"; exit 2 ;;
esac

if [ -x "$BIN" ]; then
  say "tansu $TANSU_VERSION ($TANSU_FEATURES) is installed ($BIN)"
  echo "$BIN"
  exit 0
fi
if [ "${1:-}" = --check ]; then
  say "tansu $TANSU_VERSION ($TANSU_FEATURES) is not built ($BIN)"
  exit 3
fi

say "building tansu $TANSU_VERSION ($TANSU_FEATURES; the Kafka-protocol test broker) into $ROOT; once only"
mkdir -p "$TOOLS"
started=$SECONDS
# The build directory is kept until the install succeeds, so an interrupted
# build resumes where it stopped; it is named after the installation, so
# that two builds of different feature sets never share it.
BUILD="$ROOT.build"
CARGO_TARGET_DIR="$BUILD" \
  cargo install tansu --version "=$TANSU_VERSION" --locked --features "$TANSU_FEATURES" --root "$ROOT" >&2
rm -rf "$BUILD"
say "built tansu in $((SECONDS - started))s"
echo "$BIN"

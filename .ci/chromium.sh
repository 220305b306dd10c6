#!/usr/bin/env bash
# The browser the dashboard test drives: Debian's `chromium` and its
# `chromium-driver` (chromedriver, the WebDriver server of the same build).
# Installs both with apt-get when either is missing (apt-get update first
# when the package lists do not know them yet).
#
# Run by .ci/services.sh (so by .ci/run and `cargo xtask test`). Under
# CI=true a browser that cannot be installed is a failure (exit 1), and the
# dashboard test itself fails without one; elsewhere this is a warning and
# that test fails saying how to install it.
set -uo pipefail

say() { echo "chromium.sh: $*" >&2; }

have() { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }

if have; then
  say "chromium and chromedriver present ($(chromium --version 2>/dev/null | head -n 1))"
  exit 0
fi

install() {
  command -v apt-get >/dev/null || { say "apt-get not found: install Debian's chromium and chromium-driver"; return 1; }
  local apt=(apt-get -o DPkg::Lock::Timeout=300 -y -q)
  if ! apt-cache show chromium-driver >/dev/null 2>&1; then
    "${apt[@]}" update || return 1
  fi
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends chromium chromium-driver fonts-dejavu-core
}

say "chromium or chromedriver missing; installing Debian's chromium and chromium-driver"
if install && have; then
  say "installed $(chromium --version 2>/dev/null | head -n 1)"
  exit 0
fi
if [ "${CI:-}" = "true" ]; then
  say "cannot install chromium; the dashboard test needs it"
  exit 1
fi
say "warning: no chromium; the dashboard test will fail (apt-get install chromium chromium-driver)"
exit 0

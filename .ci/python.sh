#!/usr/bin/env bash
# The test suite's Python tools in a venv of their own, at the exact versions
# of .ci/python-requirements.txt (Schemathesis, openapi-spec-validator and
# every dependency): nothing is pip-installed into the system's Python, so
# this works on Debian's "externally managed" python3 too. Created once,
# outside the repository, beside the Kafka test broker:
#
#   $SMARTMART_TOOLS/python-venv          (SMARTMART_TOOLS defaults to ~/.cache/smartmart-tools)
#
# A later run only compares a stamp (the requirements file and the venv's
# Python version) and prints the path; a changed requirements file, or a venv
# whose Python no longer runs, makes the venv again from scratch. Prints the
# venv's path on its last line.
#
# Run by .ci/schemathesis.sh and by `cargo xtask test`, which puts the venv's
# bin/ first on PATH for the tests (`python3` there is the venv's). Needs
# python3 with its venv module (Debian: apt-get install python3-venv), and
# PyPI the first time.
set -euo pipefail
REQUIREMENTS="$(cd "$(dirname "$0")" && pwd)/python-requirements.txt"
TOOLS="${SMARTMART_TOOLS:-$HOME/.cache/smartmart-tools}"
VENV="$TOOLS/python-venv"
STAMP="$VENV/.smartmart-requirements"

say() { echo "python.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# What the venv was made from: its Python's version and the requirements.
wanted() { "$VENV/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null && cat "$REQUIREMENTS"; }
ready() { [ -f "$STAMP" ] && [ "$(wanted)" = "$(cat "$STAMP")" ]; }

if ready; then
  say "the Python tools are installed ($VENV)"
  echo "$VENV"
  exit 0
fi

# One maker at a time (the tests and Schemathesis may be started at once).
mkdir -p "$TOOLS"
if command -v flock >/dev/null; then
  exec 9>"$TOOLS/python-venv.lock"
  flock 9
  if ready; then
    echo "$VENV"
    exit 0
  fi
fi

command -v python3 >/dev/null || die "python3 is missing (Debian: apt-get install python3 python3-venv)"
# The interpreter a venv is made from: not a venv's own python3 (this one's,
# first on PATH under `cargo xtask test`, would remove itself).
PYTHON="$(python3 -c 'import sys; print(getattr(sys, "_base_executable", "") or sys.executable)')"
started=$SECONDS
say "making the Python tools' venv in $VENV (pinned versions of $(basename "$REQUIREMENTS")); once only"
"$PYTHON" -m venv --clear "$VENV" ||
  die "cannot make a venv with $PYTHON (Debian: apt-get install python3-venv)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --require-virtualenv -r "$REQUIREMENTS" ||
  die "pip install -r $REQUIREMENTS failed (PyPI must be reachable the first time)"
wanted >"$STAMP"
say "installed in $((SECONDS - started))s: $("$VENV/bin/python" -m pip freeze --disable-pip-version-check | grep -iE '^(schemathesis|openapi-spec-validator)==' | tr '\n' ' ')"
echo "$VENV"

#!/usr/bin/env bash
# Runs pyflannel's whole check: set-up, lint, types, the test suite (unit, scenario,
# contract tests against a real etcd, namespace and end-to-end tests against the real
# kernel) and short smoke runs of the benchmarks. Needs root for the namespace tests.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not e2e"`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest "$@"
if [ "$#" -eq 0 ]; then
  echo "== benchmark smoke runs"
  for bench in benchmarks/[!_]*.py; do
    [ -e "$bench" ] || continue
    echo "-- $bench --smoke"
    .venv/bin/python "$bench" --smoke
  done
fi

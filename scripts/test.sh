#!/usr/bin/env bash
# Install everything and run the whole suite: lint, types, tests, benchmarks in --quick mode.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
. .venv/bin/activate
echo "== ruff";  ruff check .
echo "== mypy";  mypy -p tracecanary
echo "== pytest"
set +e
python -m pytest -q -p no:randomly
code=$?
set -e
# pytest exits 5 when it collected no test: that is a failure here, never a silent pass.
[ "$code" = 0 ] || { echo "pytest exited $code"; exit "$code"; }
echo "== demo: every probe once, then one pass per fault, each against its declaration"
timeout 600 tracecanary --log-level WARNING demo --once --chaos --listen 127.0.0.1:0
echo "== benchmarks (--quick)"
for b in benchmarks/*.py; do
  echo "-- $b"
  timeout 300 python "$b" --quick
done

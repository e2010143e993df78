"""The wheel: built by ``python -m build``, installed (not editable) into a fresh venv, it runs the demo.

Built once per session from a copy of the checkout's files (tracked and new, not ignored: what a clone with
these edits holds — no build/, no stale ``*.egg-info``), as ``python -m build`` does it: an sdist, then the wheel
from the sdist. ``--no-isolation``: the build backend comes from this environment (the test extras hold
``build`` and ``setuptools``), so no index is asked. The wheel goes with ``--no-deps --no-index`` into a temp
venv that sees this environment's site-packages through a ``.pth`` line — the dependencies are reused, the
project's editable install is not (a directory named in a ``.pth`` has its own ``.pth`` files ignored, so the
editable finder never runs there). Every command runs from a temp cwd, so the checkout's folders cannot leak in.
"""

from __future__ import annotations

import os
import shutil
import site
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_layout import package_dirs, sources
from tracecanary.demo.world import CHANNELS, REPO

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BUILD_TIMEOUT_S = 300
DEMO_TIMEOUT_S = 420


def _run(cmd: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _checkout_files() -> list[str]:
    """The checkout's files a clone with the local edits would hold (relative paths)."""
    proc = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, timeout=60)
    if proc.returncode == 0:
        return sorted({p for p in proc.stdout.split("\0") if p and os.path.lexists(ROOT / p)})
    skip = {".git", ".venv", "build", "dist", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache",
            ".pytest_cache", ".hypothesis"}
    out = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
        out += [os.path.relpath(Path(dirpath, f), ROOT) for f in filenames]
    return sorted(out)


@dataclass
class Built:
    wheel: Path
    seconds: float


@dataclass
class Installed:
    venv: Path
    python: Path
    tracecanary: Path       # the console script
    package: Path           # site-packages/tracecanary
    seconds: float


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    src = tmp_path_factory.mktemp("checkout")
    for rel in _checkout_files():
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest, follow_symlinks=False)
    out = tmp_path_factory.mktemp("dist")
    start = time.monotonic()
    proc = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                cwd=out, timeout=BUILD_TIMEOUT_S)
    assert proc.returncode == 0, f"python -m build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    (wheel,) = out.glob("tracecanary-*.whl")
    return Built(wheel, time.monotonic() - start)


@pytest.fixture(scope="session")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    venv = tmp_path_factory.mktemp("venv")
    start = time.monotonic()
    proc = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv, timeout=120)
    assert proc.returncode == 0, proc.stderr
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                   cwd=venv, timeout=60).stdout.strip()
    # this environment's site-packages after the venv's own: the dependencies, not the editable project
    Path(purelib, "_tracecanary_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    proc = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                 "--no-index", str(built.wheel)], cwd=venv, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    where = _run([str(python), "-c", "import tracecanary, os; print(os.path.dirname(tracecanary.__file__))"],
                 cwd=venv, timeout=60)
    assert where.returncode == 0, where.stderr
    return Installed(venv, python, venv / "bin" / "tracecanary", Path(where.stdout.strip()),
                     time.monotonic() - start)


def _env() -> dict[str, str]:
    """This environment without anything that points into the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(ROOT)))
    return env


def _wheel_entries(wheel: Path) -> Iterator[zipfile.ZipInfo]:
    with zipfile.ZipFile(wheel) as z:
        yield from z.infolist()


def test_the_wheel_holds_every_module_and_data_file_and_no_symlink(built: Built) -> None:
    entries = list(_wheel_entries(built.wheel))
    names = {e.filename for e in entries}
    links = [e.filename for e in entries if stat.S_ISLNK(e.external_attr >> 16)]
    assert not links, f"symlinks in the wheel: {links}"
    mapping = package_dirs()
    # every module of the mapped folders at its mapped path (a package as its __init__.py)
    expected = {s.module.replace(".", "/") + ("/__init__.py" if s.is_package else ".py")
                for s in sources(ROOT, mapping)}
    assert not expected - names, f"modules missing from the wheel: {sorted(expected - names)}"
    dashboard = ROOT / mapping["tracecanary.daemon"] / "web" / "dashboard"
    data = {f"tracecanary/daemon/web/dashboard/{p.relative_to(dashboard)}"
            for sub in ("templates", "static") for p in (dashboard / sub).rglob("*") if p.is_file()}
    assert data and not data - names, f"dashboard files missing from the wheel: {sorted(data - names)}"
    assert {"tracecanary/config/demo.yaml", "tracecanary/py.typed"} <= names
    # nothing outside the tracecanary package and its metadata (no top-level daemon/, tests/, build/)
    assert {n.split("/")[0] for n in names} == {"tracecanary", built.wheel.name.split("-py3")[0] + ".dist-info"}
    print(f"\nwheel: {built.wheel.name}, {len(names)} files, built in {built.seconds:.1f} s")


def test_the_installed_wheel_validates_its_demo_suite(installed: Installed, tmp_path: Path) -> None:
    assert ROOT not in installed.package.parents and installed.venv in installed.package.parents
    demo_yaml = installed.package / "config" / "demo.yaml"
    env = _env() | {
        "DEMO_INGEST_URL": "http://127.0.0.1:1", "DEMO_SCHEDULER_URL": "http://127.0.0.1:2",
        "DEMO_SLACK_API": "http://127.0.0.1:3/api/", "DEMO_GITHUB_API": "http://127.0.0.1:4",
        "DEMO_KAFKA_BOOTSTRAP": "127.0.0.1:5", "DEMO_WEBHOOK_SECRET": "s", "DEMO_SLACK_SIGNING_SECRET": "z",
        "DEMO_SLACK_USER_TOKEN": "xoxp-user", "DEMO_SLACK_BOT_TOKEN": "xoxb-bot", "DEMO_GITHUB_TOKEN": "ghp-prober",
        "DEMO_BOT_USER": "U0BOT", "DEMO_GITHUB_REPO": REPO, "DEMO_GITHUB_PULL": "1", "DEMO_PRICING_GRPC": "127.0.0.1:6",
        **{f"DEMO_CHANNEL_{k.upper()}": v for k, v in CHANNELS.items()},
    }
    proc = _run([str(installed.tracecanary), "validate", str(demo_yaml)], cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"\ninstalled in {installed.seconds:.1f} s: {installed.package}")


def test_the_installed_wheel_runs_the_demo_once(installed: Installed, tmp_path: Path) -> None:
    start = time.monotonic()
    proc = _run([str(installed.tracecanary), "--log-level", "WARNING", "demo", "--once", "--listen", "127.0.0.1:0"],
                cwd=tmp_path, env=_env(), timeout=DEMO_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    print(f"\ndemo --once from the wheel: {time.monotonic() - start:.1f} s")

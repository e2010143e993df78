"""The layout rules of ``../shared/DESIGN.md`` ("Layout", "Dependency direction"), checked on the source.

Every ``.py`` file of the folders that ``pyproject.toml`` maps to ``tracecanary.*`` (``[tool.setuptools]
package-dir``: ``daemon/`` → ``tracecanary.daemon``, …) is parsed; every import in it — at module level, in a
function, under ``TYPE_CHECKING``, in a ``try`` — is resolved to a module name through the mapping (absolute
``tracecanary.*`` imports, relative imports, ``from tracecanary import demo`` naming a submodule,
``importlib.import_module("…")`` with a literal name) and checked against the rules:

- ``tracecanary.assertions`` imports nothing of ours but itself (pure functions over data);
- ``tracecanary.probes`` imports only itself, ``tracecanary.assertions`` and the root modules
  (``tracecanary``, ``tracecanary.errors``, ``tracecanary.model``, ``tracecanary.integrations``);
- nothing but ``tracecanary.daemon.cli`` (and the demo itself) imports ``tracecanary.demo``; tests are not scanned;
- ``tracecanary.demo`` — the system under test, a stranger to the monitor — imports nothing of ours but itself
  and ``tracecanary.errors``;
- nobody imports a mapped folder by its folder name (``import daemon``): it only exists as ``tracecanary.daemon``.

Besides imports: the ``daemon/`` top level holds at most 8 modules (``__init__.py`` not counted), the package
root ``tracecanary/`` (and every mapped folder) holds no symlinks, and ``[tool.setuptools] packages`` lists every
package the folders hold (a package missing there works in an editable install and is absent from the wheel).
The scanner is tested on a small tree with one violation of each kind (``test_scanner_*``).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]

ROOT_MODULES = frozenset({"tracecanary", "tracecanary.errors", "tracecanary.model", "tracecanary.integrations"})
DAEMON_TOP_LEVEL_MAX = 8


def pyproject(root: Path = ROOT) -> dict[str, object]:
    with (root / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def package_dirs(root: Path = ROOT) -> dict[str, str]:
    """``[tool.setuptools] package-dir``: import name → folder (relative to the repo root)."""
    return dict(pyproject(root)["tool"]["setuptools"]["package-dir"])  # type: ignore[index]


@dataclass(frozen=True)
class Source:
    module: str        # tracecanary.daemon.cli.main
    path: Path         # absolute path of the file
    is_package: bool   # an __init__.py


@dataclass(frozen=True)
class Import:
    line: int
    name: str          # the module imported, resolved: tracecanary.daemon.engine
    code: str          # the statement as written


def sources(root: Path, mapping: Mapping[str, str]) -> list[Source]:
    """Every .py of the mapped folders with its module name; a folder mapped to a deeper name wins."""
    dirs = {name: (root / folder).resolve() for name, folder in mapping.items()}
    found: dict[Path, Source] = {}
    # shortest names first, so a nested mapping ("tracecanary.daemon" = "daemon") overrides its parent's view
    for name, base in sorted(dirs.items(), key=lambda item: item[0].count(".")):
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            if any(part in ("__pycache__", "node_modules") or part.startswith(".") for part in rel.parts):
                continue
            parts = [*name.split("."), *rel.with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            found[path] = Source(".".join(parts), path, is_package)
    return sorted(found.values(), key=lambda s: s.module)


def _literal_import(node: ast.Call) -> str | None:
    """``importlib.import_module("x")`` / ``import_module("x")`` / ``__import__("x")`` with a literal name."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called in ("import_module", "__import__") and node.args:
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
            return arg.value
    return None


def imports(source: Source, modules: frozenset[str]) -> Iterator[Import]:
    """The modules ``source`` imports, anywhere in the file, resolved to absolute names."""
    text = source.path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(source.path))
    lines = text.splitlines()

    def code(node: ast.stmt | ast.expr) -> str:
        return (ast.get_source_segment(text, node) or lines[node.lineno - 1]).strip()

    package = source.module if source.is_package else source.module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(node.lineno, alias.name, code(node))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise AssertionError(f"{source.path}:{node.lineno}: relative import beyond the top package: "
                                         f"{code(node)}")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                # `from tracecanary import demo` imports the module tracecanary.demo; `from x import Name`, x
                yield Import(node.lineno, sub if sub in modules else base, code(node))
        elif isinstance(node, ast.Call) and (name := _literal_import(node)) is not None:
            yield Import(node.lineno, name, code(node))


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def rule_broken(importer: str, imported: str, folder_names: frozenset[str]) -> str | None:
    """Why ``importer`` must not import ``imported`` (None: it may)."""
    if imported.split(".")[0] in folder_names:
        return f"the folder {imported.split('.')[0]}/ is importable only through the mapping, as tracecanary.*"
    if not within(imported, "tracecanary"):
        return None  # the standard library and third-party packages
    if within(importer, "tracecanary.assertions") and not within(imported, "tracecanary.assertions"):
        return "assertions imports nothing of ours but itself"
    if within(importer, "tracecanary.probes") and not (
        within(imported, "tracecanary.probes") or within(imported, "tracecanary.assertions")
        or imported in ROOT_MODULES
    ):
        return ("probes imports only tracecanary.assertions, itself and the root modules "
                f"({', '.join(sorted(ROOT_MODULES))})")
    if within(imported, "tracecanary.demo") and not (
        within(importer, "tracecanary.demo") or within(importer, "tracecanary.daemon.cli")
    ):
        return "only tracecanary.daemon.cli (and tests) import tracecanary.demo"
    if within(importer, "tracecanary.demo") and not (
        within(imported, "tracecanary.demo") or imported == "tracecanary.errors"
    ):
        return ("demo (the system under test) imports nothing of daemon, probes or assertions; "
                "of ours at most tracecanary.errors")
    return None


def import_violations(root: Path, mapping: Mapping[str, str]) -> list[str]:
    found = sources(root, mapping)
    modules = frozenset(s.module for s in found)
    # the mapped folders' own names (daemon, probes, …), never importable as such
    folder_names = frozenset(Path(folder).name for name, folder in mapping.items() if name != "tracecanary")
    problems = []
    for source in found:
        for imp in imports(source, modules):
            why = rule_broken(source.module, imp.name, folder_names)
            if why:
                rel = os.path.relpath(source.path, root)
                problems.append(f"{rel}:{imp.line}: {source.module} imports {imp.name} (`{imp.code}`): {why}")
    return problems


def symlinks(root: Path, mapping: Mapping[str, str]) -> list[str]:
    """Symlinks in the package root or any mapped folder (files and folders are real, the mapping maps them)."""
    found = []
    for folder in sorted(set(mapping.values())):
        base = root / folder
        if base.is_symlink():
            found.append(f"{folder}/ is a symlink to {os.readlink(base)}")
            continue
        for dirpath, dirnames, filenames in os.walk(base):  # os.walk does not descend into linked folders
            for name in [*dirnames, *filenames]:
                path = Path(dirpath, name)
                if path.is_symlink():
                    found.append(f"{path.relative_to(root)} is a symlink to {os.readlink(path)}")
    return found


def daemon_top_level(root: Path, mapping: Mapping[str, str]) -> list[str]:
    base = root / mapping["tracecanary.daemon"]
    return sorted(p.name for p in base.glob("*.py") if p.name != "__init__.py")


def unlisted_packages(root: Path, mapping: Mapping[str, str], listed: list[str]) -> tuple[list[str], list[str]]:
    """(packages the folders hold that pyproject does not list, listed packages that have no folder)."""
    held = {s.module for s in sources(root, mapping) if s.is_package}
    missing = sorted(held - set(listed))
    stale = []
    for name in listed:
        owner = max((m for m in mapping if within(name, m)), key=len, default=None)
        rest = name[len(owner):].lstrip(".").split(".") if owner and name != owner else []
        if owner is None or not Path(root, mapping[owner], *rest).is_dir():
            stale.append(name)
    return missing, stale


# ---- the rules, on this repository ---------------------------------------------------------------------


def test_every_mapped_folder_is_scanned() -> None:
    mapping = package_dirs()
    assert {"tracecanary", "tracecanary.daemon", "tracecanary.probes", "tracecanary.assertions",
            "tracecanary.demo"} <= set(mapping)
    scanned = {s.module.split(".")[1] if "." in s.module else "" for s in sources(ROOT, mapping)}
    assert {"", "daemon", "probes", "assertions", "demo"} <= scanned
    assert len(sources(ROOT, mapping)) > 100


def test_imports_follow_the_dependency_direction() -> None:
    problems = import_violations(ROOT, package_dirs())
    assert not problems, "imports against ../shared/DESIGN.md's dependency direction:\n" + "\n".join(problems)


def test_daemon_top_level_is_small() -> None:
    top = daemon_top_level(ROOT, package_dirs())
    assert len(top) <= DAEMON_TOP_LEVEL_MAX, (
        f"daemon/ holds {len(top)} top-level modules (at most {DAEMON_TOP_LEVEL_MAX}: the rest lives in the concept "
        f"folders): {', '.join(top)}")


def test_no_symlinks_in_the_package_root_or_the_mapped_folders() -> None:
    found = symlinks(ROOT, package_dirs())
    assert not found, "pyproject's package-dir maps the folders; no symlinks:\n" + "\n".join(found)


def test_pyproject_lists_every_package() -> None:
    listed = pyproject()["tool"]["setuptools"]["packages"]  # type: ignore[index]
    missing, stale = unlisted_packages(ROOT, package_dirs(), listed)
    assert not missing, f"packages absent from [tool.setuptools] packages (and so from the wheel): {missing}"
    assert not stale, f"[tool.setuptools] packages names packages without a folder: {stale}"


# ---- the package as the interpreter and the static tools see it ----------------------------------------


@pytest.mark.parametrize("cwd", ["checkout", "elsewhere"])
def test_the_editable_install_imports_from_any_cwd(cwd: str, tmp_path: Path) -> None:
    """``python -c``/``-m`` put the cwd first on sys.path, as ``python -m pytest`` does: from the checkout,
    ``tracecanary`` is the repo's root folder (no subpackages in it) and the editable finder maps the rest."""
    code = ("import tracecanary.daemon.cli.main as m, tracecanary.demo.shop.ingest as d\n"
            "print(m.__file__); print(d.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT if cwd == "checkout" else tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    if cwd == "checkout":
        mapping = package_dirs()
        assert [Path(line) for line in proc.stdout.split()] == [
            ROOT / mapping["tracecanary.daemon"] / "cli" / "main.py",
            ROOT / mapping["tracecanary.demo"] / "shop" / "ingest.py"]


def _load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


typing_tree = _load_script(ROOT / "scripts" / "typing_tree.py")


def test_static_tools_read_the_package_from_the_typing_tree() -> None:
    tree = ROOT / typing_tree.TREE
    tool = pyproject()["tool"]
    assert tool["mypy"]["mypy_path"] == f"$MYPY_CONFIG_FILE_DIR/{typing_tree.TREE.as_posix()}"  # type: ignore[index]
    assert tool["pyright"]["extraPaths"] == [typing_tree.TREE.as_posix()]  # type: ignore[index]
    missing = []
    for s in sources(ROOT, package_dirs()):
        seen = tree.joinpath(*s.module.split("."), "__init__.py") if s.is_package \
            else tree.joinpath(*s.module.split(".")).with_suffix(".py")
        if not (seen.exists() and seen.samefile(s.path)):
            missing.append(s.module)
    assert not missing, (f"{tree.relative_to(ROOT)} does not show {missing}: run `python scripts/typing_tree.py` "
                         "(scripts/install.sh does); mypy and pyright read the package there")


def test_typing_tree_links_the_mapping(toy: Path) -> None:
    (toy / "tracecanary" / "py.typed").write_text("")
    (toy / "pyproject.toml").write_text(
        "[tool.setuptools]\npackage-dir = {" + ", ".join(f'"{k}" = "{v}"' for k, v in TOY_MAPPING.items()) + "}\n")
    out = typing_tree.build(toy, Path("build", "typing"))
    assert (out / "tracecanary").is_dir() and not (out / "tracecanary").is_symlink()
    assert os.readlink(out / "tracecanary" / "daemon") == "../../../daemon"
    assert os.readlink(out / "tracecanary" / "errors.py") == "../../../tracecanary/errors.py"
    assert (out / "tracecanary" / "daemon" / "web" / "api.py").samefile(toy / "daemon" / "web" / "api.py")
    (toy / "daemon" / "new.py").write_text("")  # a module added later is seen without a rebuild
    assert (out / "tracecanary" / "daemon" / "new.py").exists()
    typing_tree.build(toy, Path("build", "typing"))  # rebuilt in place
    assert sorted(p.name for p in (out / "tracecanary").iterdir()) == [
        "__init__.py", "assertions", "daemon", "demo", "errors.py", "model.py", "probes", "py.typed"]


# ---- the scanner catches what it should ----------------------------------------------------------------

TOY_MAPPING = {"tracecanary": "tracecanary", "tracecanary.daemon": "daemon", "tracecanary.probes": "probes",
               "tracecanary.assertions": "assertions", "tracecanary.demo": "demo"}

TOY_FILES = {
    "tracecanary/__init__.py": "",
    "tracecanary/errors.py": "class Error(Exception): ...\n",
    "tracecanary/model.py": "",
    "assertions/__init__.py": "",
    "assertions/pure.py": (
        "from tracecanary.assertions import pure\n"                  # itself: fine
        "def f():\n"
        "    from tracecanary.errors import Error\n"                 # 3: in a function
        "    return Error\n"
    ),
    "probes/__init__.py": "",
    "probes/http.py": (
        "from typing import TYPE_CHECKING\n"
        "from tracecanary.errors import Error\n"                     # root module: fine
        "from ..assertions import pure\n"                            # relative, assertions: fine
        "if TYPE_CHECKING:\n"
        "    from tracecanary.daemon.engine import Engine\n"         # 5: under TYPE_CHECKING
    ),
    "daemon/__init__.py": "",
    "daemon/engine.py": "import importlib\nmod = importlib.import_module('tracecanary.demo.world')\n",  # 2
    "daemon/web/__init__.py": "",
    "daemon/web/api.py": "from ... import demo\nfrom .. import engine\n",  # 1: tracecanary.demo, relative
    "daemon/cli/__init__.py": "",
    "daemon/cli/demo.py": "from tracecanary.demo.world import start\nimport tracecanary.demo\n",  # fine
    "demo/__init__.py": "",
    "demo/world.py": (
        "from tracecanary.errors import Error\n"                     # fine
        "from .emulators import sentry\n"                            # fine
        "def start(): ...\n"
    ),
    "demo/emulators/__init__.py": "",
    "demo/emulators/sentry.py": (
        "try:\n"
        "    from ...daemon.spans import convert\n"                  # 2: relative, into the daemon
        "except ImportError:\n"
        "    pass\n"
        "from tracecanary.model import Model\n"                      # 5: not errors
        "import daemon.app\n"                                        # 6: folder name
    ),
}


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    for rel, text in TOY_FILES.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_scanner_resolves_module_names_through_the_mapping(toy: Path) -> None:
    found = {s.module: s for s in sources(toy, TOY_MAPPING)}
    assert found["tracecanary.daemon.web.api"].path == (toy / "daemon/web/api.py").resolve()
    assert found["tracecanary.demo.emulators"].is_package
    assert "tracecanary.errors" in found and "daemon.engine" not in found


def test_scanner_finds_each_kind_of_violation(toy: Path) -> None:
    problems = import_violations(toy, TOY_MAPPING)
    located = sorted(p.split(": ", 1)[0] + " " + p.split(" imports ", 1)[1].split(" ", 1)[0] for p in problems)
    assert located == sorted([
        "assertions/pure.py:3 tracecanary.errors",
        "probes/http.py:5 tracecanary.daemon.engine",
        "daemon/engine.py:2 tracecanary.demo.world",
        "daemon/web/api.py:1 tracecanary.demo",
        "demo/emulators/sentry.py:2 tracecanary.daemon.spans",
        "demo/emulators/sentry.py:5 tracecanary.model",
        "demo/emulators/sentry.py:6 daemon.app",
    ]), "\n".join(problems)
    # a message names the file, the line, the import as written and the rule
    (msg,) = [p for p in problems if p.startswith("probes/http.py:5:")]
    assert "`from tracecanary.daemon.engine import Engine`" in msg and "probes imports only" in msg


def test_scanner_flags_symlinks_and_a_crowded_daemon(toy: Path) -> None:
    (toy / "tracecanary" / "daemon").symlink_to("../daemon")
    assert symlinks(toy, TOY_MAPPING) == ["tracecanary/daemon is a symlink to ../daemon"]
    for i in range(DAEMON_TOP_LEVEL_MAX):
        (toy / "daemon" / f"m{i}.py").write_text("")
    assert len(daemon_top_level(toy, TOY_MAPPING)) == DAEMON_TOP_LEVEL_MAX + 1  # engine.py + 8


def test_scanner_flags_unlisted_packages(toy: Path) -> None:
    listed = ["tracecanary", "tracecanary.daemon", "tracecanary.daemon.cli", "tracecanary.probes",
              "tracecanary.assertions", "tracecanary.demo", "tracecanary.demo.emulators", "tracecanary.gone"]
    missing, stale = unlisted_packages(toy, TOY_MAPPING, listed)
    assert missing == ["tracecanary.daemon.web"]
    assert stale == ["tracecanary.gone"]

#!/usr/bin/env python3
"""Write build/typing/: the ``tracecanary`` package as pyproject's ``package-dir`` maps it, made of symlinks,
for the static tools (mypy, pyright/Pylance) that cannot run an editable install's import finder.

    build/typing/tracecanary/__init__.py … py.typed  -> ../../../tracecanary/…   (one link per entry)
    build/typing/tracecanary/daemon                 -> ../../../daemon           (one link per mapped folder)

Folders are linked whole, so a module added to daemon/ is seen at once; re-run this script (scripts/install.sh
does) when the mapping itself changes. pyproject points mypy (``mypy_path``) and pyright (``extraPaths``) here.
The tree is generated and git-ignored (build/); the repository itself holds no symlinks.
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = Path("build", "typing")


def build(root: Path = ROOT, tree: Path = TREE) -> Path:
    with (root / "pyproject.toml").open("rb") as f:
        mapping: dict[str, str] = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    out = root / tree
    if out.exists() or out.is_symlink():
        shutil.rmtree(out)  # removes the links, never what they point to
    for name in sorted(mapping, key=lambda n: n.count(".")):
        source = (root / mapping[name]).resolve()
        dest = out.joinpath(*name.split("."))
        inner = {m[len(name) + 1:].split(".")[0] for m in mapping if m.startswith(name + ".")}
        if inner:  # a real folder whose entries are linked one by one, leaving room for the mapped ones
            dest.mkdir(parents=True, exist_ok=True)
            for entry in sorted(source.iterdir()):
                if entry.name not in inner and entry.name != "__pycache__":
                    (dest / entry.name).symlink_to(os.path.relpath(entry, dest))
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(os.path.relpath(source, dest.parent), target_is_directory=True)
    return out


if __name__ == "__main__":
    print(f"typing tree: {build().relative_to(ROOT)}", file=sys.stderr)

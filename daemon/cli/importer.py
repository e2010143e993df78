"""``tracecanary import tracetest FILE… [-o suite.yaml] [--source NAME]``: Tracetest tests → a suite.

The suite holds only ``probes:`` (settings and integrations stay the operator's). Everything that did
not convert is printed to stderr as ``file:line: why``. Exit 0 when everything converted, 1 when the
suite was written with omissions, 2 when an input is unreadable (nothing is written then).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

from tracecanary.daemon.cli.tracetest_docs import UnreadableInputError
from tracecanary.daemon.cli.tracetest_import import Conversion, convert_files

EXIT_OK, EXIT_OMISSIONS, EXIT_UNREADABLE = 0, 1, 2


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (an inlined .proto) as ``|`` blocks, as a person would write them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def render_suite(conv: Conversion, inputs: list[Path]) -> str:
    """The converted suite as YAML: a header (inputs, environment variables, omissions), then ``probes:``."""
    lines = [f"# converted from Tracetest by `tracecanary import tracetest`: {', '.join(map(str, inputs))}"]
    if conv.env:
        lines.append(f"# environment variables read at load (were ${{var:…}}/${{env:…}}): {', '.join(sorted(conv.env))}")
    if conv.omissions:
        lines.append(f"# {len(conv.omissions)} item(s) not converted (listed on stderr by the import)")
    if not conv.probes:
        return "\n".join([*lines, "probes: []", ""])
    lines.append("probes:")
    for comment, probe in conv.probes:
        lines.append("")
        lines += [f"  # {c}" if c else "  #" for c in comment.splitlines()]
        dumped = yaml.dump([probe], Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
        lines += [f"  {line}" if line else line for line in dumped.rstrip("\n").splitlines()]
    return "\n".join(lines) + "\n"


def cmd_import_tracetest(files: list[str], output: str | None, source: str, out: TextIO = sys.stdout,
                         err: TextIO = sys.stderr) -> int:
    """Convert, write the suite (``output`` or stdout), list omissions on ``err``; the exit code."""
    inputs = [Path(f) for f in files]
    try:
        conv = convert_files(inputs, source)
    except UnreadableInputError as e:
        print(f"tracecanary import tracetest: {e}", file=err)
        return EXIT_UNREADABLE
    text = render_suite(conv, inputs)
    if output:
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as e:
            print(f"tracecanary import tracetest: cannot write {output}: {e.strerror or e}", file=err)
            return EXIT_UNREADABLE
    else:
        out.write(text)
    for omission in conv.omissions:
        print(str(omission), file=err)
    summary: dict[str, Any] = {"probes": len(conv.probes), "omissions": len(conv.omissions)}
    print(f"tracecanary import tracetest: {summary['probes']} probe(s) written to {output or 'stdout'}, "
          f"{summary['omissions']} item(s) not converted", file=err)
    return EXIT_OMISSIONS if conv.omissions else EXIT_OK


__all__ = ["cmd_import_tracetest", "render_suite"]

"""``tracecanary assert``, ``expect`` and ``trace show``: judge recorded traces, propose expectations,
print a trace waterfall from a file, the results store, Sentry, Jaeger or Tempo.

Exit codes (DESIGN "Semantics"): 0 pass or degraded, 1 fail, 2 bad input. Every input error
names its file (and for expectation files the line of the offending key).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import anyio
import yaml
from pydantic import ValidationError

from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.explain import render_text
from tracecanary.assertions.judge import TraceJudge
from tracecanary.assertions.propose import propose
from tracecanary.assertions.spans import Span
from tracecanary.daemon.config.links import LinkSettings, host_of, render_links
from tracecanary.daemon.spans.files import load_spans, render_waterfall
from tracecanary.daemon.spans.sources import NEEDS, build_source
from tracecanary.errors import ConfigError, TracecanaryError
from tracecanary.integrations import Integrations, SentryIntegration

log = logging.getLogger("tracecanary.offline")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class OfflineInputError(TracecanaryError):
    """A trace or expectation file that cannot be used; the message names the file."""


def _load_traces(paths: Sequence[str]) -> list[list[Span]]:
    out = []
    for path in paths:
        try:
            spans = load_spans(path)
        except (OSError, ValueError, TracecanaryError) as e:  # TraceFileError's message names the file
            msg = str(e)
            raise OfflineInputError(msg if path in msg else f"{path}: {msg}") from e
        if not spans:
            raise OfflineInputError(f"{path}: no spans in the file")
        out.append(spans)
    return out


def _line_of(node: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """The YAML line of a validation error location (best effort)."""
    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


def load_expectation(path: str) -> TraceExpectation:
    """The ``expect.trace`` mapping from a YAML/JSON file (a whole ``expect: {trace: …}`` is unwrapped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise OfflineInputError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        data: Any = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        raise OfflineInputError(f"{path}: invalid YAML: {e}") from e
    prefix: list[str] = []
    if isinstance(data, dict) and set(data) == {"expect"} and isinstance(data["expect"], dict):
        data, prefix = data["expect"], ["expect"]
    if isinstance(data, dict) and set(data) == {"trace"}:
        data, prefix = data["trace"], [*prefix, "trace"]
    if not isinstance(data, dict):
        raise OfflineInputError(f"{path}: expected a mapping (tree, forbid, limits, …), got {type(data).__name__}")
    try:
        return TraceExpectation.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = [*prefix, *err["loc"]]
            line = _line_of(root, loc)
            where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"]).replace(".[", "[")
            lines.append(f"{path}{f':{line}' if line else ''} {where or '(root)'}: {err['msg']}")
        raise OfflineInputError("\n".join(lines)) from e


def cmd_assert(trace_paths: list[str], expect_path: str, trace_id: str | None, fmt: str) -> int:
    """Judge recorded trace file(s) against an expectation; print text or JSON; exit 0/1/2."""
    try:
        expectation = load_expectation(expect_path)
        spans = [s for batch in _load_traces(trace_paths) for s in batch]
    except OfflineInputError as e:
        print(f"tracecanary assert: {e}", file=sys.stderr)
        return EXIT_USAGE
    if trace_id is not None:
        trace_id = trace_id.lower()
        if not any(s.trace_id == trace_id for s in spans):
            print(f"tracecanary assert: trace id {trace_id} is not in {', '.join(trace_paths)}", file=sys.stderr)
            return EXIT_USAGE
    judge = TraceJudge(expectation, root_trace_id=trace_id, trigger_ns=None)
    judge.feed(spans)
    judge.last_arrival_unix_ns = None  # offline, arrival time means nothing
    report = judge.report()
    if fmt == "json":
        print(json.dumps(report, indent=2, sort_keys=False))
    else:
        print(render_text(report))
    log.info("assert verdict=%s spans=%d", report["verdict"], report["span_count"])
    return EXIT_OK if report["verdict"] in ("pass", "degraded") else EXIT_FAIL


def _examples(batches: list[list[Span]]) -> list[list[Span]]:
    """One example per group of traces joined by span links (a producer and its consumers)."""
    out: list[list[Span]] = []
    for spans in batches:
        by_trace: dict[str, list[Span]] = {}
        for s in spans:
            by_trace.setdefault(s.trace_id, []).append(s)
        edges: dict[str, set[str]] = {t: set() for t in by_trace}
        for s in spans:
            for ln in s.links:
                if ln.trace_id in by_trace and ln.trace_id != s.trace_id:
                    edges[s.trace_id].add(ln.trace_id)
                    edges[ln.trace_id].add(s.trace_id)
        seen: set[str] = set()
        for start in by_trace:
            if start in seen:
                continue
            group, stack = [], [start]
            while stack:
                t = stack.pop()
                if t in seen:
                    continue
                seen.add(t)
                group.extend(by_trace[t])
                stack.extend(edges[t])
            out.append(group)
    return out


def cmd_expect(trace_paths: list[str], root: str | None, out: TextIO) -> int:
    """Print a proposed ``expect.trace`` document (YAML) from recorded healthy traces."""
    try:
        examples = _examples(_load_traces(trace_paths))
        if root is not None:
            examples = [ex for ex in examples if any(s.name == root for s in ex)]
            if not examples:
                raise OfflineInputError(f"no trace in {', '.join(trace_paths)} has a span named {root!r}")
        doc = propose(examples, root_name=root)
    except (TracecanaryError, ValueError) as e:
        print(f"tracecanary expect: {e}", file=sys.stderr)
        return EXIT_USAGE
    TraceExpectation.model_validate(doc)  # what we print must load
    out.write(f"# proposed from {len(examples)} example trace(s): {', '.join(trace_paths)}\n")
    out.write("# paste under expect.trace: in a suite, or pass to `tracecanary assert --expect`\n")
    out.write(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return EXIT_OK


# trace show

def cmd_trace_show(args: argparse.Namespace) -> int:
    color = sys.stdout.isatty()
    try:
        if args.source == "file":
            spans = load_spans(args.target)
            if not spans:
                print(f"{args.target}: no spans", file=sys.stderr)
                return 1
            print(render_waterfall(spans, color=color))
            return 0
        if args.source == "store":
            return anyio.run(_from_store, args, color)
        return anyio.run(_from_pull, args)
    except (OSError, ValueError, TracecanaryError) as e:
        if isinstance(e, ConfigError):
            raise
        print(f"tracecanary trace show: {e}", file=sys.stderr)
        return 2


def _store_url(args: argparse.Namespace) -> str:
    if args.store:
        return str(args.store)
    if args.config:
        from tracecanary.daemon.config.load import load_config

        return load_config(args.config).daemon.store
    raise ValueError("--source store needs --store URL or --config CONFIG")


async def _from_store(args: argparse.Namespace, color: bool) -> int:
    from tracecanary.daemon.store.urls import open_store

    store = open_store(_store_url(args))
    await store.open()
    try:
        match = await store.runs_for_trace(args.target.lower())
        if not match:
            print(f"no recorded run with trace id or run id {args.target}", file=sys.stderr)
            return 1
        run = await store.get_run(match[0].run_id, with_spans=True)
        assert run is not None
        print(f"run {run.run_id} probe {run.probe_id} attempt {run.attempt} "
              f"verdict {run.verdict.value if run.verdict else run.status.value}")
        for f in run.findings:
            print(f"  ✗ {f}")
        print(render_waterfall(run.spans, color=color) if run.spans else "(no spans recorded)")
        for name, url in run.links.items():
            print(f"{name}: {url}")
        return 0
    finally:
        await store.aclose()


async def _from_pull(args: argparse.Namespace) -> int:
    if not args.config:
        raise ValueError(f"--source {args.source} needs --config CONFIG ({NEEDS[args.source]})")
    from tracecanary.daemon.config.load import load_config

    cfg = load_config(args.config)
    trace_id = args.target.lower()
    print(await show_pulled_trace(args.source, cfg.integrations, trace_id, cfg.extra.links))
    return 0


def render_errors(spans: list[Span]) -> list[str]:
    """One line per exception event: span, service, ``Type: message``, level and Sentry event id."""
    lines = []
    for span in sorted(spans, key=lambda s: s.start_ns):
        for ev in span.events:
            if ev.name != "exception":
                continue
            a = ev.attributes
            # Without its event the type is unknown: show Sentry's own text rather than "None: …".
            what = f"{a['exception.type']!s}: " if a.get("exception.type") else ""
            lines.append(
                f"  ✗ {span.name} ({span.service or '?'}): {what}"
                f"{a.get('exception.message')!s} [{a.get('sentry.level', 'error')!s}, event {a.get('sentry.event_id', '?')!s}]"
            )
    return lines


async def show_sentry_trace(integration: SentryIntegration, trace_id: str,
                            links: LinkSettings | Mapping[str, str] | None = None, **options: Any) -> str:
    """The waterfall of ``trace_id`` as Sentry holds it, its errors, then the trace links
    (``options``: those of :func:`show_pulled_trace`)."""
    return await show_pulled_trace("sentry", Integrations(sentry=integration), trace_id, links, **options)


async def show_pulled_trace(
    name: str,
    integrations: Integrations,
    trace_id: str,
    links: LinkSettings | Mapping[str, str] | None = None,
    *,
    session: aiohttp.ClientSession | None = None,
    timeout_s: float = 30.0,
    color: bool = False,
) -> str:
    """The waterfall of ``trace_id`` as a pull source (``name``: sentry, jaeger, tempo) holds it, the errors
    Sentry attached, then the trace links."""
    trace_id = trace_id.lower()
    spans = await _fetch(name, integrations, trace_id, session, timeout_s)
    if not spans:
        lines = [f"trace {trace_id}: no spans in Sentry yet (Sentry ingests with a delay; retry shortly)"
                 if name == "sentry" else
                 f"trace {trace_id}: not in {name.capitalize()} (yet: backends ingest with a delay; retry shortly)"]
    else:
        lines = [render_waterfall(spans, color=color).rstrip("\n")]
        errors = render_errors(spans) if name == "sentry" else []
        if errors:
            lines += ["errors:", *errors]
    return "\n".join(lines + _links(links, trace_id, integrations.sentry))


async def _fetch(name: str, integrations: Integrations, trace_id: str, session: aiohttp.ClientSession | None,
                 timeout_s: float) -> list[Span]:
    async def fetch(s: aiohttp.ClientSession) -> list[Span]:
        with anyio.fail_after(timeout_s):
            return await build_source(name, s, integrations, request_timeout_s=timeout_s).fetch(trace_id)

    if session is not None:
        return await fetch(session)
    async with aiohttp.ClientSession() as own:
        return await fetch(own)


def _links(links: LinkSettings | Mapping[str, str] | None, trace_id: str, sentry: SentryIntegration) -> list[str]:
    settings = links if isinstance(links, LinkSettings) else LinkSettings(dict(links or {}))
    rendered = render_links(settings, trace_id=trace_id, org=sentry.org, host=host_of(sentry.api_url))
    return [f"{name}: {url}" for name, url in rendered.items()]

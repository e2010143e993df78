"""``tracecanary trace show``: a trace waterfall from a file, the results store, or Sentry."""

from __future__ import annotations

import argparse
import sys

import anyio

from tracecanary.errors import ConfigError, TracecanaryError

from .spans.files import load_spans, render_waterfall


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
        return anyio.run(_from_sentry, args)
    except (OSError, ValueError, TracecanaryError) as e:
        if isinstance(e, ConfigError):
            raise
        print(f"tracecanary trace show: {e}", file=sys.stderr)
        return 2


def _store_url(args: argparse.Namespace) -> str:
    if args.store:
        return str(args.store)
    if args.config:
        from .config import load_config

        return load_config(args.config).daemon.store
    raise ValueError("--source store needs --store URL or --config CONFIG")


async def _from_store(args: argparse.Namespace, color: bool) -> int:
    from .store.sqlite import open_store

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


async def _from_sentry(args: argparse.Namespace) -> int:
    if not args.config:
        raise ValueError("--source sentry needs --config CONFIG (integrations.sentry: org, token, api_url)")
    from .config import load_config
    from .spans.sentry import show_sentry_trace

    cfg = load_config(args.config)
    text = await show_sentry_trace(cfg.integrations.sentry, args.target.lower(), cfg.extra.links)
    print(text)
    return 0

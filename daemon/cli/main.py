"""The ``tracecanary`` command: run, check, validate, assert, expect, trace show, import, demo, schema.

Exit codes, every command: 0 = all pass (degraded counts as pass), 1 = any fail or error or a failed
``--fail-if`` gate, 2 = config, usage or startup problem.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

import anyio

from tracecanary.daemon.engine import Overrides
from tracecanary.daemon.store.base import StoreFault
from tracecanary.errors import ConfigError, StartupError, TracecanaryError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_addresses(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", help="API/dashboard/metrics address (host:port)")
    p.add_argument("--otlp-http", help="OTLP/HTTP receiver address (host:port, or none)")
    p.add_argument("--otlp-grpc", help="OTLP/gRPC receiver address (host:port, or none)")
    p.add_argument("--store", help="results store URL, e.g. sqlite:////var/lib/tracecanary/tc.db")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tracecanary", description="Synthetic probes judged by their traces.")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="run the daemon: schedule every probe, serve OTLP, API, dashboard, /metrics")
    p.add_argument("config", help="suite file or directory")
    _add_addresses(p)

    p = sub.add_parser("check", help="run each probe once (or N times), print a report, exit 0/1/2")
    p.add_argument("config")
    p.add_argument("--probe", action="append", default=[], metavar="GLOB", help="probe id or tag glob (repeatable)")
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--junit", metavar="FILE")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--markdown", metavar="FILE")
    p.add_argument("--record", metavar="DIR", help="write each run's trace to DIR as OTLP JSON Lines")
    p.add_argument("--fail-if", action="append", default=[], metavar="GATE",
                   help='e.g. "p95 > 500ms" or "error_rate > 1%%" (repeatable)')
    _add_addresses(p)

    p = sub.add_parser("validate", help="validate a suite; print every error; exit 0 or 2")
    p.add_argument("config")

    p = sub.add_parser("schema", help="print the JSON Schema of suite files")

    p = sub.add_parser("assert", help="judge a recorded trace offline")
    p.add_argument("--trace", action="append", required=True, metavar="FILE")
    p.add_argument("--expect", required=True, metavar="FILE")
    p.add_argument("--trace-id")
    p.add_argument("--format", choices=("text", "json"), default="text")

    p = sub.add_parser("expect", help="propose an expect.trace document from recorded healthy traces")
    p.add_argument("--from", dest="sources", nargs="+", required=True, metavar="TRACE_FILE")
    p.add_argument("--root", metavar="NAME")

    p = sub.add_parser("trace", help="inspect traces")
    tsub = p.add_subparsers(dest="trace_command", required=True, parser_class=_Parser)
    show = tsub.add_parser("show", help="print a trace waterfall from a file, the store, Sentry, Jaeger or Tempo")
    show.add_argument("target", help="trace file, or a trace id with --source")
    show.add_argument("--source", choices=("file", "store", "sentry", "jaeger", "tempo"), default="file")
    show.add_argument("--config", help="suite (for the store URL and the Sentry/Jaeger/Tempo integration)")
    show.add_argument("--store", help="results store URL (with --source store)")

    p = sub.add_parser("import", help="convert tests from another tool into a suite")
    isub = p.add_subparsers(dest="import_command", required=True, parser_class=_Parser)
    tt = isub.add_parser("tracetest", help="Tracetest tests and test suites → probes; exit 0, 1 (omissions) or 2")
    tt.add_argument("files", nargs="+", metavar="FILE", help="Tracetest resource files (Test, TestSuite, PollingProfile)")
    tt.add_argument("-o", "--output", metavar="SUITE", help="write the suite here (default: stdout)")
    tt.add_argument("--source", choices=("buffer", "sentry", "jaeger", "tempo"), default="buffer",
                    help="expect.trace.source of the probes (default: buffer)")

    p = sub.add_parser("demo", help="start the demo world and the daemon against it")
    p.add_argument("--once", action="store_true", help="run every demo probe once and exit with the verdicts")
    p.add_argument("--chaos", action="store_true", help="inject faults (with --once: one pass per fault)")
    _add_addresses(p)
    return parser


def _overrides(args: argparse.Namespace) -> Overrides:
    return Overrides(listen=args.listen, otlp_http=args.otlp_http, otlp_grpc=args.otlp_grpc, store=args.store)


def _print_config_errors(e: ConfigError) -> None:
    for line in e.errors:
        print(line, file=sys.stderr)
    print(f"{len(e.errors)} error{'s' if len(e.errors) != 1 else ''}", file=sys.stderr)


class _Formatter(logging.Formatter):
    """``time level logger message`` plus ``trace_id=…`` when the record was logged inside a run."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        trace_id = getattr(record, "trace_id", "")
        return f"{text} trace_id={trace_id}" if trace_id else text


def _setup_logging(level: str) -> None:
    from tracecanary.daemon.observe.telemetry import TraceContextFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(TraceContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(str(args.log_level))
    try:
        return _dispatch(args)
    except ConfigError as e:
        _print_config_errors(e)
        return EXIT_USAGE
    except (StartupError, StoreFault) as e:
        print(_one_line(e), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAIL
    except BaseExceptionGroup as group:
        startup = _leaf(group, (StartupError, StoreFault))
        if startup is None:
            raise
        print(_one_line(startup), file=sys.stderr)
        return EXIT_USAGE


def _one_line(e: TracecanaryError) -> str:
    """A startup problem as the one line the command prints (no traceback: the message says it all)."""
    text = " ".join(str(e).split())
    return f"tracecanary: store: {text}" if isinstance(e, StoreFault) else f"tracecanary: {text}"


def _leaf(group: BaseExceptionGroup[BaseException],
          kind: tuple[type[TracecanaryError], ...]) -> TracecanaryError | None:
    """The first exception of ``kind`` inside a (nested) exception group from a task group."""
    for exc in group.exceptions:
        if isinstance(exc, kind):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _leaf(exc, kind)
            if found is not None:
                return found
    return None


def _dispatch(args: argparse.Namespace) -> int:
    from tracecanary.daemon.config.load import load_config

    cmd = args.command
    if cmd == "validate":
        cfg = load_config(args.config)
        for warning in cfg.warnings:  # printed, never an error: the exit code stays 0
            print(warning, file=sys.stderr)
        noted = f", {len(cfg.warnings)} warning{'s' if len(cfg.warnings) != 1 else ''}" if cfg.warnings else ""
        print(f"{args.config}: ok ({len(cfg.probes)} probes{noted})")
        return EXIT_OK
    if cmd == "schema":
        from tracecanary.daemon.config.load import schema

        print(json.dumps(schema(), indent=2, sort_keys=True))
        return EXIT_OK
    if cmd == "run":
        from tracecanary.daemon.app import Daemon

        cfg = load_config(args.config)
        return anyio.run(Daemon(args.config, cfg, _overrides(args)).run)
    if cmd == "check":
        from tracecanary.daemon.cli.check import CheckOptions, run_check

        cfg = load_config(args.config)
        try:
            opts = CheckOptions(
                probes=args.probe, iterations=max(1, args.iterations), concurrency=max(1, args.concurrency),
                junit=args.junit, json=args.json, markdown=args.markdown, record=args.record,
                fail_if=args.fail_if, overrides=_overrides(args),
            )
            from tracecanary.daemon.cli.report import parse_gate

            for g in opts.fail_if:
                parse_gate(g)
        except ValueError as e:
            print(f"tracecanary check: {e}", file=sys.stderr)
            return EXIT_USAGE
        return anyio.run(run_check, cfg, opts)
    if cmd == "assert":
        from tracecanary.daemon.cli.traces import cmd_assert

        return cmd_assert(args.trace, args.expect, args.trace_id, args.format)
    if cmd == "expect":
        from tracecanary.daemon.cli.traces import cmd_expect

        return cmd_expect(args.sources, args.root, sys.stdout)
    if cmd == "trace":
        from tracecanary.daemon.cli.traces import cmd_trace_show

        return cmd_trace_show(args)
    if cmd == "import":
        from tracecanary.daemon.cli.importer import cmd_import_tracetest

        return cmd_import_tracetest(args.files, args.output, args.source)
    if cmd == "demo":
        from tracecanary.daemon.cli.demo import cmd_demo

        return cmd_demo(args, _overrides(args))
    raise AssertionError(cmd)


if __name__ == "__main__":
    sys.exit(main())

"""The ``tracecanary`` command: run, check, validate, assert, expect, trace show, import, demo, schema.

Exit codes, every command: 0 = all pass (degraded counts as pass), 1 = any fail or error or a failed
``--fail-if`` gate, 2 = config, usage or startup problem.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence

import anyio

from tracecanary import __version__
from tracecanary.daemon.engine import Overrides
from tracecanary.daemon.observe.logs import LogFormat, is_json, log_uncaught, parse_level, setup_logging
from tracecanary.daemon.store.base import StoreFault
from tracecanary.errors import ConfigError, StartupError, TracecanaryError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("tracecanary")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        if is_json():  # a usage error is a log line like any other
            log.error("%s: error: %s", self.prog, message, extra={"fields": {"usage": self.format_usage().strip()}})
            self.exit(EXIT_USAGE)
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _log_level(name: str) -> int:
    try:
        return parse_level(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _add_addresses(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", help="API/dashboard/metrics address (host:port)")
    p.add_argument("--otlp-http", help="OTLP/HTTP receiver address (host:port, or none)")
    p.add_argument("--otlp-grpc", help="OTLP/gRPC receiver address (host:port, or none)")
    p.add_argument("--store", help="results store URL, e.g. sqlite:////var/lib/tracecanary/tc.db")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tracecanary", description="Synthetic probes judged by their traces.")
    parser.add_argument("--version", action="version", version=f"tracecanary {__version__}")
    parser.add_argument("--log-level", default="info", type=_log_level, metavar="LEVEL",
                        help="debug, info, warning, error or critical (default: info)")
    parser.add_argument("--log-format", default="text", choices=("text", "json"),
                        help="text (default), or json: every line on stdout and stderr one JSON object")
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
    p.add_argument("--fail-on-skip", action="store_true",
                   help="exit 1 when a run was skipped (a requires: precondition unmet); default exit 0")
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
    """The address flags, checked like the config's addresses (a bad one is a usage error, exit 2)."""
    from tracecanary.daemon.config.settings import listen_address

    for flag, value in (("--listen", args.listen), ("--otlp-http", args.otlp_http), ("--otlp-grpc", args.otlp_grpc)):
        if value is not None and not (value == "none" and flag != "--listen"):
            try:
                listen_address(value)
            except ValueError as e:
                raise StartupError(f"{flag}: {e}") from e
    return Overrides(listen=args.listen, otlp_http=args.otlp_http, otlp_grpc=args.otlp_grpc, store=args.store)


def _print_config_errors(e: ConfigError) -> None:
    for line in e.errors:
        _say(line)
    _say(f"{len(e.errors)} error{'s' if len(e.errors) != 1 else ''}")


def _peek_format(argv: Sequence[str]) -> LogFormat:
    """``--log-format`` before the arguments are parsed, so a usage error is written in that format."""
    for i, arg in enumerate(argv):
        if arg == "--log-format=json" or (arg == "--log-format" and argv[i + 1:i + 2] == ["json"]):
            return "json"
        if not arg.startswith("-"):  # the command: global options come before it
            break
    return "text"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging(logging.INFO, _peek_format(argv))
    args = build_parser().parse_args(argv)
    setup_logging(int(args.log_level), args.log_format)
    code, reason = _guarded(args)
    if args.command == "run":
        from tracecanary.daemon.cli.banner import log_exit

        log_exit(code, reason)
    return code


def _say(line: str) -> None:
    """A line for the user on stderr: a log record in the json format."""
    if is_json():
        log.error("%s", line)
    else:
        print(line, file=sys.stderr)


def _guarded(args: argparse.Namespace) -> tuple[int, str]:
    """Run the command; its exit code and, for the exit line, why it ended."""
    try:
        if args.command == "run":
            return _run(args)
        return _dispatch(args), "done"
    except ConfigError as e:
        _print_config_errors(e)
        return EXIT_USAGE, f"configuration invalid ({len(e.errors)} error{'s' if len(e.errors) != 1 else ''})"
    except (StartupError, StoreFault) as e:
        _say(line := _one_line(e))
        return EXIT_USAGE, line
    except KeyboardInterrupt:
        return EXIT_FAIL, "interrupted"
    except BaseExceptionGroup as group:
        startup = _leaf(group, (StartupError, StoreFault))
        if startup is None:
            return _crashed(group)
        _say(line := _one_line(startup))
        return EXIT_USAGE, line
    except Exception as e:
        return _crashed(e)


def _crashed(e: BaseException) -> tuple[int, str]:
    """A bug: its traceback logged (one JSON object in the json format), exit 1."""
    log_uncaught(e)
    return EXIT_FAIL, f"crashed: {type(e).__name__}: {' '.join(str(e).split())}"


def _run(args: argparse.Namespace) -> tuple[int, str]:
    from tracecanary.daemon.app import Daemon
    from tracecanary.daemon.cli.banner import log_start
    from tracecanary.daemon.config.load import load_config

    cfg = load_config(args.config)
    overrides = _overrides(args)
    log_start(args.config, cfg, overrides)
    daemon = Daemon(args.config, cfg, overrides)
    code = anyio.run(daemon.run)
    return code, daemon.stop_reason or "stopped"


_URL_PASSWORD = re.compile(r"(\w+://[^/:@\s]*):(?!PASSWORD@)[^@\s/]*@")
"""A password in a URL (the usage hint's literal ``USER:PASSWORD@`` placeholder is left as it is)."""


def _one_line(e: TracecanaryError) -> str:
    """A startup problem as the one line the command prints (no traceback: the message says it all).
    A password in a URL (``--store postgresql://user:password@…`` is no config secret) is masked."""
    text = _URL_PASSWORD.sub(r"\1:[redacted]@", " ".join(str(e).split()))
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
    if cmd == "check":
        from tracecanary.daemon.cli.check import CheckOptions, run_check

        cfg = load_config(args.config)
        try:
            opts = CheckOptions(
                probes=args.probe, iterations=max(1, args.iterations), concurrency=max(1, args.concurrency),
                junit=args.junit, json=args.json, markdown=args.markdown, record=args.record,
                fail_if=args.fail_if, fail_on_skip=args.fail_on_skip, overrides=_overrides(args),
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

"""The one exception base every tracecanary error shares."""


class TracecanaryError(Exception):
    """Base of every error tracecanary raises on purpose."""


class ConfigError(TracecanaryError):
    """The configuration is invalid; ``errors`` holds every problem, each naming file:line and path."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


class ProbeError(TracecanaryError):
    """A probe could not run (trigger refused, bad template, broker down): the verdict is ``error``."""


class StartupError(TracecanaryError):
    """The daemon could not start (port in use, store unreachable): exit code 2."""

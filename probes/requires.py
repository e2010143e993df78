"""``requires:``: preconditions of a probe; when one is unmet the run is ``skipped`` with the reason.

A skipped run is neither a pass nor a failure: it has no verdict, it never alerts, ``check`` exits 0
on it unless ``--fail-on-skip``. Checked by the runner before anything is sent (so also before the
metrics baselines are read). A ``${VAR}`` that ``env`` names is no config error when unset: it
expands to the empty string and the run is skipped (``daemon/config/yaml_doc.py``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

import aiohttp
import anyio
from pydantic import Field, field_validator

from tracecanary.assertions.units import Duration
from tracecanary.model import StrictModel

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Requires(StrictModel):
    """Preconditions of every run of the probe (all must hold, else the run is skipped)."""

    env: list[str] = Field(default_factory=list, description="Environment variables that must be set and non-empty.")
    reachable: list[str] = Field(
        default_factory=list, description="Each must answer within reachable_timeout: http(s)://… any HTTP "
        "answer (a 500 too); tcp://host:port or host:port a TCP connection.")
    files: list[str] = Field(default_factory=list, description="Paths that must exist.")
    reachable_timeout: Duration = Field(2.0, description="How long each reachable target may take.")

    @field_validator("env")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(ENV_NAME, name):
                raise ValueError(f"invalid environment variable name {name!r}")
        return value

    @field_validator("reachable")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        for target in value:
            _address(target)
        return value

    def is_empty(self) -> bool:
        return not (self.env or self.reachable or self.files)


def _address(target: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a reachable target; ValueError when it names none."""
    parts = urlsplit(target if "://" in target else f"tcp://{target}")
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "tcp"):
        raise ValueError(f"reachable {target!r}: expected http://, https://, tcp:// or host:port")
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError as e:
        raise ValueError(f"reachable {target!r}: {e}") from e
    if not parts.hostname or port is None:
        raise ValueError(f"reachable {target!r}: expected a host and a port")
    return scheme, parts.hostname, port


def _why(error: BaseException) -> str:
    """``connection refused`` rather than a library's wrapping of it (anyio keeps the cause)."""
    for e in (error, error.__cause__):
        if isinstance(e, OSError) and e.errno:
            return os.strerror(e.errno).lower()
    return f"{type(error).__name__}: {error}"


async def _reachable(target: str, session: aiohttp.ClientSession, timeout_s: float) -> str | None:
    scheme, host, port = _address(target)
    try:
        with anyio.fail_after(timeout_s):
            if scheme == "tcp":
                stream = await anyio.connect_tcp(host, port)
                await stream.aclose()
            else:
                async with session.get(target, allow_redirects=False) as resp:
                    await resp.release()
    except TimeoutError:
        return f"{target} is not reachable: no answer within {timeout_s:g}s"
    except (OSError, aiohttp.ClientError) as e:
        return f"{target} is not reachable: {_why(e)}"
    return None


async def unmet(requires: Requires, session: aiohttp.ClientSession,
                environ: Mapping[str, str] | None = None) -> list[str]:
    """Why the probe cannot run here, one reason per unmet precondition (empty: run it)."""
    env = os.environ if environ is None else environ
    reasons = [f"{name} is not set" if name not in env else f"{name} is empty"
               for name in requires.env if not env.get(name)]
    for path in requires.files:
        try:
            if not await anyio.Path(path).exists():
                reasons.append(f"{path} does not exist")
        except OSError as e:  # a directory on the way we may not enter
            reasons.append(f"{path} cannot be checked: {e.strerror}")
    found: dict[int, str] = {}

    async def probe(i: int, target: str) -> None:
        why = await _reachable(target, session, requires.reachable_timeout)
        if why is not None:
            found[i] = why

    async with anyio.create_task_group() as tg:
        for i, target in enumerate(requires.reachable):
            tg.start_soon(probe, i, target)
    return reasons + [found[i] for i in sorted(found)]


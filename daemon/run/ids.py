"""Run ids: minted by whoever must know a run's id before it starts (the scheduler, ``check``)."""

from __future__ import annotations

import contextvars
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from opentelemetry.sdk.trace.id_generator import RandomIdGenerator


def new_run_id() -> str:
    """Time-ordered, unique run id (sortable by creation)."""
    return f"{time.time_ns() // 1_000_000:012x}{uuid.uuid4().hex[:12]}"


_MINT: contextvars.ContextVar[Callable[[], str] | None] = contextvars.ContextVar("tracecanary_mint", default=None)


class MintingIdGenerator(RandomIdGenerator):
    """Random OTel ids, except a root span's trace id while :func:`minting` is in effect: then it comes
    from the given function (mode kafka: a trace id that lands on a partition this member owns)."""

    def generate_trace_id(self) -> int:
        mint = _MINT.get()
        return int(mint(), 16) if mint is not None else super().generate_trace_id()


@contextmanager
def minting(mint: Callable[[], str] | None) -> Iterator[None]:
    """Trace ids of root spans started in this block come from ``mint`` (None: random)."""
    token = _MINT.set(mint)
    try:
        yield
    finally:
        _MINT.reset(token)

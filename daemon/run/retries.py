"""Retry chains always end: the waits between a failed attempt and its retry, and how they stop.

An attempt followed by a retry is stored ``final=0`` with ``retry_at_ns`` (when the next attempt is
due), so the chain is visible as pending in the store. While its task sleeps the wait is registered
here: the shutdown drain lets waits whose retry can finish within its grace run it and ends the others at once
(``end_due_after``); a wait cancelled from outside (the drain's grace ran out) ends its chain in a
shielded scope before the cancellation goes on. Ending a chain (``Runner.end_chain``) makes the last
attempt final with the reason in ``retry_aborted``, so the alert policy — which acts on final runs —
sees the failure. A chain left pending by a killed process is resumed or ended by the next one
(``Daemon`` at start, with ``Store.pending_retries``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from tracecanary.daemon.store.base import RunRecord

log = logging.getLogger("tracecanary.runner")

SHUTDOWN_REASON = "shutdown during retry delay"
EndChain = Callable[[str], Awaitable[None]]
"""Ends the waiting chain with a reason (stores it final, calls the run hooks)."""


@dataclass(eq=False)
class _Wait:
    run: RunRecord
    due_ns: int
    done_by_ns: int
    """When the retry would end at the latest (due plus the probe's timeout)."""
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    reason: str | None = None
    """Set by ``end_due_after`` when it cancels the wait."""


class RetryWaits:
    """The chains sleeping until their next attempt, by first run id."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._waits: dict[str, _Wait] = {}
        self._on_change = on_change
        self._cutoff: tuple[float, str] | None = None
        """(wall-clock deadline, reason): retries due after it are not waited for (set by the drain)."""

    def __len__(self) -> int:
        return len(self._waits)

    def due_ns(self, first_run_id: str) -> int | None:
        """When the chain's next attempt is due, while it waits."""
        wait = self._waits.get(first_run_id)
        return wait.due_ns if wait is not None else None

    async def wait(self, run: RunRecord, due_ns: int, timeout_s: float, end: EndChain) -> bool:
        """Sleep until ``due_ns`` (epoch ns); True: run the next attempt (which takes up to
        ``timeout_s``); False: the chain was ended."""
        done_by_ns = due_ns + int(timeout_s * 1e9)
        cutoff = self._cutoff
        if cutoff is not None and done_by_ns > cutoff[0] * 1e9:
            with anyio.CancelScope(shield=True):
                await end(cutoff[1])
            return False
        wait = self._waits[run.first_run_id] = _Wait(run, due_ns, done_by_ns)
        try:
            try:
                with wait.scope:
                    await anyio.sleep(max(0.0, (due_ns - time.time_ns()) / 1e9))
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await end(SHUTDOWN_REASON)
                raise
            if wait.scope.cancelled_caught:
                with anyio.CancelScope(shield=True):
                    await end(wait.reason or SHUTDOWN_REASON)
                return False
            return True
        finally:
            self._waits.pop(run.first_run_id, None)
            self._on_change()

    def end_due_after(self, deadline_wall_s: float, reason: str = SHUTDOWN_REASON) -> int:
        """End every chain whose retry could not finish by ``deadline_wall_s`` (now and from now on);
        the others keep waiting and run their retry. Returns how many were ended now."""
        self._cutoff = (deadline_wall_s, reason)
        ended = 0
        for wait in list(self._waits.values()):
            if wait.done_by_ns > deadline_wall_s * 1e9 and wait.reason is None:
                wait.reason = reason
                wait.scope.cancel()
                ended += 1
        if ended:
            log.info("retry chains ended count=%d reason=%s", ended, reason)
        return ended

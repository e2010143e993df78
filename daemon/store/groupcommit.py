"""Group commit for the SQLite store: writes queued while a batch commits share the next commit.

Each write is a function of the raw ``sqlite3.Connection`` run on the store's connection thread.
A caller awaits its own write until it is committed (durable on return, as before), but concurrent
writers share one thread hop and one commit instead of two round trips and a commit each. There is
no timer: the first writer to find the connection idle commits everything queued at once; writers
that queue meanwhile form the next batch, led by the first of them once the current one finishes.

A failed statement fails only its own write: the batch is rolled back and its writes retried one
commit each, so every caller learns exactly whether its write is stored.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import anyio

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], Any]


class _Write(Generic[T]):
    __slots__ = ("done", "error", "fn", "result", "wake")

    def __init__(self, fn: Callable[[sqlite3.Connection], T]) -> None:
        self.fn = fn
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.wake: anyio.Event | None = None


def apply_batch(conn: sqlite3.Connection, writes: list[_Write[Any]]) -> None:
    """Run on the connection thread: apply the writes in order and commit once."""
    failed = False
    for w in writes:
        try:
            w.result = w.fn(conn)
        except Exception as e:
            w.error, failed = e, True
    if not failed:
        try:
            conn.commit()
            return
        except Exception:
            conn.rollback()
    else:
        conn.rollback()
    for w in writes:  # one by one, so each write's outcome is its own
        w.result = w.error = None
        try:
            w.result = w.fn(conn)
            conn.commit()
        except Exception as e:
            w.error = e
            conn.rollback()


class GroupCommit:
    """Serialises writes into batches; ``run_batch`` hands a batch to the connection thread."""

    def __init__(self, run_batch: Callable[[list[_Write[Any]]], Awaitable[None]]) -> None:
        self._run_batch = run_batch
        self._queue: list[_Write[Any]] = []
        self._busy = False
        self.batches = 0
        """Batches handed to the connection thread so far (each one commit)."""

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Apply ``fn`` in a transaction and return its result once committed.

        Shielded: a queued write is applied and waited for, so a caller's cancellation can neither
        leave its outcome unknown nor strand the writers queued behind it.
        """
        w: _Write[T] = _Write(fn)
        self._queue.append(w)
        with anyio.CancelScope(shield=True):
            while not w.done:
                if self._busy:
                    w.wake = anyio.Event()
                    await w.wake.wait()
                    continue
                await self._lead()
        if w.error is not None:
            raise w.error
        result: T = w.result
        return result

    async def _lead(self) -> None:
        self._busy = True
        batch, self._queue = self._queue, []
        self.batches += 1
        try:
            await self._run_batch(batch)
        except BaseException as e:  # the connection failed (closed, thread gone): every write in the batch did
            for w in batch:
                w.error = e
            if not isinstance(e, Exception):
                raise
        finally:
            self._busy = False
            for w in batch:
                w.done = True
                if w.wake is not None:
                    w.wake.set()
            if self._queue and self._queue[0].wake is not None:
                self._queue[0].wake.set()  # the next batch's leader

"""One plain ``sqlite3`` connection owned by one dedicated thread; the event loop hands it functions.

Why a thread of our own rather than ``anyio.to_thread`` with a ``CapacityLimiter(1)``: the connection
is opened, used and closed on this one thread, so sqlite3's ``check_same_thread`` guard stays on and
proves the ownership; and a call costs one queue put there and one ``call_soon_threadsafe`` back, with
no worker-pool bookkeeping and without the thread ever waiting for the loop. That matters because
every store read and every group commit (``groupcommit.py``) is one call. The loop side is asyncio,
as aiohttp and aiokafka already require: a caller awaits an asyncio future that the thread settles.

Calls run one at a time, in the order they were made. Cancelling a caller abandons its wait, not its
call: the function still runs (the group commit awaits writes under a shield, so none is lost).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")
_Job = tuple[Callable[[sqlite3.Connection], Any] | None, "asyncio.Future[Any]"]
"""A function and the future its caller awaits; no function: close the connection, end the thread."""


class ConnectionThread:
    """A ``sqlite3.Connection`` to ``path`` living on its own thread; ``call(fn)`` runs ``fn(conn)`` there."""

    def __init__(self, path: str, *, name: str = "tracecanary-sqlite") -> None:
        self.path = path
        self.name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed: asyncio.Future[None] | None = None

    async def start(self, setup: Callable[[sqlite3.Connection], None], *, timeout_s: float | None = None) -> None:
        """Start the thread, connect and run ``setup`` (schema, pragmas); closes again if either fails.

        ``timeout_s`` bounds the whole start (``TimeoutError``): a connection stuck inside SQLite (a
        hung file system, a lock nobody releases) is abandoned rather than waited for — its thread
        is a daemon thread and closes the connection if it ever comes back.
        """
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: already started")
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()
        try:
            with anyio.fail_after(timeout_s):
                await self.call(setup)
        except (TimeoutError, anyio.get_cancelled_exc_class()):
            self._abandon()
            raise
        except BaseException:
            await self.aclose()
            raise

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` run on the connection thread; its result, or its exception raised here."""
        if self._thread is None or self._closing:
            raise RuntimeError("store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, future))
        return await future

    def _abandon(self) -> None:
        """Ask the thread to close and end once it is free again, without waiting for it."""
        if self._closed is None:
            self._closing = True
            self._closed = asyncio.get_running_loop().create_future()
            self._jobs.put((None, self._closed))

    async def aclose(self) -> None:
        """Run the calls already made, close the connection and end the thread. Idempotent."""
        if self._thread is None:
            return
        if self._closed is None:
            self._closing = True
            self._closed = asyncio.get_running_loop().create_future()
            self._jobs.put((None, self._closed))
        await asyncio.shield(self._closed)

    # ------------------------------------------------------------------ on the connection thread

    def _serve(self) -> None:
        conn: sqlite3.Connection | None = None
        failed: BaseException | None = None
        try:
            conn = sqlite3.connect(self.path)
        except BaseException as e:  # every call learns why (the first is start's setup)
            failed = e
        while True:
            fn, future = self._jobs.get()
            if fn is None:
                if conn is not None:
                    conn.close()
                _settle(future, None, None)
                return
            try:
                if conn is None:
                    assert failed is not None
                    raise failed
                result = fn(conn)
            except BaseException as e:
                _settle(future, None, e)
            else:
                _settle(future, result, None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """From the connection thread: complete ``future`` on its loop (without waiting for the loop)."""
    try:
        future.get_loop().call_soon_threadsafe(_complete, future, result, error)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


def _complete(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # its caller was cancelled and stopped waiting
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)

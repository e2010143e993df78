"""The store for a URL: ``sqlite:///PATH`` (the default) or ``postgresql://user:pass@host:port/db``."""

from __future__ import annotations

from tracecanary.daemon.store.base import Store
from tracecanary.daemon.store.sqlite import OPEN_TIMEOUT_S, SqliteStore
from tracecanary.errors import StartupError


def open_store(url: str, *, open_timeout_s: float = OPEN_TIMEOUT_S) -> Store:
    """The (unopened) store for ``url``; an unknown scheme is a :class:`StartupError` (exit 2) naming
    the schemes there are."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else "sqlite"
    if scheme in ("postgres", "postgresql"):
        from tracecanary.daemon.store.postgres import PostgresStore

        return PostgresStore(url, open_timeout_s=open_timeout_s)
    if scheme != "sqlite":
        raise StartupError(f"store {url!r}: unknown URL scheme {scheme!r}; use sqlite:///PATH "
                           "(sqlite:////abs/path.db: four slashes for an absolute path) or "
                           "postgresql://USER:PASSWORD@HOST:PORT/DB")
    return SqliteStore(url, open_timeout_s=open_timeout_s)

"""Fencing from the Python side: the store URL that names this member, and telling a refused write.

Every store connection of a replica in mode standby carries ``-c tracecanary.member=<id>`` (libpq
``options``), so the ``cluster_fence`` trigger (pgschema.py) refuses its writes to runs, events and kv
unless it holds the current leader epoch. Such a refusal surfaces as a psycopg error with SQLSTATE
``TCF01`` (or a store error caused by one): :func:`fenced_reason` recognises it anywhere in the cause
chain, so the store guard drops the write with an error and a metric instead of keeping it for retry.
"""

from __future__ import annotations

import sys
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from tracecanary.daemon.cluster.pgschema import FENCED_SQLSTATE, MEMBER_GUC
from tracecanary.errors import TracecanaryError


class FencedWrite(TracecanaryError):
    """A write of the active role refused because this replica no longer holds the leader epoch."""


def with_options(url: str, *options: str) -> str:
    """``url`` with ``-c name=value`` server options appended to its libpq ``options`` parameter."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = " ".join(v for k, v in query if k == "options")
    merged = " ".join(o for o in (given, *(f"-c {opt}" for opt in options)) if o)
    query = [(k, v) for k, v in query if k != "options"] + [("options", merged)]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def member_url(url: str, member_id: str) -> str:
    """The store URL whose every connection names this member (and so is fenced)."""
    return with_options(url, f"{MEMBER_GUC}={member_id}")


def fenced_reason(error: BaseException) -> str | None:
    """The fence's message when ``error`` (or an error it was raised from) is a refused write; else None."""
    if "psycopg" not in sys.modules:  # no psycopg error can exist (and its import is not paid for nothing)
        return str(error) if isinstance(error, FencedWrite) else None
    import psycopg

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, FencedWrite):
            return str(current)
        if isinstance(current, psycopg.Error) and current.sqlstate == FENCED_SQLSTATE:
            diag = current.diag.message_primary
            return diag if diag else str(current)
        current = current.__cause__ or current.__context__
    return None

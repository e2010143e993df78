"""Adding the run's trace headers to headers a probe's config already sets, without losing either.

``baggage`` (W3C Baggage) and ``tracestate`` (W3C Trace Context) are lists that several parties share:
the operator may set ``baggage: tenant=acme`` on a request for the system under test's own use, and
our ``tracecanary.run_id=…``/``sentry-trace_id=…`` members must travel beside it — replacing the header
would break the system's behaviour, dropping ours would break the trace. So they are merged member by
member: theirs kept as written (order and properties included), ours added after them; a key both set
keeps theirs (the operator said so) and the run log says so. ``tracestate`` follows its own rule: our
``tracecanary`` entry goes first (the spec puts a vendor's updated entry on the left), theirs follow, at
most 32. ``traceparent`` and ``sentry-trace`` identify the run and are ours. Header names compare
case-insensitively; the merged header keeps the request's spelling when it had one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

MAX_BAGGAGE_MEMBERS = 64
MAX_BAGGAGE_BYTES = 8192
MAX_TRACESTATE_MEMBERS = 32


@dataclass
class Merged:
    """The headers to send, and what had to give way (for the run log)."""

    headers: dict[str, str]
    kept_theirs: list[str] = field(default_factory=list)
    """Our baggage keys the request already set (its value was sent)."""
    dropped_ours: list[str] = field(default_factory=list)
    """Our baggage keys left out because the header would pass W3C's limits."""


def _members(value: str) -> list[str]:
    return [m.strip() for m in value.split(",") if m.strip()]


def _key(member: str) -> str:
    return member.split(";", 1)[0].split("=", 1)[0].strip()


def merge_baggage(theirs: str, ours: str) -> tuple[str, list[str], list[str]]:
    """``theirs`` with every member of ``ours`` whose key it lacks appended, within W3C's limits
    (64 members, 8192 bytes). Returns (header, our keys they already set, our keys dropped for room)."""
    merged = _members(theirs)
    keys = {_key(m) for m in merged}
    kept_theirs: list[str] = []
    dropped: list[str] = []
    size = len(", ".join(merged))
    for member in _members(ours):
        key = _key(member)
        if key in keys:
            kept_theirs.append(key)
            continue
        extra = len(member) + (2 if merged else 0)
        if len(merged) >= MAX_BAGGAGE_MEMBERS or size + extra > MAX_BAGGAGE_BYTES:
            dropped.append(key)
            continue
        merged.append(member)
        keys.add(key)
        size += extra
    return ",".join(merged), kept_theirs, dropped


def merge_tracestate(theirs: str, ours: str) -> str:
    """Our entries first (replacing theirs of the same key), then theirs, at most 32."""
    ours_members = _members(ours)
    own = {_key(m) for m in ours_members}
    rest = [m for m in _members(theirs) if _key(m) not in own]
    return ",".join((ours_members + rest)[:MAX_TRACESTATE_MEMBERS])


def merge_trace_headers(headers: Mapping[str, str], ours: Mapping[str, str]) -> Merged:
    """``headers`` (the request's own) with the run's trace headers ``ours`` added."""
    out: dict[str, str] = {}
    spelled: dict[str, str] = {}
    for name, value in headers.items():
        first = spelled.get(name.lower())
        if first is not None and name.lower() in ("baggage", "tracestate"):
            out[first] = f"{out[first]},{value}"  # one list, however many spellings set it
            continue
        out[name] = value
        spelled.setdefault(name.lower(), name)
    result = Merged(headers=out)
    for name, value in ours.items():
        lower = name.lower()
        existing = spelled.get(lower)
        if existing is None:
            out[name] = value
            spelled[lower] = name
        elif lower == "baggage":
            out[existing], result.kept_theirs, result.dropped_ours = merge_baggage(out[existing], value)
        elif lower == "tracestate":
            out[existing] = merge_tracestate(out[existing], value)
        else:
            del out[existing]
            out[name] = value
            spelled[lower] = name
    return result

"""What Sentry derives from an error event at ingest, as the emulator serves it back.

Each function follows the named file of getsentry/sentry, so the emulator answers with the shapes
real Sentry produces rather than with what tracecanary would like to read:

- ``metadata``: ``src/sentry/eventtypes/error.py`` ``ErrorEvent.extract_metadata`` — ``value``, then
  ``type`` (left out for a synthetic mechanism), then the crash frame's ``filename`` and ``function``
  (``get_crash_location``: the last in-app frame of the last exception, else the last frame).
- ``title``: the same file's ``compute_title`` — ``Type: first line of value`` (``truncatechars`` to 100); a
  message event's title is its message (``src/sentry/eventtypes/base.py`` ``DefaultEvent``).
- ``culprit``: ``src/sentry/event_manager.py`` ``get_culprit`` — the event's ``culprit``, else its
  ``transaction``, else ``module in function`` of the crash frame (``src/sentry/culprit.py``).
- ``search_message``: ``src/sentry/services/eventstore/models.py`` ``BaseEvent.search_message`` —
  the log message, then every non-boolean metadata value not already in it, then the culprit, joined
  by spaces. It is the Discover ``message`` column and the trace API's error ``description``
  (``src/sentry/snuba/trace.py`` ``_serialize_rpc_issue``: ``description=event["message"]``).
- ``short_id``: ``src/sentry/snuba/trace.py`` ``_qualify_short_id`` — ``PROJECT-`` + base32 (Crockford).
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MAX_VALUE_CHARS = 1024
MAX_TYPE_CHARS = 128
MAX_TITLE_VALUE_CHARS = 100


def _last_exception(payload: Json) -> Json | None:
    values = (payload.get("exception") or {}).get("values") or []
    last = values[-1] if values else None
    return last if isinstance(last, dict) else None


def crash_frame(payload: Json) -> Json | None:
    """The frame Sentry names as where it broke: the last in-app frame, else the last frame."""
    exc = _last_exception(payload)
    frames = ((exc or {}).get("stacktrace") or {}).get("frames") or []
    usable = [f for f in frames if isinstance(f, dict) and f.get("function") not in (None, "<redacted>", "<unknown>")]
    in_app = [f for f in usable if f.get("in_app")]
    chosen = in_app or usable
    return chosen[-1] if chosen else None


def log_message(payload: Json) -> str:
    """``logentry.formatted`` or ``logentry.message``; Relay turns a bare ``message`` string into logentry."""
    logentry = payload.get("logentry")
    if isinstance(logentry, dict):
        return str(logentry.get("formatted") or logentry.get("message") or "")
    message = payload.get("message")
    return message if isinstance(message, str) else ""


def metadata(payload: Json) -> Json:
    """An error event's ``metadata`` (insertion order matters: the search message follows it)."""
    exc = _last_exception(payload)
    if exc is None:
        first = log_message(payload).splitlines()
        return {"title": first[0][:MAX_TITLE_VALUE_CHARS]} if first else {}
    meta: Json = {"value": str(exc.get("value") or "")[:MAX_VALUE_CHARS]}
    if not (exc.get("mechanism") or {}).get("synthetic"):
        meta["type"] = str(exc.get("type") or "Error")[:MAX_TYPE_CHARS]
    frame = crash_frame(payload)
    if frame is not None:
        if frame.get("filename") or frame.get("abs_path"):
            meta["filename"] = frame.get("filename") or frame.get("abs_path")
        if frame.get("function"):
            meta["function"] = frame["function"]
    meta["display_title_with_tree_label"] = False
    return meta


def title(payload: Json) -> str:
    """Sentry's issue title for the event."""
    meta = metadata(payload)
    if "title" in meta or _last_exception(payload) is None:
        return str(meta.get("title") or "<unlabeled event>")
    typ = meta.get("type")
    if typ is None:
        return str(meta.get("function") or "<unknown>")
    value = str(meta.get("value") or "")
    if not value:
        return str(typ)
    first = value.splitlines()[0]
    short = first if len(first) <= MAX_TITLE_VALUE_CHARS else first[: MAX_TITLE_VALUE_CHARS - 3] + "..."
    return f"{typ}: {short}"


def culprit(payload: Json) -> str:
    """``culprit`` as sent, else the transaction name, else ``module in function`` of the crash frame."""
    given = payload.get("culprit") or payload.get("transaction")
    if given:
        return str(given)
    frame = crash_frame(payload)
    if frame is None:
        return ""
    where = frame.get("module") or frame.get("filename") or "?"
    return f"{where} in {frame.get('function') or '?'}"


def search_message(payload: Json) -> str:
    """The text Sentry indexes for search (and returns as an error's ``message``/``description``)."""
    message = log_message(payload)
    for value in metadata(payload).values():
        if isinstance(value, bool | int | float):
            continue
        text = str(value)
        if text not in message:
            message = f"{message} {text}"
    blame = culprit(payload)
    if blame and blame not in message:
        message = f"{message} {blame}"
    return message.strip()


def base32(number: int) -> str:
    """Sentry's ``base32_encode`` (Crockford's alphabet) used in issue short ids."""
    if number <= 0:
        return "0"
    out = ""
    while number:
        number, rem = divmod(number, 32)
        out = _CROCKFORD[rem] + out
    return out


def short_id(project_slug: str, issue_id: int) -> str:
    """``DEMO-1F``: the project slug upper-cased and the issue's short id in base32."""
    return f"{project_slug.upper()}-{base32(issue_id)}"

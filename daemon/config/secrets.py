"""Secrets by provenance: the values that must never leave the daemon in clear, and the masking.

A value is a secret when it came from ``${VAR}`` or ``${file:/path}`` at load (``${public:VAR}`` opts
a value out: a target URL, a channel id), or when it sits in a ``Credential`` field (``auth``, request
headers, signing secrets, integration tokens, the API and OTLP tokens), or is the password of the store
URL. ``Config.secrets()`` gathers them once; everything that leaves the process — the stored probe
config and run records, API responses, dashboard pages, reports, logs, alert payloads — goes through
:meth:`Secrets.mask` (structured data) or :meth:`Secrets.mask_text` (rendered text) first.

Masking is by value, never by key name: a secret inside a longer string (``Bearer <token>``, a URL's
query) is masked inside it, in the forms it takes when rendered (JSON-, HTML- and URL-escaped).
A value shorter than ``MIN_SUBSTRING_CHARS`` is masked only where a whole string equals it: masking it
inside text would garble ordinary words.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import re
from collections.abc import Iterable, Iterator
from enum import Enum
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus

from pydantic import BaseModel

REDACTED = "[redacted]"
"""What a masked value reads as, everywhere."""
MIN_SUBSTRING_CHARS = 6
"""Shorter secrets are masked only where a whole string equals them (same bound as Sentry's scrubber)."""
_MAX_DEPTH = 40

T = TypeVar("T")
_ATOMS = (int, float, bool, type(None), bytes)
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _forms(value: str) -> set[str]:
    """The ways ``value`` appears once rendered: as is, JSON-, HTML-, URL- and repr-escaped."""
    forms = {value, html.escape(value), html.escape(value, quote=False), json.dumps(value)[1:-1],
             json.dumps(value, ensure_ascii=False)[1:-1], quote(value, safe=""), quote_plus(value),
             repr(value)[1:-1]}
    return {f for f in forms if len(f) >= MIN_SUBSTRING_CHARS}


class Secrets:
    """An immutable set of secret values and the masking that hides them."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values = frozenset(v for v in values if isinstance(v, str) and v)
        forms = sorted({f for v in self._values for f in _forms(v)}, key=len, reverse=True)
        # Longest first: a secret that contains another is masked whole.
        self._pattern = re.compile("|".join(map(re.escape, forms))) if forms else None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def __bool__(self) -> bool:
        return bool(self._values)

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def __or__(self, other: Secrets) -> Secrets:
        return Secrets(self._values | other._values)

    def __repr__(self) -> str:
        return f"Secrets({len(self._values)} values)"  # never the values

    def mask_text(self, text: str, replacement: str = REDACTED) -> str:
        """``text`` with every secret (and its escaped forms) replaced by ``[redacted]``."""
        if not self._values:
            return text
        if text in self._values:
            return replacement
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda _: replacement, text)

    def mask(self, value: T) -> T:
        """A copy of ``value`` with every string in it masked (mapping keys too); unchanged parts are
        shared. Walks dicts, lists, tuples, pydantic models and dataclasses; enums and numbers stay."""
        if not self._values:
            return value
        return self._mask(value, 0)  # type: ignore[no-any-return]

    def mask_in_place(self, record: Any) -> None:
        """Mask every field of a (mutable) dataclass record, e.g. a run record before it is stored."""
        for f in dataclasses.fields(record):
            old = getattr(record, f.name)
            new = self.mask(old)
            if new is not old:
                setattr(record, f.name, new)

    def _mask(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            return self.mask_text(value)
        if kind in _ATOMS or isinstance(value, Enum) or depth > _MAX_DEPTH:
            return value
        if isinstance(value, dict):
            return self._mask_dict(value, depth)
        if isinstance(value, list | tuple):
            seq = None
            for i, item in enumerate(value):
                new = self._mask(item, depth + 1)
                if seq is None and new is not item:
                    seq = list(value[:i])
                if seq is not None:
                    seq.append(new)
            if seq is None:
                return value
            return seq if isinstance(value, list) else tuple(seq)
        if isinstance(value, str):
            return self.mask_text(value)
        if isinstance(value, BaseModel):
            update = self._changed(value, type(value).model_fields, depth)
            return value.model_copy(update=update) if update else value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            names = _FIELD_NAMES.get(kind)
            if names is None:
                names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(value))
            update = self._changed(value, names, depth)
            return dataclasses.replace(value, **update) if update else value
        return value

    def _mask_dict(self, value: dict[Any, Any], depth: int) -> dict[Any, Any]:
        out: dict[Any, Any] | None = None
        for i, (key, item) in enumerate(value.items()):
            new_key = self.mask_text(key) if type(key) is str else key
            new = self._mask(item, depth + 1)
            if out is None and (new is not item or new_key is not key):
                out = dict(list(value.items())[:i])
            if out is not None:
                out[new_key] = new
        return value if out is None else out

    def _changed(self, value: Any, names: Iterable[str], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in names:
            old = getattr(value, name, None)
            new = self._mask(old, depth + 1)
            if new is not old:
                out[name] = new
        return out


class SecretsLogFilter(logging.Filter):
    """A handler filter that masks secrets in every record's message, traceback and stack text."""

    def __init__(self, secrets: Secrets | None = None) -> None:
        super().__init__()
        self.secrets = secrets or Secrets()

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self.secrets
        if not secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let the handler report it as logging does
            return True
        masked = secrets.mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = secrets.mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = secrets.mask_text(record.stack_info)
        return True


def install_log_masking(secrets: Secrets, logger: logging.Logger | None = None) -> None:
    """Add ``secrets`` to the masking filter of every handler of ``logger`` (default: the root logger),
    installing the filter where a handler has none. Secrets accumulate: a reload adds, never removes
    (a run started under the old config may still log)."""
    for handler in (logger or logging.getLogger()).handlers:
        found = next((f for f in handler.filters if isinstance(f, SecretsLogFilter)), None)
        if found is None:
            handler.addFilter(SecretsLogFilter(secrets))
        else:
            found.secrets = found.secrets | secrets

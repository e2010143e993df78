"""Request signing: GitHub (``X-Hub-Signature-256``), Slack (``v0=``) and generic HMAC headers.

Signatures are always computed over the exact bytes that go on the wire, so a probe builds its
body first, signs it, and sends those same bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import Field

from tracecanary.model import CREDENTIAL, StrictModel, cross_field_rule

Algorithm = Literal["sha1", "sha256", "sha512"]


def _hmac_fields(fields: Mapping[str, Any]) -> str | None:
    scheme = fields.get("scheme")
    if scheme == "hmac" and not fields.get("header"):
        return "sign.header is required for scheme hmac"
    if scheme in ("github", "slack") and any(fields.get(n) for n in ("header", "prefix", "timestamp_header")):
        return f"sign.header/prefix/timestamp_header only apply to scheme hmac, not {scheme}"
    return None


class SignSpec(StrictModel):
    """``sign: {scheme: github | slack | hmac, secret: …}``; ``hmac`` also takes header/algorithm/prefix."""

    scheme: Literal["github", "slack", "hmac"] = Field(description="Which signature convention to use.")
    secret: Annotated[str, CREDENTIAL] = Field(description="The shared secret (usually ${ENV} in config).")
    header: str | None = Field(None, description="hmac: the header that carries the signature.")
    algorithm: Algorithm = Field("sha256", description="hmac: the digest algorithm.")
    prefix: str = Field("", description="hmac: text before the hex digest, e.g. \"sha256=\".")
    timestamp_header: str | None = Field(
        None, description="hmac: also send the unix time in this header and sign \"{ts}.{body}\"."
    )

    _hmac_needs_header = cross_field_rule(_hmac_fields)


def hmac_hex(secret: str, message: bytes, algorithm: Algorithm = "sha256") -> str:
    """Hex HMAC of ``message`` keyed with ``secret``."""
    return hmac.new(secret.encode(), message, getattr(hashlib, algorithm)).hexdigest()


def github_signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>`` as GitHub sends in ``X-Hub-Signature-256``."""
    return "sha256=" + hmac_hex(secret, body)


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    """``v0=<hex>`` over ``v0:{timestamp}:{body}`` as Slack sends in ``X-Slack-Signature``."""
    return "v0=" + hmac_hex(secret, b"v0:" + timestamp.encode() + b":" + body)


def sign_headers(spec: SignSpec, body: bytes, *, clock: Callable[[], float] = time.time) -> dict[str, str]:
    """The headers that authenticate ``body`` under ``spec`` (added to the request as they are)."""
    if spec.scheme == "github":
        return {"X-Hub-Signature-256": github_signature(spec.secret, body)}
    if spec.scheme == "slack":
        ts = str(int(clock()))
        return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": slack_signature(spec.secret, ts, body)}
    assert spec.header is not None
    if spec.timestamp_header:
        ts = str(int(clock()))
        digest = hmac_hex(spec.secret, ts.encode() + b"." + body, spec.algorithm)
        return {spec.timestamp_header: ts, spec.header: spec.prefix + digest}
    return {spec.header: spec.prefix + hmac_hex(spec.secret, body, spec.algorithm)}

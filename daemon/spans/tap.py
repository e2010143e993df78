"""SpanTap: a consumer of every arriving span of the traces it picks, fed by the trace buffer's ingest.

The buffer keeps most traces as raw protobuf batches and decodes only what someone waits on. A tap
(the passive judge, ``daemon/run/passive.py``) says which traces it wants by raw trace id — a cheap,
deterministic test such as a sample by trace id — and gets their spans decoded in the same pass as
the watched traces', once per batch, after the buffer stored the batch. Taps are called on the event
loop during ingest: they must only route spans, never judge or block.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from tracecanary.assertions.spans import Span


class SpanTap(Protocol):
    def wants(self, key: bytes) -> bool:
        """Whether the trace with this raw 16-byte id is of interest (called once per trace per batch)."""
        ...

    def arrived(self, groups: Mapping[bytes, list[Span]]) -> None:
        """The decoded spans of the wanted traces that just arrived, by raw trace id."""
        ...

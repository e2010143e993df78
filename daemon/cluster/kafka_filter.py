"""The cheap trace-id filter of a kafka-mode member: keep the span messages of traces it minted.

Every trace a member mints hashes onto a partition it owns, so all of that trace's spans reach it;
its partitions also carry everybody else's traffic (the monitored system's own traces), which it
skips. With ``partition_traces_by_id`` each message holds one trace and its key is the lowercase hex
trace id: a dictionary lookup on the key decides, without parsing the value. A message without a key
(an exporter without ``partition_traces_by_id``) is scanned and kept when any span's trace is wanted.

``scan_foreign`` also scans the messages of traces nobody here minted for span links into a wanted
trace (a queue consumer's new trace linking back to a probe's producer span): those are kept too.
Decoding reuses the Kafka span source's path (``daemon/spans/kafka.py``). A foreign protobuf message
neither owned nor linked is offered to ``on_foreign`` (the forwarder, ``kafka_forward.py``), which
forwards it to other owners and says whether this member waits for it too (a correlated trace).

Passive probes judge real traffic, which nobody mints: while some are configured, ``tapped`` (the passive
judge's ``wants``: a sample test on the raw trace id) keeps the foreign traces it samples too, so every
member judges the sampled traces of its own partitions. A keyed message costs one hex decode and that
test; without passive probes the filter is what it was (``tapped`` is None or says no at once).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.kafka import ingest_message, is_json_value
from tracecanary.daemon.spans.otlp import RawBatch, decode_json, scan_protobuf

Decision = Literal["owned", "linked", "tapped", "skipped"]
ForeignHook = Callable[[bytes, RawBatch], bool]
"""``(message value, scanned batch) -> keep here too``."""


@dataclass
class FilterStats:
    """What the filter did with the messages of owned partitions."""

    owned: int = 0
    linked: int = 0
    tapped: int = 0
    """Foreign traces kept for the passive judge (real traffic in a passive probe's sample)."""
    skipped: int = 0
    scanned: int = 0
    spans: int = 0
    forgotten: int = 0
    forwarded_in: int = 0


class TraceFilter:
    """The trace ids this member waits for, bounded (the oldest are forgotten past ``max_traces``)."""

    def __init__(self, max_traces: int = 1_000_000, *, scan_foreign: bool = True) -> None:
        self.max_traces = max_traces
        self.scan_foreign = scan_foreign
        self.stats = FilterStats()
        self._hex: OrderedDict[bytes, None] = OrderedDict()
        self._raw: set[bytes] = set()
        self.on_foreign: ForeignHook | None = None
        self.foreign_wanted: Callable[[], bool] = lambda: True
        self.tapped: Callable[[bytes], bool] | None = None
        """Whether the passive judge wants a trace nobody minted (raw 16-byte id): kept too."""
        """Whether anybody waits for traces it did not mint (the forwarder: any announcement). When not,
        keyed foreign messages are skipped by their key alone, without parsing them."""

    def __len__(self) -> int:
        return len(self._hex)

    def __contains__(self, trace_id_hex: str) -> bool:
        return trace_id_hex.lower().encode("ascii") in self._hex

    def want(self, trace_id_hex: str) -> None:
        """Keep this trace's spans from now on (a minted or a forwarded trace)."""
        key = trace_id_hex.lower().encode("ascii")
        if key in self._hex:
            return
        self._hex[key] = None
        self._raw.add(bytes.fromhex(trace_id_hex))
        while len(self._hex) > self.max_traces:
            old, _ = self._hex.popitem(last=False)
            self._raw.discard(bytes.fromhex(old.decode("ascii")))
            self.stats.forgotten += 1

    def forget(self, trace_id_hex: str) -> None:
        """Stop keeping this trace (its run is over)."""
        key = trace_id_hex.lower().encode("ascii")
        if self._hex.pop(key, 0) is None:
            self._raw.discard(bytes.fromhex(trace_id_hex))

    def ingest(self, buffer: TraceBuffer, key: bytes | None, value: bytes | None, encoding: str) -> Decision:
        """Put the message into the buffer when it holds a wanted trace; say why. Raises OtlpDecodeError."""
        stats = self.stats
        if not value:
            stats.skipped += 1
            return "skipped"
        if key is not None and key.lower() in self._hex:
            stats.owned += 1
            stats.spans += ingest_message(buffer, value, encoding)
            return "owned"
        if key is not None and (not self.scan_foreign or not self.foreign_wanted()):
            if self._tapped_key(key):
                stats.tapped += 1
                stats.spans += ingest_message(buffer, value, encoding)
                return "tapped"
            stats.skipped += 1
            return "skipped"
        stats.scanned += 1
        decision = self._scan(buffer, key is None, value, encoding)
        if decision == "owned":
            stats.owned += 1
        elif decision == "linked":
            stats.linked += 1
        elif decision == "tapped":
            stats.tapped += 1
        else:
            stats.skipped += 1
        return decision

    def _tapped_key(self, key: bytes) -> bool:
        tapped = self.tapped
        if tapped is None or len(key) != 32:
            return False
        try:
            return tapped(bytes.fromhex(key.decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            return False

    def _tapped_any(self, raws: Iterable[bytes]) -> bool:
        tapped = self.tapped
        return tapped is not None and any(tapped(raw) for raw in raws)

    def _scan(self, buffer: TraceBuffer, keyless: bool, value: bytes, encoding: str) -> Decision:
        if encoding == "otlp_json" or (encoding == "auto" and is_json_value(value)):
            spans = decode_json(value).spans
            owned = keyless and any(s.trace_id.lower().encode("ascii") in self._hex for s in spans)
            linked = not owned and any(ln.trace_id.lower().encode("ascii") in self._hex
                                       for s in spans for ln in s.links)
            tapped = not owned and not linked and self._tapped_any(
                {bytes.fromhex(s.trace_id) for s in spans if len(s.trace_id) == 32})
            if owned or linked or tapped:
                self.stats.spans += buffer.add_spans(spans)
            return "owned" if owned else "linked" if linked else "tapped" if tapped else "skipped"
        batch = scan_protobuf(value)
        raw = self._raw
        owned = keyless and not raw.isdisjoint(batch.trace_counts)
        linked = not owned and batch.has_links and not raw.isdisjoint(batch.link_targets())
        if not owned and not linked and self.on_foreign is not None:
            linked = self.on_foreign(value, batch)
        tapped = not owned and not linked and self._tapped_any(batch.trace_counts)
        if owned or linked or tapped:
            self.stats.spans += buffer.add_batch(batch)
        return "owned" if owned else "linked" if linked else "tapped" if tapped else "skipped"

    def accept_forwarded(self, buffer: TraceBuffer, value: bytes | None) -> int:
        """Put a message another member forwarded here into the buffer; its traces are wanted from now on."""
        if not value:
            return 0
        batch = scan_protobuf(value)
        for raw in batch.trace_counts:
            self.want(raw.hex())
        self.stats.forwarded_in += 1
        added = buffer.add_batch(batch)
        self.stats.spans += added
        return added

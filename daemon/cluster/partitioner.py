"""Which Kafka partition a key lands on, and trace ids minted to land on partitions we own.

Two producer hashes are predicted (``../shared/REFERENCE.md``, "OpenTelemetry Collector kafka exporter"):

- ``sarama_compat``: FNV-1a 32-bit over the key bytes; ``p = int32(h) % n`` with Go's truncating
  ``%`` (the remainder takes the dividend's sign), negated when negative. This is Sarama's
  ``hashPartitioner`` and franz-go's ``SaramaCompatHasher`` — the Collector kafka exporter's default.
  (franz-go's older ``SaramaHasher`` differs; it is not offered.)
- ``murmur2``: Kafka's Java default (seed ``0x9747b28c``), ``p = (h & 0x7fffffff) % n`` — also
  aiokafka's ``DefaultPartitioner``.

The key is what the exporter sends with ``partition_traces_by_id: true``: the **lowercase hex trace id
string** (32 ASCII bytes), not the 16 raw bytes.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from tracecanary.errors import TracecanaryError

PartitionerName = Literal["sarama_compat", "murmur2"]
PartitionFn = Callable[[bytes, int], int]
"""``(key bytes, partition count) -> partition``."""

_FNV32_OFFSET = 0x811C9DC5
_FNV32_PRIME = 0x01000193
_MASK32 = 0xFFFFFFFF
_MURMUR2_SEED = 0x9747B28C
_MURMUR2_M = 0x5BD1E995


class NoOwnedPartitionError(TracecanaryError):
    """A trace id was asked for while this member owns no partition (or none in range)."""


def fnv1a_32(data: bytes) -> int:
    """FNV-1a 32-bit hash (Go's ``hash/fnv.New32a``), as an unsigned int."""
    h = _FNV32_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV32_PRIME) & _MASK32
    return h


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as a signed 32-bit int."""
    length = len(data)
    h = (_MURMUR2_SEED ^ length) & _MASK32
    blocks = length // 4
    for i in range(blocks):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * _MURMUR2_M) & _MASK32
        k ^= k >> 24
        k = (k * _MURMUR2_M) & _MASK32
        h = ((h * _MURMUR2_M) & _MASK32) ^ k
    tail = data[4 * blocks:]
    if tail:
        # Java's switch falls through from the highest remaining byte down.
        for i in range(len(tail) - 1, -1, -1):
            h ^= tail[i] << (8 * i)
        h = (h * _MURMUR2_M) & _MASK32
    h ^= h >> 13
    h = (h * _MURMUR2_M) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def sarama_compat_partition(key: bytes, num_partitions: int) -> int:
    """Sarama's hash partitioner: ``|int32(fnv1a_32(key)) rem n|`` (Go's ``%`` truncates toward 0)."""
    h = fnv1a_32(key)
    signed = h - (1 << 32) if h & 0x80000000 else h
    # Go: the remainder takes the dividend's sign, so |a rem n| == |a| mod n (also for MinInt32).
    return abs(signed) % num_partitions


def murmur2_partition(key: bytes, num_partitions: int) -> int:
    """Kafka's Java default partitioner for keyed records: ``(murmur2(key) & 0x7fffffff) % n``."""
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


PARTITIONERS: Mapping[str, PartitionFn] = {
    "sarama_compat": sarama_compat_partition,
    "murmur2": murmur2_partition,
}
"""The producer hashes a member can predict, by config name (``daemon.cluster.partitioner``)."""


def trace_key(trace_id_hex: str) -> bytes:
    """The Kafka message key the Collector exporter sends for a trace: its lowercase hex id, ASCII."""
    return trace_id_hex.lower().encode("ascii")


def probe_partition(probe_id: str, num_partitions: int) -> int:
    """The partition that owns a probe: a stable hash of its id (murmur2), the same on every member."""
    return murmur2_partition(probe_id.encode("utf-8"), num_partitions)


@dataclass
class MintStats:
    """Cost of minting: calls, candidate ids hashed, and the most candidates one call needed."""

    minted: int = 0
    candidates: int = 0
    max_candidates: int = 0


class TraceIdMinter:
    """Random W3C trace ids whose exporter key hashes into an owned partition (rejection sampling).

    With ``k`` of ``n`` partitions owned a call hashes ``n / k`` candidates on average; the bound
    ``max_candidates`` (default ``max(1000, 64 * n)``) makes a miss less likely than ``e**-64``
    whenever at least one partition is owned, so hitting it means a bug, reported as an error.
    """

    def __init__(self, partitioner: PartitionerName, *, max_candidates: int | None = None,
                 rng: random.Random | None = None) -> None:
        self.partition_of: PartitionFn = PARTITIONERS[partitioner]
        self.max_candidates = max_candidates
        self.stats = MintStats()
        self._rng = rng

    def _candidate(self) -> str:
        if self._rng is not None:
            return format(self._rng.getrandbits(128), "032x")
        return secrets.token_hex(16)

    def mint(self, owned: Collection[int], num_partitions: int) -> str:
        """A fresh 32-hex-char trace id (never all zeros) whose key lands in ``owned``."""
        targets = {p for p in owned if 0 <= p < num_partitions}
        if not targets:
            raise NoOwnedPartitionError(
                f"cannot mint a trace id: no owned partition among {num_partitions} (owned: {sorted(owned)})")
        bound = self.max_candidates or max(1000, 64 * num_partitions)
        partition_of = self.partition_of
        for tries in range(1, bound + 1):
            tid = self._candidate()
            if tid == "0" * 32:
                continue
            if partition_of(tid.encode("ascii"), num_partitions) in targets:
                self._count(tries)
                return tid
        self._count(bound)
        raise NoOwnedPartitionError(
            f"no trace id landing on partitions {sorted(targets)} of {num_partitions} after {bound} candidates")

    def _count(self, tries: int) -> None:
        s = self.stats
        s.minted += 1
        s.candidates += tries
        s.max_candidates = max(s.max_candidates, tries)

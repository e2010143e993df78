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

import functools
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


def _murmur2_state(data: bytes, total_length: int) -> int:
    """murmur2's ``h`` after the whole 4-byte blocks of ``data``, a prefix of a ``total_length``-byte key."""
    h = (_MURMUR2_SEED ^ total_length) & _MASK32
    for i in range(len(data) // 4):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * _MURMUR2_M) & _MASK32
        k ^= k >> 24
        k = (k * _MURMUR2_M) & _MASK32
        h = ((h * _MURMUR2_M) & _MASK32) ^ k
    return h


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as a signed 32-bit int."""
    h = _murmur2_state(data, len(data))
    tail = data[4 * (len(data) // 4):]
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


_HEX = b"0123456789abcdef"
_SUFFIXES = 1 << 16
"""A candidate varies the id's last 4 hex chars (16 bits): the hash of the first 28 is computed once."""
_STRIDE = 0x9E37
"""Odd (so the walk visits every suffix) and ~2**16 / golden ratio, so successive suffixes differ in all
four chars: with a step of 1 they share three, and FNV-1a's last step alone decides (4.2 tries per id
instead of 3 with 4 of 12 partitions owned)."""


@functools.cache
def _murmur2_last_blocks() -> list[int]:
    """murmur2's mixed ``k`` for each 4-hex-char suffix as a 32-byte key's last block, by suffix value.

    The block's own mix does not depend on the rest of the key, so a try costs a table look-up, one
    multiply-xor and the final mix. 2**16 entries, built once per process (~50 ms).
    """
    table = []
    for s in range(_SUFFIXES):
        k = int.from_bytes(bytes(_HEX[(s >> shift) & 15] for shift in (12, 8, 4, 0)), "little")
        k = (k * _MURMUR2_M) & _MASK32
        k ^= k >> 24
        table.append((k * _MURMUR2_M) & _MASK32)
    return table


class TraceIdMinter:
    """Random W3C trace ids whose exporter key hashes into an owned partition (rejection sampling).

    A call draws a random id and hashes its first 28 hex chars once. Then it tries suffixes — the last 4
    hex chars, stepping from the drawn ones by a fixed odd stride — until the whole key lands on an owned
    partition, and after ``4 n / k`` tries on one prefix (``k`` of ``n`` partitions owned) it draws a new
    prefix. Both hashes are sequential, so a try costs only the hash's tail (~0.3 µs: FNV-1a's last four
    steps, or murmur2's last block from a table and its final mix) rather than a whole candidate (a
    ``getrandom`` call and 32 bytes of pure-Python hash, ~4 µs). A member owning few of many partitions
    pays ``n / k`` tries per run: this keeps a large cluster's minting cheap (``benchmarks/scale.py
    --costs``). Every id keeps 112 secret random bits (``secrets``) and 16 more that are unpredictable
    without them.

    ``max_candidates`` bounds the tries per call (default ``max(1000, 64 * n)``): a miss is then less
    likely than ``e**-64`` whenever at least one partition is owned, so hitting it means a bug, reported
    as an error. ``rng`` makes the ids reproducible (tests).
    """

    def __init__(self, partitioner: PartitionerName, *, max_candidates: int | None = None,
                 rng: random.Random | None = None) -> None:
        self.partition_of: PartitionFn = PARTITIONERS[partitioner]
        self.partitioner = partitioner
        self.max_candidates = max_candidates
        self.stats = MintStats()
        self._rng = rng
        if partitioner == "murmur2":
            _murmur2_last_blocks()  # built here (~50 ms, once per process), not in a run's first mint

    def _candidate(self) -> str:
        if self._rng is not None:
            return format(self._rng.getrandbits(128), "032x")
        return secrets.token_hex(16)

    def mint(self, owned: Collection[int], num_partitions: int) -> str:
        """A fresh 32-hex-char trace id (never all zeros) whose key lands in ``owned``."""
        n = num_partitions
        targets = {p for p in owned if 0 <= p < n}
        if not targets:
            raise NoOwnedPartitionError(
                f"cannot mint a trace id: no owned partition among {n} (owned: {sorted(owned)})")
        bound = self.max_candidates or max(1000, 64 * n)
        per_prefix = max(64, 4 * n // len(targets))
        tries = 0
        while tries < bound:
            tid = self._candidate()
            prefix, start, span = tid[:28], int(tid[28:], 16), min(per_prefix, bound - tries)
            suffix = (self._murmur2_suffix if self.partitioner == "murmur2" else self._fnv1a_suffix)(
                prefix, start, span, n, targets)
            if suffix is not None:
                used, s = suffix
                self._count(tries + used)
                return f"{prefix}{s:04x}"
            tries += span
        self._count(bound)
        raise NoOwnedPartitionError(
            f"no trace id landing on partitions {sorted(targets)} of {n} after {bound} candidates")

    @staticmethod
    def _murmur2_suffix(prefix: str, start: int, span: int, n: int,
                        targets: set[int]) -> tuple[int, int] | None:
        """(tries used, suffix) of the first of ``span`` suffixes that puts ``prefix + suffix`` on a target."""
        blocks = _murmur2_last_blocks()
        hm = (_murmur2_state(prefix.encode("ascii"), 32) * _MURMUR2_M) & _MASK32
        nonzero_prefix = int(prefix, 16) != 0
        for i in range(span):
            s = (start + i * _STRIDE) & 0xFFFF
            h = hm ^ blocks[s]
            h ^= h >> 13
            h = (h * _MURMUR2_M) & _MASK32
            h ^= h >> 15
            if (h & 0x7FFFFFFF) % n in targets and (s or nonzero_prefix):
                return i + 1, s
        return None

    @staticmethod
    def _fnv1a_suffix(prefix: str, start: int, span: int, n: int,
                      targets: set[int]) -> tuple[int, int] | None:
        """As :meth:`_murmur2_suffix`, for Sarama's FNV-1a partitioner (``|int32(h)| mod n``)."""
        h0 = fnv1a_32(prefix.encode("ascii"))  # the state after the prefix
        nonzero_prefix = int(prefix, 16) != 0
        for i in range(span):
            s = (start + i * _STRIDE) & 0xFFFF
            h = h0
            for shift in (12, 8, 4, 0):
                h = ((h ^ _HEX[(s >> shift) & 15]) * _FNV32_PRIME) & _MASK32
            if (h if h < 0x80000000 else (1 << 32) - h) % n in targets and (s or nonzero_prefix):
                return i + 1, s
        return None

    def _count(self, tries: int) -> None:
        s = self.stats
        s.minted += 1
        s.candidates += tries
        s.max_candidates = max(s.max_candidates, tries)

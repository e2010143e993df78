"""Partition functions against real producers and reference vectors; trace-id minting; probe ownership."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner

from tracecanary.daemon.cluster.partitioner import (
    NoOwnedPartitionError,
    TraceIdMinter,
    fnv1a_32,
    murmur2,
    murmur2_partition,
    probe_partition,
    sarama_compat_partition,
    trace_key,
)

# Go's hash/fnv golden32a vectors (src/hash/fnv/fnv_test.go).
FNV1A_GOLDEN = [(b"", 0x811C9DC5), (b"a", 0xE40C292C), (b"ab", 0x4D2505CA), (b"abc", 0x1A47E90B)]


@pytest.mark.parametrize(("data", "expected"), FNV1A_GOLDEN)
def test_fnv1a_matches_go_golden_vectors(data: bytes, expected: int) -> None:
    assert fnv1a_32(data) == expected


def test_sarama_min_int32_key() -> None:
    # Sarama's TestHashPartitionerMinInt32: this key's Sum32 is 2147483648, i.e. int32 MinInt32 —
    # the one value whose negation overflows in Go; the partition must still be in range.
    assert fnv1a_32(b"1468509572224") == 0x80000000
    assert sarama_compat_partition(b"1468509572224", 50) == 2147483648 % 50  # |MinInt32| rem 50 = 48
    assert sarama_compat_partition(b"1468509572224", 50) == 48


def test_sarama_compat_sign_handling() -> None:
    # "a": Sum32 0xe40c292c = int32 -468965076; Go: -468965076 % 7 = -6 (truncated), negated -> 6.
    assert fnv1a_32(b"a") - (1 << 32) == -468965076
    assert sarama_compat_partition(b"a", 7) == 6
    # Neither the unsigned rule (Sarama's hashUnsigned option) nor the Java mask rule gives that:
    assert (0xE40C292C % 7, (0xE40C292C & 0x7FFFFFFF) % 7) == (5, 3)
    # Positive hash ("abc": 0x1a47e90b = 440920331): plain modulo.
    assert sarama_compat_partition(b"abc", 10) == 440920331 % 10


def test_sarama_compat_matches_go_semantics_on_many_keys() -> None:
    """Against an independent rendering of Go's truncating int32 remainder (not abs-then-mod)."""
    rng = random.Random(7)
    for _ in range(5000):
        key = trace_key(format(rng.getrandbits(128), "032x"))
        n = rng.randint(1, 64)
        h = fnv1a_32(key)
        signed = h - (1 << 32) if h >= 1 << 31 else h
        quotient = int(signed / n) if abs(signed) < 1 << 52 else -(-signed // n)  # truncation toward 0
        go_rem = signed - quotient * n
        assert sarama_compat_partition(key, n) == (-go_rem if go_rem < 0 else go_rem)


def test_murmur2_matches_aiokafka_default_partitioner() -> None:
    """aiokafka's DefaultPartitioner (Kafka's Java default) is the real producer here."""
    rng = random.Random(11)
    keys = [trace_key(format(rng.getrandbits(128), "032x")) for _ in range(5000)]
    keys += [rng.randbytes(rng.randint(0, 40)) for _ in range(2000)]  # every tail length 0..3
    for key in keys:
        n = rng.randint(1, 64)
        partitions = list(range(n))
        assert murmur2_partition(key, n) == DefaultPartitioner()(key, partitions, partitions)


def test_murmur2_known_kafka_values() -> None:
    # Values from Kafka's UtilsTest.testMurmur2 (org.apache.kafka.common.utils).
    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536
    assert murmur2(b"a-little-bit-longer-string") == -1486304829
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971
    assert murmur2(b"abc") == 479470107


def test_trace_key_is_lowercase_hex_string() -> None:
    assert trace_key("0AF7651916CD43DD8448EB211C80319C") == b"0af7651916cd43dd8448eb211c80319c"
    assert len(trace_key("0af7651916cd43dd8448eb211c80319c")) == 32


@pytest.mark.parametrize("partitioner", ["sarama_compat", "murmur2"])
def test_minted_ids_land_on_owned_partitions(partitioner: str) -> None:
    minter = TraceIdMinter(partitioner, rng=random.Random(3))  # type: ignore[arg-type]
    n = 12
    owned = {2, 7}
    check = sarama_compat_partition if partitioner == "sarama_compat" else murmur2_partition
    ids = [minter.mint(owned, n) for _ in range(2000)]
    assert all(len(t) == 32 and int(t, 16) != 0 and t == t.lower() for t in ids)
    assert {check(trace_key(t), n) for t in ids} == owned
    assert len(set(ids)) == len(ids)
    # n / k = 6 candidates per id on average; allow wide slack (sampling).
    assert 3 < minter.stats.candidates / minter.stats.minted < 12


@pytest.mark.parametrize("partitioner", ["sarama_compat", "murmur2"])
@pytest.mark.parametrize(("n", "owned"), [(6, {4}), (64, {0, 33}), (256, {255}), (7, {0, 1, 2, 3, 4, 5, 6})])
def test_minted_ids_hash_whole_to_owned_partitions_with_many_partitions(partitioner: str, n: int,
                                                                       owned: set[int]) -> None:
    # The minter hashes a prefix once and only the last 4 chars per try: the whole id, hashed from
    # scratch by the producer's function, must land on an owned partition, for every partition count
    # (powers of two too, where FNV-1a's low bits decide) and across prefix redraws (1 of 256 owned).
    minter = TraceIdMinter(partitioner, rng=random.Random(n))  # type: ignore[arg-type]
    check = sarama_compat_partition if partitioner == "sarama_compat" else murmur2_partition
    ids = [minter.mint(owned, n) for _ in range(300)]
    assert all(check(trace_key(t), n) in owned for t in ids)
    assert len({t[:28] for t in ids}) == len(ids)  # every id has its own random prefix
    assert len(owned) == 1 or {check(trace_key(t), n) for t in ids} == owned
    # n / k tries per id on average (wide slack: sampling).
    assert 0.5 * n / len(owned) < minter.stats.candidates / minter.stats.minted < 2 * n / len(owned) + 1


def test_mint_one_of_many_partitions_and_bad_inputs() -> None:
    minter = TraceIdMinter("sarama_compat")
    tid = minter.mint({63}, 64)
    assert sarama_compat_partition(trace_key(tid), 64) == 63
    with pytest.raises(NoOwnedPartitionError, match="no owned partition"):
        minter.mint(set(), 8)
    with pytest.raises(NoOwnedPartitionError, match="no owned partition"):
        minter.mint({9}, 8)
    tiny = TraceIdMinter("murmur2", max_candidates=1, rng=random.Random(5))
    with pytest.raises(NoOwnedPartitionError, match="after 1 candidates"):
        for _ in range(100):
            tiny.mint({0}, 64)


def test_probe_partition_is_stable_and_spread() -> None:
    probes = [f"probe-{i}" for i in range(3000)]
    n = 6
    first = [probe_partition(p, n) for p in probes]
    assert first == [probe_partition(p, n) for p in probes]
    counts = [first.count(p) for p in range(n)]
    assert min(counts) > 3000 / n * 0.8
    assert probe_partition("orders-webhook", 6) == murmur2_partition(b"orders-webhook", 6)

"""The Merkle tree's edge cases, the exchange's refusals, and the token bucket.

Run as a script (``.venv/bin/python -m tests.unit.test_merkle``) to measure
update and root costs; the tests themselves time nothing.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterator

import pytest
import xxhash

from dynakv.core.antientropy import (
    Exchange,
    ExchangeLimits,
    MerkleKeysReply,
    MerkleKeysRequest,
    MerkleNodesReply,
    MerkleNodesRequest,
    TokenBucket,
    answer_nodes,
    check_keys_request,
    list_entries,
)
from dynakv.core.merkle import (
    DEFAULT_SHAPE,
    EMPTY_HASH,
    PartitionTree,
    TreeShape,
    record_digest,
)
from dynakv.core.record import Record, Sibling, encode_record
from dynakv.core.ring import partition_of
from dynakv.errors import RemoteProtocolError

D1, D2 = record_digest(b"one"), record_digest(b"two")
LIMITS = ExchangeLimits(nodes_per_message_max=64, entries_per_message_max=4, keys_per_round_max=100)
SMALL = TreeShape(4, 2)


# -- the tree -----------------------------------------------------------------


def test_empty_tree_and_a_purged_key_have_the_zero_root() -> None:
    tree = PartitionTree()
    assert tree.root() == EMPTY_HASH
    tree.update(b"k", None, D1)
    assert tree.root() != EMPTY_HASH
    tree.update(b"k", D1, D2)
    tree.update(b"k", D2, None)
    assert tree.root() == EMPTY_HASH
    assert tree.key_count == 0


def test_an_unchanged_digest_changes_nothing() -> None:
    tree = PartitionTree(SMALL)
    tree.update(b"k", None, D1)
    before = tree.root()
    tree.update(b"k", D1, D1)
    tree.update(b"absent", None, None)
    assert tree.root() == before
    assert tree.key_count == 1


def test_a_pair_applied_twice_shows_unlike_xor() -> None:
    once, twice = PartitionTree(SMALL), PartitionTree(SMALL)
    once.update(b"k", None, D1)
    twice.update(b"k", None, D1)
    twice.update(b"k", None, D1)  # a replayed insert: x ^ x would cancel to "absent"
    assert twice.root() not in (once.root(), EMPTY_HASH)


def test_removing_what_was_never_there_is_a_programmer_error() -> None:
    with pytest.raises(AssertionError):
        PartitionTree().update(b"k", D1, None)


def test_hashes_are_a_wire_contract() -> None:
    # Replicas of different versions compare these bytes: a change here needs a
    # new tree format and a rebuild, never a silent edit of these constants.
    assert record_digest(b"").hex() == "99aa06d3014798d86001c324468d497f"
    assert DEFAULT_SHAPE.segment_of(b"key") == 2741
    assert TreeShape(16, 2).segment_of(b"key") == 171
    tree = PartitionTree.build((b"k%d" % i, record_digest(b"v%d" % i)) for i in range(100))
    assert tree.root().hex() == "b86924ee8b214dedbbde767de8ee1532"
    leaf = DEFAULT_SHAPE.segment_of(b"k0")
    assert tree.level_hashes(3, [leaf])[0].hex() == "d3b431428093024d6567f4906da36a85"


def test_keys_of_one_partition_spread_over_the_segments() -> None:
    # Every key of a partition shares the ring's top hash bits; segments must not.
    shape = TreeShape(16, 2)
    same_partition = [k for i in range(80_000) if partition_of(k := b"u%d" % i, 16) == 3]
    loads = Counter(shape.segment_of(key) for key in same_partition)
    assert len(loads) == shape.leaf_count
    mean = len(same_partition) / shape.leaf_count
    assert max(loads.values()) < 2 * mean


def test_record_digest_is_of_the_stored_encoding() -> None:
    record = Record((Sibling(b"v", "n1", 5, (), 5),))
    assert record_digest(encode_record(record)) == xxhash.xxh3_128_digest(encode_record(record))
    tombstone = Record((Sibling(None, "n1", 6, (("n1", 5),), 6, 99),))
    assert record_digest(encode_record(tombstone)) != record_digest(encode_record(record))


def test_shape_bounds() -> None:
    assert DEFAULT_SHAPE.leaf_count == 4096
    for fanout, depth in ((1, 3), (16, 0), (257, 1), (2, 9), (64, 4)):
        with pytest.raises(AssertionError):
            TreeShape(fanout, depth)


def test_blob_with_a_valid_checksum_but_bad_leaves_is_refused() -> None:
    header = struct.Struct("<BHBQQI")
    leaf = struct.Struct("<I16s")

    def sealed(body: bytes) -> bytes:
        return body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))

    one = (1).to_bytes(16, "little")
    for leaves in (
        [(3, one), (3, one)],  # a segment twice
        [(5, one), (3, one)],  # out of order
        [(16, one)],  # past the last segment
        [(2, bytes(16))],  # an empty leaf saved as non-empty
    ):
        body = header.pack(1, 4, 2, 9, 5, len(leaves)) + b"".join(leaf.pack(*x) for x in leaves)
        with pytest.raises(ValueError, match="bad leaf"):
            PartitionTree.from_bytes(sealed(body), shape=SMALL, stamp=9)
    good = header.pack(1, 4, 2, 9, 1, 1) + leaf.pack(3, one)
    assert PartitionTree.from_bytes(sealed(good), shape=SMALL, stamp=9).key_count == 1
    with pytest.raises(ValueError, match="shape"):
        PartitionTree.from_bytes(sealed(good), shape=TreeShape(4, 3), stamp=9)
    with pytest.raises(ValueError, match="counts"):
        PartitionTree.from_bytes(
            sealed(header.pack(1, 4, 2, 9, 0, 1) + leaf.pack(3, one)), shape=SMALL, stamp=9
        )


# -- the exchange's refusals ----------------------------------------------------


def test_node_requests_out_of_bounds_are_refused() -> None:
    tree = PartitionTree(SMALL)
    bad = [
        MerkleNodesRequest(1, 16, 3, 0, (0,)),  # another shape
        MerkleNodesRequest(1, 4, 2, 3, (0,)),  # below the leaves
        MerkleNodesRequest(1, 4, 2, 1, (4,)),  # level 1 has 4 nodes
        MerkleNodesRequest(1, 4, 2, 2, (2, 1)),  # not ascending
        MerkleNodesRequest(1, 4, 2, 2, ()),
        MerkleNodesRequest(1, 4, 2, 2, tuple(range(16))),  # fine, but over a bound of 8 below
    ]
    limits = ExchangeLimits(nodes_per_message_max=8)
    for request in bad:
        with pytest.raises(RemoteProtocolError):
            answer_nodes(tree, request, limits)
    assert answer_nodes(tree, MerkleNodesRequest(1, 4, 2, 2, (0, 15)), limits) == MerkleNodesReply(
        (EMPTY_HASH, EMPTY_HASH)
    )


def test_keys_requests_over_the_page_limit_are_refused() -> None:
    check_keys_request(SMALL, MerkleKeysRequest(1, 4, 2, (0, 1), None, 4), LIMITS)
    for request in (
        MerkleKeysRequest(1, 4, 2, (0, 1), None, 5),
        MerkleKeysRequest(1, 4, 2, (0, 1), None, 0),
        MerkleKeysRequest(1, 4, 2, (16,), None, 4),
        MerkleKeysRequest(1, 4, 3, (0,), None, 4),
    ):
        with pytest.raises(RemoteProtocolError):
            check_keys_request(SMALL, request, LIMITS)


def keys_in(shape: TreeShape, segment: int, count: int) -> list[bytes]:
    found = [key for i in range(10_000) if shape.segment_of(key := b"x%04d" % i) == segment]
    return sorted(found)[:count]


def exchange_at_keys_phase(
    local: PartitionTree, remote: PartitionTree
) -> tuple[Exchange, MerkleKeysRequest]:
    exchange = Exchange(local, partition=1, limits=LIMITS)
    request: object = exchange.start()
    while isinstance(request, MerkleNodesRequest):
        request = exchange.on_nodes_reply(answer_nodes(remote, request, LIMITS))
    assert isinstance(request, MerkleKeysRequest)
    return exchange, request


def test_a_peer_page_that_breaks_the_contract_is_its_fault() -> None:
    keys = keys_in(SMALL, 5, 6)
    local, remote = PartitionTree(SMALL), PartitionTree(SMALL)
    remote.update(keys[0], None, D1)
    outside = next(k for k in (b"y%d" % i for i in range(100)) if SMALL.segment_of(k) != 5)
    empty = MerkleKeysReply((), more=False)
    for page in (
        MerkleKeysReply(((keys[1], D1), (keys[0], D1)), more=False),  # out of order
        MerkleKeysReply(((keys[0], D1),), more=True),  # "more" after a short page
        MerkleKeysReply(tuple((k, D1) for k in keys[:5]), more=False),  # over the limit
        MerkleKeysReply(((outside, D1),), more=False),  # not a requested segment
        MerkleKeysReply(((keys[0], b"short"),), more=False),
    ):
        exchange, _request = exchange_at_keys_phase(local, remote)
        with pytest.raises(RemoteProtocolError):
            exchange.on_keys_replies(empty, page)


def test_a_node_reply_of_the_wrong_length_is_refused() -> None:
    exchange = Exchange(PartitionTree(SMALL), partition=1, limits=LIMITS)
    exchange.start()
    with pytest.raises(RemoteProtocolError):
        exchange.on_nodes_reply(MerkleNodesReply((EMPTY_HASH, EMPTY_HASH)))


def test_pages_follow_the_lower_bound_of_two_full_pages() -> None:
    keys = keys_in(SMALL, 5, 8)
    local, remote = PartitionTree(SMALL), PartitionTree(SMALL)
    local_model = dict.fromkeys(keys[:6], D1)
    remote_model = dict.fromkeys(keys[2:], D1) | {keys[3]: D2}
    for key, digest in local_model.items():
        local.update(key, None, digest)
    for key, digest in remote_model.items():
        remote.update(key, None, digest)
    exchange, request = exchange_at_keys_phase(local, remote)
    pages = 0
    next_request: MerkleKeysRequest | None = request
    while next_request is not None:
        pages += 1
        mine = list_entries(SMALL, sorted(local_model.items()), next_request, lambda d: d)
        theirs = list_entries(SMALL, sorted(remote_model.items()), next_request, lambda d: d)
        next_request = exchange.on_keys_replies(mine, theirs)
    result = exchange.result()
    assert result.missing_here == (keys[6], keys[7])
    assert result.missing_there == (keys[0], keys[1])
    assert result.different == (keys[3],)
    assert result.complete
    assert pages == 3  # keys 0-3, 4-7, then an empty page after a page that was exactly full


def test_listing_reads_no_further_than_a_full_page_and_digests_only_its_segments() -> None:
    request = MerkleKeysRequest(1, 4, 2, (5,), b"x0000", 2)
    wanted = keys_in(SMALL, 5, 3)
    digested: list[bytes] = []
    consumed: list[bytes] = []

    def scan() -> Iterator[tuple[bytes, bytes]]:
        for i in range(10_000):
            key = b"x%04d" % i
            consumed.append(key)
            yield key, key

    def digest_of(stored: bytes) -> bytes:
        digested.append(stored)
        return D1

    page = list_entries(SMALL, scan(), request, digest_of)
    assert page == MerkleKeysReply(((wanted[0], D1), (wanted[1], D1)), more=True)
    assert digested == wanted[:2]
    assert consumed[-1] == wanted[1]


# -- the token bucket -------------------------------------------------------------


def test_bucket_lets_a_burst_through_then_paces_at_the_rate() -> None:
    bucket = TokenBucket(rate_bytes_per_s=1000, burst_bytes=500, now_ms=0)
    assert bucket.take(500, now_ms=0) == 0
    assert bucket.take(100, now_ms=0) == 100  # 100 bytes at 1000 B/s
    assert bucket.take(100, now_ms=100) == 100  # the first 100 were repaid, this one waits
    assert bucket.take(1, now_ms=1) == 101  # a clock stepping back refills nothing


def test_bucket_burst_is_bounded_after_idling() -> None:
    bucket = TokenBucket(rate_bytes_per_s=1000, burst_bytes=500, now_ms=0)
    bucket.take(500, now_ms=0)
    assert bucket.take(500, now_ms=3_600_000) == 0
    assert bucket.take(1, now_ms=3_600_000) == 1


def test_bucket_passes_a_record_larger_than_its_burst_after_a_wait() -> None:
    bucket = TokenBucket(rate_bytes_per_s=2000, burst_bytes=100, now_ms=0)
    assert bucket.take(1100, now_ms=0) == 500


def test_bucket_rounds_waits_up() -> None:
    bucket = TokenBucket(rate_bytes_per_s=3, burst_bytes=1, now_ms=0)
    assert bucket.take(2, now_ms=0) == 334  # 1 byte at 3 B/s is 333.3 ms


def test_bucket_holds_the_rate_over_a_long_stream() -> None:
    rate, burst, size = 10_000, 4096, 1500
    bucket = TokenBucket(rate_bytes_per_s=rate, burst_bytes=burst, now_ms=0)
    now_ms = 0
    sent = 0
    for _ in range(1000):
        now_ms += bucket.take(size, now_ms)  # the shell waits, then sends
        sent += size
    # Time spent is what the bytes beyond the first burst cost at the rate, to a ms a send.
    expected_ms = (sent - burst) * 1000 / rate
    assert expected_ms - 1 <= now_ms <= expected_ms + 1000


def measure() -> None:
    """Update and root costs on this machine (not a test: run as a script)."""
    import time
    import tracemalloc

    for shape in (TreeShape(16, 2), DEFAULT_SHAPE):
        tracemalloc.start()
        tree = PartitionTree(shape)
        tree.update(b"one", None, D1)
        tree.root()
        one_key_bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        tree = PartitionTree(shape)
        items = [(b"user:%08d" % i, record_digest(b"value %d" % i)) for i in range(100_000)]
        start = time.perf_counter()
        for key, digest in items:
            tree.update(key, None, digest)
        insert_us = (time.perf_counter() - start) * 1e6 / len(items)
        start = time.perf_counter()
        tree.root()
        first_root_ms = (time.perf_counter() - start) * 1e3
        changed = [(key, digest, record_digest(digest)) for key, digest in items[:10_000]]
        start = time.perf_counter()
        for key, old, new in changed:
            tree.update(key, old, new)
        update_us = (time.perf_counter() - start) * 1e6 / len(changed)
        start = time.perf_counter()
        tree.root()
        root_ms = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        tree.update(*changed[0][:1], changed[0][2], changed[0][1])
        tree.root()
        one_us = (time.perf_counter() - start) * 1e6
        blob = tree.to_bytes(1)
        print(
            f"shape {shape.fanout}/{shape.depth}: insert {insert_us:.2f} us/key "
            f"(100k keys), root after them {first_root_ms:.1f} ms; "
            f"overwrite {update_us:.2f} us/key, root after 10k overwrites {root_ms:.2f} ms; "
            f"one update + root {one_us:.0f} us; blob {len(blob)} bytes; "
            f"memory {one_key_bytes} bytes with one key, {tree_bytes(tree)} full"
        )


def tree_bytes(tree: PartitionTree) -> int:
    import sys

    parts: list[object] = [tree._levels, *tree._levels, tree._dense, tree._sparse]
    return sum(sys.getsizeof(part) for part in parts if part is not None)


if __name__ == "__main__":
    measure()

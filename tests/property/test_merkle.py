"""Merkle trees and the anti-entropy exchange against a dumb reference model.

The model of a replica's partition is a dict key -> record digest. Random
histories (insert, overwrite, delete as a new digest, purge, the same key on
both sides) are applied to the dicts and, through ``update(key, old, new)``,
to the trees. Then:

- the exchange's differing keys are exactly the symmetric difference of the
  dicts (one side only, or different digests), each in the right category;
- equal content gives equal trees whatever the order of the updates, and an
  incrementally kept tree equals one built from a scan;
- a saved tree restores exactly, and a damaged blob is refused;
- every message respects its bound, node rounds are at most depth + 1, and
  partial rounds converge when the caller repairs what they report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.core.antientropy import (
    Exchange,
    ExchangeLimits,
    ExchangeResult,
    MerkleKeysReply,
    MerkleKeysRequest,
    MerkleNodesReply,
    MerkleNodesRequest,
    answer_nodes,
    check_keys_request,
    list_entries,
)
from dynakv.core.merkle import PartitionTree, TreeShape, record_digest

FAST = settings(max_examples=150, deadline=None)
PARTITION = 7
DIGESTS = [record_digest(bytes([i])) for i in range(4)]
SHAPES = [
    TreeShape(2, 1),
    TreeShape(2, 3),
    TreeShape(3, 2),
    TreeShape(4, 2),
    TreeShape(16, 2),
    TreeShape(2, 6),
]
UNBOUNDED = ExchangeLimits(
    nodes_per_message_max=4096, entries_per_message_max=1000, keys_per_round_max=10_000
)

Message = MerkleNodesRequest | MerkleNodesReply | MerkleKeysRequest | MerkleKeysReply
M = TypeVar("M", bound=Message)
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)

keys = st.binary(min_size=1, max_size=3)
digests = st.sampled_from(DIGESTS)
# (side, key, digest or None = purge); side 0 = A, 1 = B, 2 = both.
operations = st.lists(
    st.tuples(st.integers(0, 2), keys, st.none() | digests | digests), max_size=80
)


class Replica:
    """A tree and its reference model, changed together."""

    def __init__(self, shape: TreeShape) -> None:
        self.tree = PartitionTree(shape)
        self.model: dict[bytes, bytes] = {}

    def put(self, key: bytes, digest: bytes | None) -> None:
        self.tree.update(key, self.model.get(key), digest)
        if digest is None:
            self.model.pop(key, None)
        else:
            self.model[key] = digest


def replicas(shape: TreeShape, ops: list[tuple[int, bytes, bytes | None]]) -> tuple[Replica, ...]:
    a, b = Replica(shape), Replica(shape)
    for side, key, digest in ops:
        for replica in ((a,), (b,), (a, b))[side]:
            replica.put(key, digest)
    return a, b


def wire(message: M) -> M:
    """Every message crosses an encode/decode, as it would on the RPC port."""
    decoded = _decoder.decode(_encoder.encode(message))
    assert type(decoded) is type(message) and decoded == message
    return message


class Trace:
    def __init__(self) -> None:
        self.node_rounds = 0
        self.key_rounds = 0


def run_exchange(a: Replica, b: Replica, limits: ExchangeLimits) -> tuple[ExchangeResult, Trace]:
    """A's exchange against B, with both shells played by the model, checking every bound."""
    shape = a.tree.shape
    trace = Trace()
    exchange = Exchange(a.tree, partition=PARTITION, limits=limits)
    request: MerkleNodesRequest | MerkleKeysRequest | None = exchange.start()
    rounds_max = shape.depth + 1 + (len(a.model) + len(b.model)) // limits.entries_per_message_max
    while request is not None:
        assert trace.node_rounds + trace.key_rounds <= rounds_max + 1, "the exchange runs away"
        request = wire(request)
        if isinstance(request, MerkleNodesRequest):
            trace.node_rounds += 1
            assert trace.key_rounds == 0 and request.level == trace.node_rounds - 1
            assert 1 <= len(request.indexes) <= limits.nodes_per_message_max
            reply = wire(answer_nodes(b.tree, request, limits))
            assert isinstance(reply, MerkleNodesReply)
            request = exchange.on_nodes_reply(reply)
        else:
            assert isinstance(request, MerkleKeysRequest)
            trace.key_rounds += 1
            check_keys_request(shape, request, limits)
            local = list_entries(shape, sorted(a.model.items()), request, _identity)
            remote = wire(list_entries(shape, sorted(b.model.items()), request, _identity))
            assert isinstance(remote, MerkleKeysReply)
            assert len(local.entries) <= limits.entries_per_message_max
            request = exchange.on_keys_replies(local, remote)
    assert exchange.done
    assert trace.node_rounds <= shape.depth + 1
    return exchange.result(), trace


def _identity(digest: bytes) -> bytes:
    return digest


def expected_diff(a: dict[bytes, bytes], b: dict[bytes, bytes]) -> tuple[set[bytes], ...]:
    missing_here = b.keys() - a.keys()
    missing_there = a.keys() - b.keys()
    different = {key for key in a.keys() & b.keys() if a[key] != b[key]}
    return missing_here, missing_there, different


def check_categories(result: ExchangeResult, a: Replica, b: Replica) -> None:
    """Whatever a round reports really differs, in the category it names, in key order."""
    missing_here, missing_there, different = expected_diff(a.model, b.model)
    assert set(result.missing_here) <= missing_here
    assert set(result.missing_there) <= missing_there
    assert set(result.different) <= different
    for found in (result.missing_here, result.missing_there, result.different):
        assert list(found) == sorted(set(found))


@FAST
@given(
    shape=st.sampled_from(SHAPES),
    ops=operations,
    entries_max=st.integers(1, 6),
)
def test_exchange_finds_exactly_the_symmetric_difference(
    shape: TreeShape, ops: list[tuple[int, bytes, bytes | None]], entries_max: int
) -> None:
    a, b = replicas(shape, ops)
    limits = ExchangeLimits(
        nodes_per_message_max=shape.leaf_count,
        entries_per_message_max=entries_max,
        keys_per_round_max=10_000,
    )
    result, trace = run_exchange(a, b, limits)
    missing_here, missing_there, different = expected_diff(a.model, b.model)
    check_categories(result, a, b)
    assert set(result.missing_here) == missing_here
    assert set(result.missing_there) == missing_there
    assert set(result.different) == different
    assert result.complete
    if a.model == b.model:
        assert trace.node_rounds == 1 and trace.key_rounds == 0
    else:
        assert trace.node_rounds == shape.depth + 1 and trace.key_rounds >= 1


@FAST
@given(
    shape=st.sampled_from(SHAPES),
    ops=operations,
    parents=st.integers(1, 3),
    entries_max=st.integers(1, 4),
    keys_max=st.integers(1, 4),
)
def test_partial_rounds_converge_when_repaired(
    shape: TreeShape,
    ops: list[tuple[int, bytes, bytes | None]],
    parents: int,
    entries_max: int,
    keys_max: int,
) -> None:
    a, b = replicas(shape, ops)
    limits = ExchangeLimits(
        nodes_per_message_max=parents * shape.fanout,
        entries_per_message_max=entries_max,
        keys_per_round_max=keys_max,
    )
    differing_at_start = sum(len(part) for part in expected_diff(a.model, b.model))
    for _ in range(differing_at_start + 1):
        result, _trace = run_exchange(a, b, limits)
        check_categories(result, a, b)
        assert len(result.differing_keys()) <= keys_max
        if result.complete:  # a round that says it is complete found every difference
            assert result.differing_keys() == set().union(*expected_diff(a.model, b.model))
        if result.complete and not result.differing_keys():
            break
        # Every round that does not finish must report something to repair.
        assert result.differing_keys()
        repair(a, b, result)
    else:
        raise AssertionError("anti-entropy did not converge within one round per differing key")
    assert a.model == b.model
    assert a.tree.root() == b.tree.root()


def repair(a: Replica, b: Replica, result: ExchangeResult) -> None:
    """What the shell does: pull, push, and for a conflict push the merge to both."""
    for key in result.missing_here:
        a.put(key, b.model[key])
    for key in result.missing_there:
        b.put(key, a.model[key])
    for key in result.different:
        merged = max(a.model[key], b.model[key])  # any deterministic join will do here
        a.put(key, merged)
        b.put(key, merged)


@FAST
@given(shape=st.sampled_from(SHAPES), ops=operations, data=st.data())
def test_equal_content_gives_equal_trees_whatever_the_order(
    shape: TreeShape, ops: list[tuple[int, bytes, bytes | None]], data: st.DataObject
) -> None:
    incremental = Replica(shape)
    for _side, key, digest in ops:
        incremental.put(key, digest)
    content = incremental.model
    shuffled = data.draw(st.permutations(sorted(content.items())))
    built = PartitionTree.build(shuffled, shape)
    scanned = PartitionTree.build(sorted(content.items()), shape)
    assert incremental.tree.root() == built.root() == scanned.root()
    assert incremental.tree.key_count == built.key_count == len(content)
    for level in range(shape.depth + 1):
        every = range(shape.level_size(level))
        assert incremental.tree.level_hashes(level, every) == built.level_hashes(level, every)


@FAST
@given(shape=st.sampled_from(SHAPES), ops=operations)
def test_different_content_gives_different_roots(
    shape: TreeShape, ops: list[tuple[int, bytes, bytes | None]]
) -> None:
    a, b = replicas(shape, ops)
    assert (a.tree.root() == b.tree.root()) == (a.model == b.model)
    empty = PartitionTree(shape).root()
    assert (a.tree.root() == empty) == (not a.model)


@FAST
@given(
    shape=st.sampled_from(SHAPES),
    ops=operations,
    more=operations,
    stamp=st.integers(0, 2**64 - 1),
)
def test_saved_tree_restores_exactly(
    shape: TreeShape,
    ops: list[tuple[int, bytes, bytes | None]],
    more: list[tuple[int, bytes, bytes | None]],
    stamp: int,
) -> None:
    original = Replica(shape)
    for _side, key, digest in ops:
        original.put(key, digest)
    restored = Replica(shape)
    restored.tree = PartitionTree.from_bytes(
        original.tree.to_bytes(stamp), shape=shape, stamp=stamp
    )
    restored.model = dict(original.model)
    assert restored.tree.root() == original.tree.root()
    assert restored.tree.key_count == original.tree.key_count
    # The restored tree keeps working like the original.
    for _side, key, digest in more:
        original.put(key, digest)
        restored.put(key, digest)
    assert restored.tree.root() == original.tree.root()
    assert restored.tree.root() == PartitionTree.build(original.model.items(), shape).root()


@FAST
@given(
    shape=st.sampled_from(SHAPES),
    ops=operations,
    stamp=st.integers(0, 2**32),
    damage=st.data(),
)
def test_damaged_blob_is_refused(
    shape: TreeShape,
    ops: list[tuple[int, bytes, bytes | None]],
    stamp: int,
    damage: st.DataObject,
) -> None:
    tree = Replica(shape)
    for _side, key, digest in ops:
        tree.put(key, digest)
    blob = tree.tree.to_bytes(stamp)
    index = damage.draw(st.integers(0, len(blob) - 1))
    flip = damage.draw(st.integers(1, 255))
    cut = damage.draw(st.integers(0, len(blob) - 1))
    damaged: list[Callable[[], object]] = [
        lambda: PartitionTree.from_bytes(
            blob[:index] + bytes([blob[index] ^ flip]) + blob[index + 1 :], shape=shape, stamp=stamp
        ),
        lambda: PartitionTree.from_bytes(blob[:cut], shape=shape, stamp=stamp),
        lambda: PartitionTree.from_bytes(blob, shape=shape, stamp=stamp + 1),
    ]
    for attempt in damaged:
        try:
            attempt()
        except ValueError:
            continue
        raise AssertionError("a damaged or stale tree blob was trusted")

"""Anti-entropy between two replicas of a partition: the exchange, and its rate limit.

The initiator's shell builds an ``Exchange`` over its live ``PartitionTree``,
sends the requests it returns to the peer, and feeds the replies back (pure,
synchronous, no I/O, like ``core.coordinator``). The peer's shell answers
with ``answer_nodes`` (from its tree), and with ``check_keys_request`` then
``list_entries`` (from a scan of its partition, in key order). Both sides
must share one ``TreeShape`` and one ``ExchangeLimits``: a responder refuses
requests past its own bounds.

1. Nodes: ask the root (level 0); on a mismatch ask the children of the
   differing nodes, level by level, down to the differing leaf segments.
   One request per level, at most ``nodes_per_message_max`` hashes, so at
   most ``depth + 1`` node round trips. When more nodes differ than fit, the
   first (by index) are followed and the round is partial.
2. Keys: list the (key, digest) entries of the differing segments on both
   sides in key order, a page of at most ``entries_per_message_max`` at a
   time; the shell lists its own page with the same ``MerkleKeysRequest``
   and feeds both pages. A page that is full (``more``) covers keys up to
   its last; the two pages are compared up to the lower of those bounds and
   the next page starts after it, so ``after_key`` strictly increases and
   the pages end. A round stops after ``keys_per_round_max`` differing keys.

The result names the keys to pull (``missing_here``), to push
(``missing_there``) and to pull, merge and push back (``different``), in
key order. A partial result (``complete`` False) still names only keys that
really differed; once the caller repairs them the next round gets further,
so repeated rounds converge.

The tree may change while an exchange runs: a key written meanwhile may be
reported (repairing it is a harmless merge) or found in a later round.
Must never: import asyncio, read a clock, choose randomly, or touch storage.
``TokenBucket`` paces the streaming of the repaired records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import TypeVar

import msgspec

from dynakv.core.merkle import DIGEST_BYTES, HASH_BYTES, PartitionTree, TreeShape
from dynakv.errors import RemoteProtocolError

T = TypeVar("T")
Entry = tuple[bytes, bytes]  # (key, record digest)


class MerkleNodesRequest(msgspec.Struct, frozen=True, array_like=True, tag="mkn"):
    """The hashes of nodes ``indexes`` (ascending) of ``level`` of the partition's tree."""

    partition: int
    fanout: int
    depth: int
    level: int
    indexes: tuple[int, ...]


class MerkleNodesReply(msgspec.Struct, frozen=True, array_like=True, tag="mknr"):
    hashes: tuple[bytes, ...]


class MerkleKeysRequest(msgspec.Struct, frozen=True, array_like=True, tag="mkk"):
    """Up to ``limit`` entries of ``segments`` with keys after ``after_key``, in key order."""

    partition: int
    fanout: int
    depth: int
    segments: tuple[int, ...]
    after_key: bytes | None
    limit: int


class MerkleKeysReply(msgspec.Struct, frozen=True, array_like=True, tag="mkkr"):
    """``more``: the page is full, and keys after its last may follow."""

    entries: tuple[tuple[bytes, bytes], ...]
    more: bool


@dataclass(frozen=True, slots=True)
class ExchangeLimits:
    # 1024 hashes ~ 18 KiB; 1000 entries of 2 KiB keys ~ 2 MiB, under the RPC frame maximum.
    nodes_per_message_max: int = 1024
    entries_per_message_max: int = 1000
    keys_per_round_max: int = 10_000

    def __post_init__(self) -> None:
        assert self.nodes_per_message_max >= 1, self.nodes_per_message_max
        assert self.entries_per_message_max >= 1, self.entries_per_message_max
        assert self.keys_per_round_max >= 1, self.keys_per_round_max


@dataclass(frozen=True, slots=True)
class ExchangeResult:
    missing_here: tuple[bytes, ...]  # only the peer has them: pull
    missing_there: tuple[bytes, ...]  # only we have them: push
    different: tuple[bytes, ...]  # both have them, differently: pull, merge, push the merge
    complete: bool  # False: a bound cut the round short; run another soon

    def differing_keys(self) -> frozenset[bytes]:
        return frozenset((*self.missing_here, *self.missing_there, *self.different))


def answer_nodes(
    tree: PartitionTree, request: MerkleNodesRequest, limits: ExchangeLimits
) -> MerkleNodesReply:
    """The responder's side of a node round; RemoteProtocolError on a request we must refuse."""
    _check_shape(tree.shape, request.fanout, request.depth)
    if not 0 <= request.level <= tree.shape.depth:
        raise RemoteProtocolError(f"tree level {request.level} out of range", level=request.level)
    problem = _indexes_problem(
        request.indexes, tree.shape.level_size(request.level), limits.nodes_per_message_max
    )
    if problem is not None:
        raise RemoteProtocolError(f"merkle node request: {problem}", level=request.level)
    return MerkleNodesReply(tree.level_hashes(request.level, request.indexes))


def check_keys_request(
    shape: TreeShape, request: MerkleKeysRequest, limits: ExchangeLimits
) -> None:
    """Refuse (RemoteProtocolError) a key-list request we must not serve."""
    _check_shape(shape, request.fanout, request.depth)
    problem = _indexes_problem(request.segments, shape.leaf_count, limits.nodes_per_message_max)
    if problem is None and not 1 <= request.limit <= limits.entries_per_message_max:
        problem = f"limit {request.limit} outside 1..{limits.entries_per_message_max}"
    if problem is not None:
        raise RemoteProtocolError(f"merkle keys request: {problem}")


def list_entries(
    shape: TreeShape,
    items: Iterable[tuple[bytes, T]],
    request: MerkleKeysRequest,
    digest_of: Callable[[T], bytes],
) -> MerkleKeysReply:
    """One page of a partition's entries for ``request``, from ``items`` in ascending key order.

    ``items`` may start anywhere at or before ``after_key`` (a seek saves the
    scan). ``digest_of`` runs only for keys in the requested segments. Stops
    at the first key past a full page, so it never reads further than that.
    """
    segments = frozenset(request.segments)
    after_key = request.after_key
    entries: list[Entry] = []
    previous: bytes | None = None
    for key, stored in items:
        assert previous is None or key > previous, "items are not in ascending key order"
        previous = key
        if (after_key is not None and key <= after_key) or shape.segment_of(key) not in segments:
            continue
        entries.append((key, digest_of(stored)))
        if len(entries) == request.limit:
            return MerkleKeysReply(tuple(entries), more=True)
    return MerkleKeysReply(tuple(entries), more=False)


class Exchange:
    """The initiator's side of one round against one peer, for one partition."""

    __slots__ = (
        "_different",
        "_done",
        "_keys_request",
        "_missing_here",
        "_missing_there",
        "_nodes_request",
        "_truncated",
        "limits",
        "partition",
        "tree",
    )

    def __init__(self, tree: PartitionTree, *, partition: int, limits: ExchangeLimits) -> None:
        assert limits.nodes_per_message_max >= tree.shape.fanout, (limits, tree.shape)
        self.tree = tree
        self.partition = partition
        self.limits = limits
        self._nodes_request: MerkleNodesRequest | None = None
        self._keys_request: MerkleKeysRequest | None = None
        self._missing_here: list[bytes] = []
        self._missing_there: list[bytes] = []
        self._different: list[bytes] = []
        self._truncated = False
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def start(self) -> MerkleNodesRequest:
        assert self._nodes_request is None and not self._done, "an exchange starts once"
        return self._ask_nodes(0, (0,))

    def on_nodes_reply(
        self, reply: MerkleNodesReply
    ) -> MerkleNodesRequest | MerkleKeysRequest | None:
        """The peer's hashes; the next request to send, or None when the round is over."""
        request = self._nodes_request
        assert request is not None and not self._done, "no node request is waiting"
        self._nodes_request = None
        if len(reply.hashes) != len(request.indexes) or any(
            len(node_hash) != HASH_BYTES for node_hash in reply.hashes
        ):
            raise RemoteProtocolError("merkle node reply does not match its request")
        local = self.tree.level_hashes(request.level, request.indexes)
        differing = [
            index
            for index, mine, theirs in zip(request.indexes, local, reply.hashes, strict=True)
            if mine != theirs
        ]
        if not differing:
            self._done = True
            return None
        if request.level == self.tree.shape.depth:
            return self._ask_keys(tuple(differing), None)
        fanout = self.tree.shape.fanout
        parents_max = self.limits.nodes_per_message_max // fanout
        if len(differing) > parents_max:
            self._truncated = True
            differing = differing[:parents_max]
        children = tuple(
            child for parent in differing for child in range(parent * fanout, (parent + 1) * fanout)
        )
        return self._ask_nodes(request.level + 1, children)

    def on_keys_replies(
        self, local: MerkleKeysReply, remote: MerkleKeysReply
    ) -> MerkleKeysRequest | None:
        """Our page and the peer's for the same request; the next request, or None when over."""
        request = self._keys_request
        assert request is not None and not self._done, "no keys request is waiting"
        self._keys_request = None
        local_problem = _page_problem(self.tree.shape, request, local)
        assert local_problem is None, local_problem
        remote_problem = _page_problem(self.tree.shape, request, remote)
        if remote_problem is not None:
            raise RemoteProtocolError(f"merkle keys reply: {remote_problem}")
        bounds = [page.entries[-1][0] for page in (local, remote) if page.more]
        covered_to = min(bounds) if bounds else None
        if not self._compare(local.entries, remote.entries, covered_to) or covered_to is None:
            self._done = True
            return None
        return self._ask_keys(request.segments, covered_to)

    def result(self) -> ExchangeResult:
        assert self._done, "the exchange is still running"
        return ExchangeResult(
            missing_here=tuple(self._missing_here),
            missing_there=tuple(self._missing_there),
            different=tuple(self._different),
            complete=not self._truncated,
        )

    def _ask_nodes(self, level: int, indexes: tuple[int, ...]) -> MerkleNodesRequest:
        assert 1 <= len(indexes) <= self.limits.nodes_per_message_max, len(indexes)
        shape = self.tree.shape
        self._nodes_request = MerkleNodesRequest(
            self.partition, shape.fanout, shape.depth, level, indexes
        )
        return self._nodes_request

    def _ask_keys(self, segments: tuple[int, ...], after_key: bytes | None) -> MerkleKeysRequest:
        shape = self.tree.shape
        self._keys_request = MerkleKeysRequest(
            self.partition,
            shape.fanout,
            shape.depth,
            segments,
            after_key,
            self.limits.entries_per_message_max,
        )
        return self._keys_request

    def _compare(
        self, local: Iterable[Entry], remote: Iterable[Entry], to_key: bytes | None
    ) -> bool:
        """Record the keys that differ up to ``to_key``; False once the round's bound is hit."""
        mine = {key: digest for key, digest in local if to_key is None or key <= to_key}
        theirs = {key: digest for key, digest in remote if to_key is None or key <= to_key}
        for key in sorted(mine.keys() | theirs.keys()):
            if key not in mine:
                self._missing_here.append(key)
            elif key not in theirs:
                self._missing_there.append(key)
            elif mine[key] != theirs[key]:
                self._different.append(key)
            else:
                continue
            found = len(self._missing_here) + len(self._missing_there) + len(self._different)
            if found == self.limits.keys_per_round_max:
                self._truncated = True
                return False
        return True


def _check_shape(shape: TreeShape, fanout: int, depth: int) -> None:
    if (fanout, depth) != (shape.fanout, shape.depth):
        raise RemoteProtocolError(
            f"merkle tree shape {fanout}/{depth} differs from ours {shape.fanout}/{shape.depth}",
            fanout=fanout,
            depth=depth,
        )


def _indexes_problem(indexes: tuple[int, ...], size: int, count_max: int) -> str | None:
    if not 1 <= len(indexes) <= count_max:
        return f"{len(indexes)} indexes, outside 1..{count_max}"
    if any(b <= a for a, b in pairwise(indexes)):
        return "indexes are not ascending and unique"
    if indexes[0] < 0 or indexes[-1] >= size:
        return f"an index outside 0..{size - 1}"
    return None


def _page_problem(
    shape: TreeShape, request: MerkleKeysRequest, page: MerkleKeysReply
) -> str | None:
    """Why ``page`` cannot be an answer to ``request``, or None."""
    entries = page.entries
    if len(entries) > request.limit or (page.more and len(entries) != request.limit):
        return f"{len(entries)} entries (more={page.more}) for a limit of {request.limit}"
    segments = frozenset(request.segments)
    previous = request.after_key
    for key, digest in entries:
        if previous is not None and key <= previous:
            return "keys are not ascending, or not after after_key"
        if len(digest) != DIGEST_BYTES or shape.segment_of(key) not in segments:
            return "an entry with a bad digest or outside the requested segments"
        previous = key
    return None


class TokenBucket:
    """A byte-rate limit with a bounded burst; time arrives as ``now_ms``.

    ``take(size_bytes, now_ms)`` spends ``size_bytes`` at once, going into
    debt if needed (so a record larger than the burst still passes), and
    returns how long the caller must wait before sending it. Tokens are
    counted in millibytes so the arithmetic is exact integers. A clock that
    steps back refills nothing.
    """

    __slots__ = ("_last_ms", "_millibytes", "burst_bytes", "rate_bytes_per_s")

    def __init__(self, *, rate_bytes_per_s: int, burst_bytes: int, now_ms: int) -> None:
        assert rate_bytes_per_s >= 1, rate_bytes_per_s
        assert burst_bytes >= 1, burst_bytes
        self.rate_bytes_per_s = rate_bytes_per_s
        self.burst_bytes = burst_bytes
        self._millibytes = burst_bytes * 1000
        self._last_ms = now_ms

    def take(self, size_bytes: int, now_ms: int) -> int:
        """Spend ``size_bytes``; the milliseconds to wait before sending them (0: now)."""
        assert size_bytes >= 0, size_bytes
        elapsed_ms = max(0, now_ms - self._last_ms)
        self._last_ms = max(self._last_ms, now_ms)
        # rate bytes/s is rate millibytes/ms.
        self._millibytes = min(
            self.burst_bytes * 1000, self._millibytes + elapsed_ms * self.rate_bytes_per_s
        )
        self._millibytes -= size_bytes * 1000
        if self._millibytes >= 0:
            return 0
        return -(self._millibytes // self.rate_bytes_per_s)  # ceil(debt / rate)

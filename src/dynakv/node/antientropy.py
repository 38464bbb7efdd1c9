"""Anti-entropy on this node: Merkle rounds with the other replicas of its partitions.

Owns the shell around ``core.antientropy``: the responder (``handle``) and
the initiator (``run_round``, ``repair``, ``run_forever``), the repair
messages that move whole records, the byte-rate limit, the round reports and
the tombstone confirmations (``tombstone_confirmed``). Trees live in
``node.merkle_trees.TreeKeeper``.

A round against one peer for one partition: (1) drive an ``Exchange`` over
our live tree to the differing keys; (2) pull the keys the peer alone has or
holds differently (``RepairPull``), check each record (``check_peer_record``),
merge it (``replica.apply``, a join, so order and repeats do not matter) and
wait for it to be durable; (3) push ours that the peer lacks or that differed,
now merged (``RepairPush``; the peer checks, merges, and answers once
durable). Every record moved is paced by one ``TokenBucket`` for the node.
A failure (``RpcError``, a bad reply, a full disk) ends the round as failed
and partial: what was merged stays merged (each merge is whole), the rest
waits for the next round.

Records whose every sibling is past its purge time are never pulled, pushed
or served: a tombstone the sweeper may already have purged somewhere is not
brought back by anti-entropy. Nor is one purged early (``tombstone_confirmed``).
The root of a tree is answered only after a sync, so an equal root means
content the peer holds durably.

Tombstones purged early (item 6): see ``tombstone_confirmed``.

Bounds: node and key pages (``ExchangeLimits``), keys and bytes per repair
message (one record past the byte bound travels alone), messages per
exchange, rounds in flight, rounds per peer in a repair, one ``repair`` at a
time, tree builds in flight (``TreeKeeper``), confirmations and early-purged
keys kept, rounds listed in a report and in ``status``.
Must never: import ``dynakv.net`` (``net.messages`` imports the messages
below), apply a record a check refused, or sleep except through ``sleep_ms``.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar, assert_never

import msgspec

from dynakv.core.antientropy import (
    Exchange,
    ExchangeLimits,
    ExchangeResult,
    MerkleKeysReply,
    MerkleKeysRequest,
    MerkleNodesReply,
    MerkleNodesRequest,
    TokenBucket,
    answer_nodes,
    check_keys_request,
)
from dynakv.core.merkle import PartitionTree, record_digest
from dynakv.core.record import Record, encode_record
from dynakv.core.ring import Ring, partition_of
from dynakv.errors import DynakvError, InvalidRequest, Overloaded, RemoteProtocolError
from dynakv.node.merkle_trees import Confirmation, Confirmations, TreeKeeper

log = logging.getLogger(__name__)

KeyedRecords = tuple[tuple[bytes, Record], ...]


class RepairPull(msgspec.Struct, frozen=True, array_like=True, tag="aepull"):
    """Send the records of ``keys`` of ``partition``, in order, up to ``bytes_max``."""

    partition: int
    keys: tuple[bytes, ...]
    bytes_max: int


class RepairPullReply(msgspec.Struct, frozen=True, array_like=True, tag="aepullr"):
    """The records of the first ``served`` keys asked for (absent ones and the
    ``expired``, past their purge time, left out); the asker asks again for the rest."""

    records: KeyedRecords
    served: int
    expired: int


class RepairPush(msgspec.Struct, frozen=True, array_like=True, tag="aepush"):
    """Merge each record into the receiver's copy, durably, then reply."""

    partition: int
    records: KeyedRecords


class RepairPushReply(msgspec.Struct, frozen=True, array_like=True, tag="aepushr"):
    applied: int
    refused: int  # out of bounds: not merged, and the sender is reported
    expired: int  # past its purge time: not merged


AntiEntropyRequest = MerkleNodesRequest | MerkleKeysRequest | RepairPull | RepairPush
AntiEntropyReply = MerkleNodesReply | MerkleKeysReply | RepairPullReply | RepairPushReply
AntiEntropyMessage = AntiEntropyRequest | AntiEntropyReply
_R = TypeVar("_R", MerkleNodesReply, MerkleKeysReply, RepairPullReply, RepairPushReply)
# For ``isinstance`` in the RPC dispatch.
ANTI_ENTROPY_REQUESTS = (MerkleNodesRequest, MerkleKeysRequest, RepairPull, RepairPush)


class AntiEntropyPeers(Protocol):
    """``net.rpc.PeerPool`` as anti-entropy sees it (errors per ``net.rpc``)."""

    async def call(self, node_id: str, message: AntiEntropyRequest, timeout_ms: int) -> object: ...


class ReplicaView(Protocol):
    """``node.replica.LocalReplica`` as anti-entropy sees it."""

    @property
    def node_id(self) -> str: ...

    def read(self, partition: int, key: bytes) -> Record | None: ...

    def apply(self, partition: int, key: bytes, incoming: Record) -> Record: ...

    def check_peer_record(self, sender: str, record: Record) -> str | None: ...

    async def durable(self) -> None: ...


@dataclass(frozen=True, slots=True)
class AntiEntropySettings:
    exchange: ExchangeLimits = field(default_factory=ExchangeLimits)
    rate_bytes_per_s: int = 8 * 1024 * 1024
    burst_bytes: int = 1024 * 1024
    call_timeout_ms: int = 5000
    repair_keys_per_message_max: int = 256
    repair_bytes_per_message_max: int = 1024 * 1024
    key_bytes_max: int = 2048
    exchange_messages_max: int = 10_000
    rounds_inflight_max: int = 2
    rounds_per_peer_max: int = 16  # in one repair, while rounds come back partial
    confirm_settle_ms: int = 10_000  # outlasts any message sent before a confirmation
    confirm_ttl_ms: int = 3_600_000  # longer than a walk over every (partition, peer)
    confirmations_max: int = 65_536
    report_rounds_max: int = 64
    recent_rounds_max: int = 32

    def __post_init__(self) -> None:
        assert min(self.rate_bytes_per_s, self.burst_bytes, self.call_timeout_ms) >= 1
        assert min(self.repair_keys_per_message_max, self.repair_bytes_per_message_max) >= 1
        assert min(self.rounds_inflight_max, self.rounds_per_peer_max) >= 1
        assert self.exchange_messages_max >= 1
        assert 0 <= self.confirm_settle_ms <= self.confirm_ttl_ms


class RoundOutcome(StrEnum):
    IN_SYNC = "in_sync"  # the trees matched: nothing to move
    REPAIRED = "repaired"  # keys differed and every transfer finished
    FAILED = "failed"  # an error ended the round part-way (see ``error``)


@dataclass(frozen=True, slots=True)
class RoundReport:
    partition: int
    peer: str
    outcome: RoundOutcome
    complete: bool  # False: a bound or an error cut it short; run another
    differing_keys: int
    keys_pulled: int  # records merged here
    bytes_pulled: int  # their encoded size
    keys_pushed: int  # records the peer merged
    bytes_pushed: int  # encoded size of the records sent
    refused: int  # records from the peer refused here (out of bounds)
    refused_by_peer: int
    expired_skipped: int  # past their purge time on either side: never moved
    waited_ms: int  # time spent waiting for the rate limit
    error: str | None = None


@dataclass(slots=True)
class _Tally:
    partition: int
    peer: str
    differing_keys: int = 0
    exchange_complete: bool = False
    keys_pulled: int = 0
    bytes_pulled: int = 0
    keys_pushed: int = 0
    bytes_pushed: int = 0
    refused: int = 0
    refused_by_peer: int = 0
    expired_skipped: int = 0
    waited_ms: int = 0
    error: str | None = None

    def report(self) -> RoundReport:
        if self.error is not None:
            outcome = RoundOutcome.FAILED
        elif self.differing_keys == 0 and self.exchange_complete:
            outcome = RoundOutcome.IN_SYNC
        else:
            outcome = RoundOutcome.REPAIRED
        fields = {name: getattr(self, name) for name in _COUNTERS}
        return RoundReport(
            partition=self.partition,
            peer=self.peer,
            outcome=outcome,
            complete=self.exchange_complete and self.error is None,
            differing_keys=self.differing_keys,
            error=self.error,
            **fields,
        )


_COUNTERS = (
    "keys_pulled",
    "bytes_pulled",
    "keys_pushed",
    "bytes_pushed",
    "refused",
    "refused_by_peer",
    "expired_skipped",
    "waited_ms",
)


@dataclass(frozen=True, slots=True)
class RepairReport:
    """Totals over every round, and the rounds that moved data or failed (at most
    ``report_rounds_max`` of them; ``rounds_unlisted`` counts the rest)."""

    partitions: int
    rounds_total: int
    rounds_failed: int
    rounds_partial: int
    peers_skipped: int  # replicas that were not live
    totals: dict[str, int]
    rounds: tuple[RoundReport, ...]
    rounds_unlisted: int

    @property
    def keys_moved(self) -> int:
        return self.totals["keys_pulled"] + self.totals["keys_pushed"]

    @property
    def bytes_moved(self) -> int:
        return self.totals["bytes_pulled"] + self.totals["bytes_pushed"]

    def to_dict(self) -> dict[str, Any]:
        summary = asdict(self)
        summary["keys_moved"], summary["bytes_moved"] = self.keys_moved, self.bytes_moved
        return summary


class _ReportBuilder:
    def __init__(self, rounds_max: int) -> None:
        self.rounds_max = rounds_max
        self.partitions = self.rounds_total = self.rounds_failed = self.rounds_partial = 0
        self.peers_skipped = 0
        self.totals = dict.fromkeys(_COUNTERS, 0)
        self.listed: list[RoundReport] = []
        self.unlisted = 0

    def add(self, report: RoundReport) -> None:
        self.rounds_total += 1
        self.rounds_failed += report.outcome is RoundOutcome.FAILED
        self.rounds_partial += not report.complete
        for name in _COUNTERS:
            self.totals[name] += getattr(report, name)
        if report.outcome is RoundOutcome.IN_SYNC:
            return
        if len(self.listed) < self.rounds_max:
            self.listed.append(report)
        else:
            self.unlisted += 1

    def report(self) -> RepairReport:
        return RepairReport(
            partitions=self.partitions,
            rounds_total=self.rounds_total,
            rounds_failed=self.rounds_failed,
            rounds_partial=self.rounds_partial,
            peers_skipped=self.peers_skipped,
            totals=dict(self.totals),
            rounds=tuple(self.listed),
            rounds_unlisted=self.unlisted,
        )


async def _asyncio_sleep_ms(delay_ms: int) -> None:
    await asyncio.sleep(delay_ms / 1000)


class AntiEntropy:
    """This node's anti-entropy: answers peers' rounds and runs its own."""

    def __init__(
        self,
        *,
        replica: ReplicaView,
        trees: TreeKeeper,
        peers: AntiEntropyPeers,
        ring: Callable[[], Ring],
        is_live: Callable[[str], bool],
        now_ms: Callable[[], int],
        sleep_ms: Callable[[int], Awaitable[None]] = _asyncio_sleep_ms,
        settings: AntiEntropySettings | None = None,
    ) -> None:
        self.settings = settings if settings is not None else AntiEntropySettings()
        assert self.settings.exchange.nodes_per_message_max >= trees.shape.fanout
        self.replica = replica
        self.node_id = replica.node_id
        self.trees = trees
        self.peers = peers
        self._ring = ring
        self._is_live = is_live
        self._now_ms = now_ms
        self._sleep_ms = sleep_ms
        self._bucket = TokenBucket(
            rate_bytes_per_s=self.settings.rate_bytes_per_s,
            burst_bytes=self.settings.burst_bytes,
            now_ms=now_ms(),
        )
        self.confirmations = Confirmations(self.settings.confirmations_max)
        # Tombstones found confirmed, so maybe purged here: never stored again.
        self._purged_early: dict[tuple[int, bytes], bytes] = {}
        self._rounds_inflight = 0
        self._repairing = False
        self._pairs: tuple[Ring | None, list[tuple[int, str]]] = (None, [])
        self.recent_rounds: deque[RoundReport] = deque(maxlen=self.settings.recent_rounds_max)
        self.lifetime = _ReportBuilder(rounds_max=0)

    # -- responder -------------------------------------------------------------

    def handle(self, message: AntiEntropyRequest, sender: str) -> Awaitable[AntiEntropyReply]:
        """The RPC handler for anti-entropy requests from member ``sender``."""
        if isinstance(message, MerkleNodesRequest):
            return self._on_nodes(message)
        if isinstance(message, MerkleKeysRequest):
            return self._on_keys(message)
        if isinstance(message, RepairPull):
            return self._on_pull(message)
        if isinstance(message, RepairPush):
            return self._on_push(message, sender)
        assert_never(message)

    async def _on_nodes(self, request: MerkleNodesRequest) -> MerkleNodesReply:
        self._check_partition(request.partition)
        shape = self.trees.shape
        if (request.fanout, request.depth) != (shape.fanout, shape.depth):
            raise RemoteProtocolError(
                f"merkle tree shape {request.fanout}/{request.depth} differs from ours "
                f"{shape.fanout}/{shape.depth}"
            )
        tree = await self.trees.ready(request.partition, self._sleep_ms)
        reply = answer_nodes(tree, request, self.settings.exchange)
        if request.level == 0:
            # An equal root confirms tombstones (``tombstone_confirmed``): what it
            # hashes must survive a crash of this node.
            await self.replica.durable()
        return reply

    async def _on_keys(self, request: MerkleKeysRequest) -> MerkleKeysReply:
        self._check_partition(request.partition)
        check_keys_request(self.trees.shape, request, self.settings.exchange)
        return await self.trees.list_entries(request, self._sleep_ms)

    async def _on_pull(self, request: RepairPull) -> RepairPullReply:
        self._check_partition(request.partition)
        self._check_keys(request.partition, request.keys)
        if request.bytes_max < 1:
            raise RemoteProtocolError(f"repair pull of bytes_max {request.bytes_max}")
        bytes_max = min(request.bytes_max, self.settings.repair_bytes_per_message_max)
        now_ms = self._now_ms()
        records: list[tuple[bytes, Record]] = []
        size_total = served = expired = 0
        for key in request.keys:
            record = self.replica.read(request.partition, key)
            if record is not None and _purgeable(record, now_ms):
                expired += 1
            elif record is not None:
                size = len(encode_record(record))
                if records and size_total + size > bytes_max:
                    break
                records.append((key, record))
                size_total += size
            served += 1
        return RepairPullReply(records=tuple(records), served=served, expired=expired)

    async def _on_push(self, request: RepairPush, sender: str) -> RepairPushReply:
        self._check_partition(request.partition)
        self._check_keys(request.partition, tuple(key for key, _ in request.records))
        tally = _Tally(request.partition, sender)
        applied = self._merge(request.partition, sender, request.records, tally)
        if applied:
            await self.replica.durable()
        return RepairPushReply(applied, tally.refused, tally.expired_skipped)

    def _check_partition(self, partition: int) -> None:
        ring = self._ring()
        if not 0 <= partition < ring.partition_count:
            raise RemoteProtocolError(f"partition {partition} out of range")
        if self.node_id not in ring.preference_list(partition):
            raise InvalidRequest(
                f"node {self.node_id} does not replicate partition {partition}",
                field="partition",
                partition=partition,
            )

    def _check_keys(self, partition: int, keys: Sequence[bytes]) -> None:
        """Refuse the whole request (nothing applied) if any key is not the partition's."""
        settings, count = self.settings, self._ring().partition_count
        if not 1 <= len(keys) <= settings.repair_keys_per_message_max:
            raise RemoteProtocolError(
                f"{len(keys)} keys in a repair message; the limit is "
                f"{settings.repair_keys_per_message_max}"
            )
        if len(set(keys)) != len(keys):
            raise RemoteProtocolError("a repair message names a key twice")
        for key in keys:
            if not 1 <= len(key) <= settings.key_bytes_max or partition_of(key, count) != partition:
                raise RemoteProtocolError(f"a repair key is not one of partition {partition}'s")

    # -- initiator -------------------------------------------------------------

    async def run_round(self, partition: int, peer: str) -> RoundReport:
        """One exchange and repair of ``partition`` with ``peer``; never raises a
        ``DynakvError`` (a failure is the report's ``error``)."""
        assert peer != self.node_id, "a round is with another replica"
        tally = _Tally(partition, peer)
        if self._rounds_inflight >= self.settings.rounds_inflight_max:
            tally.error = _describe(
                Overloaded(resource="anti_entropy_rounds", limit=self.settings.rounds_inflight_max)
            )
            return self._finish(tally)
        self._rounds_inflight += 1
        try:
            tree = await self.trees.ready(partition, self._sleep_ms)
            result = await self._exchange(tree, partition, peer)
            tally.differing_keys = len(result.differing_keys())
            tally.exchange_complete = result.complete
            await self._pull(
                partition, peer, sorted((*result.missing_here, *result.different)), tally
            )
            keys = sorted((*result.missing_there, *result.different))
            await self._push(partition, peer, keys, frozenset(result.missing_there), tally)
        except DynakvError as exc:
            tally.error = _describe(exc)
            log.info(
                "anti-entropy round failed partition=%d peer=%s error=%s",
                partition,
                peer,
                tally.error,
            )
        finally:
            self._rounds_inflight -= 1
        return self._finish(tally)

    def _finish(self, tally: _Tally) -> RoundReport:
        report = tally.report()
        self.recent_rounds.append(report)
        self.lifetime.add(report)
        return report

    async def _exchange(self, tree: PartitionTree, partition: int, peer: str) -> ExchangeResult:
        exchange = Exchange(tree, partition=partition, limits=self.settings.exchange)
        request: MerkleNodesRequest | MerkleKeysRequest | None = exchange.start()
        for _ in range(self.settings.exchange_messages_max):
            if request is None:
                return exchange.result()
            if isinstance(request, MerkleNodesRequest):
                reply = await self._call(peer, request, MerkleNodesReply)
                # Read with the comparison, no await between: our tree's state at that moment.
                generation, at_root = self.trees.generation, request.level == 0
                request = exchange.on_nodes_reply(reply)
                if at_root and request is None and self.trees.tree(partition) is tree:
                    epoch = self.trees.tree_epoch(partition)
                    confirmation = Confirmation(generation, epoch, self._now_ms())
                    self.confirmations.note(partition, peer, confirmation)
            else:
                remote = await self._call(peer, request, MerkleKeysReply)
                local = await self.trees.list_entries(request, self._sleep_ms)
                request = exchange.on_keys_replies(local, remote)
        raise Overloaded(
            resource="anti_entropy_exchange_messages", limit=self.settings.exchange_messages_max
        )

    async def _call(self, peer: str, request: AntiEntropyRequest, expected: type[_R]) -> _R:
        reply = await self.peers.call(peer, request, self.settings.call_timeout_ms)
        if not isinstance(reply, expected):
            raise RemoteProtocolError(
                f"peer {peer} answered {type(request).__name__} with {type(reply).__name__}"
            )
        return reply

    async def _pull(self, partition: int, peer: str, keys: list[bytes], tally: _Tally) -> None:
        settings, position = self.settings, 0
        while position < len(keys):  # ends: every reply serves at least one key
            batch = tuple(keys[position : position + settings.repair_keys_per_message_max])
            request = RepairPull(partition, batch, settings.repair_bytes_per_message_max)
            reply = await self._call(peer, request, RepairPullReply)
            problem = _pull_reply_problem(batch, reply)
            if problem is not None:
                raise RemoteProtocolError(f"repair pull reply from {peer}: {problem}")
            position += reply.served
            tally.expired_skipped += reply.expired
            pulled_before = tally.bytes_pulled
            if self._merge(partition, peer, reply.records, tally):
                await self.replica.durable()
            await self._pace(tally.bytes_pulled - pulled_before, tally)

    def _merge(self, partition: int, sender: str, records: KeyedRecords, tally: _Tally) -> int:
        """Check and merge a peer's records into ours (no await); how many merged."""
        now_ms, merged = self._now_ms(), 0
        for key, record in records:
            problem = self.replica.check_peer_record(sender, record)
            if problem is not None:
                tally.refused += 1
                log.debug("anti-entropy refused a record peer=%s problem=%s", sender, problem)
                continue
            encoded = encode_record(record)
            purged_digest = self._purged_early.get((partition, key))
            if _purgeable(record, now_ms) or (
                purged_digest is not None and purged_digest == record_digest(encoded)
            ):
                tally.expired_skipped += 1
                continue
            self.replica.apply(partition, key, record)
            merged += 1
            tally.keys_pulled += 1
            tally.bytes_pulled += len(encoded)
        return merged

    async def _push(
        self,
        partition: int,
        peer: str,
        keys: list[bytes],
        lacking: frozenset[bytes],
        tally: _Tally,
    ) -> None:
        position = 0
        while position < len(keys):  # ends: every batch takes at least one key
            batch, size, position = self._push_batch(partition, keys, position, lacking, tally)
            if not batch:
                continue
            await self._pace(size, tally)
            reply = await self._call(peer, RepairPush(partition, batch), RepairPushReply)
            if min(reply.applied, reply.refused, reply.expired) < 0 or (
                reply.applied + reply.refused + reply.expired != len(batch)
            ):
                raise RemoteProtocolError(f"repair push reply from {peer} does not add up")
            tally.keys_pushed += reply.applied
            tally.bytes_pushed += size
            tally.refused_by_peer += reply.refused
            tally.expired_skipped += reply.expired

    def _push_batch(
        self,
        partition: int,
        keys: list[bytes],
        position: int,
        lacking: frozenset[bytes],
        tally: _Tally,
    ) -> tuple[KeyedRecords, int, int]:
        """Our current records from ``position`` on, up to the message bounds:
        (records, their size, the next position). A confirmed tombstone is not
        sent to a peer that lacks it: the peer held it, so it purged it."""
        settings, now_ms = self.settings, self._now_ms()
        batch: list[tuple[bytes, Record]] = []
        size_total = 0
        while position < len(keys) and len(batch) < settings.repair_keys_per_message_max:
            key = keys[position]
            record = self.replica.read(partition, key)
            if record is not None and (
                _purgeable(record, now_ms)
                or (key in lacking and self.tombstone_purgeable_early(partition, key, record))
            ):
                tally.expired_skipped += 1
                record = None
            if record is not None:
                size = len(encode_record(record))
                if batch and size_total + size > settings.repair_bytes_per_message_max:
                    break
                batch.append((key, record))
                size_total += size
            position += 1
        return tuple(batch), size_total, position

    async def _pace(self, size_bytes: int, tally: _Tally) -> None:
        wait_ms = self._bucket.take(size_bytes, self._now_ms())
        if wait_ms > 0:
            tally.waited_ms += wait_ms
            await self._sleep_ms(wait_ms)

    # -- repair and the background walk ---------------------------------------

    async def repair(self, partitions: Sequence[int] | None = None) -> RepairReport:
        """Rounds with every live replica of each partition (default: all of this
        node's), one partition at a time; ``Overloaded`` if a repair is running."""
        if self._repairing:
            raise Overloaded(resource="anti_entropy_repairs", limit=1)
        ring = self._ring()
        mine = ring.replica_partitions(self.node_id)
        chosen = sorted(set(mine if partitions is None else partitions))
        for partition in chosen:
            if not 0 <= partition < ring.partition_count or self.node_id not in (
                ring.preference_list(partition)
            ):
                raise InvalidRequest(
                    f"node {self.node_id} does not replicate partition {partition}",
                    field="partition",
                    partition=partition,
                )
        self._repairing = True
        builder = _ReportBuilder(self.settings.report_rounds_max)
        try:
            for partition in chosen:
                await self._repair_partition(ring, partition, builder)
        finally:
            self._repairing = False
        return builder.report()

    async def _repair_partition(self, ring: Ring, partition: int, builder: _ReportBuilder) -> None:
        """Two passes: the first gathers every replica's keys here (and pushes ours);
        the second pushes what later peers brought to the peers met before them."""
        builder.partitions += 1
        others = [node for node in ring.preference_list(partition) if node != self.node_id]
        settled: dict[str, bytes] = {}  # peer -> our root when its rounds ended
        for second_pass in (False, True):
            for peer in others:
                tree = self.trees.tree(partition)
                if second_pass and (
                    peer not in settled or tree is None or tree.root() == settled[peer]
                ):
                    continue
                if not self._is_live(peer):
                    builder.peers_skipped += 1
                    continue
                if await self._rounds_until_complete(partition, peer, builder):
                    tree = self.trees.tree(partition)
                    if tree is not None:
                        settled[peer] = tree.root()

    async def _rounds_until_complete(
        self, partition: int, peer: str, builder: _ReportBuilder
    ) -> bool:
        """Rounds while they come back partial and moving keys; True unless one failed."""
        for _ in range(self.settings.rounds_per_peer_max):
            report = await self.run_round(partition, peer)
            builder.add(report)
            if report.outcome is RoundOutcome.FAILED:
                return False
            moved = (
                report.keys_pulled + report.keys_pushed + report.refused + report.expired_skipped
            )
            if report.complete or moved == 0:
                return True
        return True

    async def run_forever(self, interval_ms: int) -> None:
        """One round per ``interval_ms``, walking this node's (partition, peer) pairs
        in order and skipping peers that are not live. Cancel to stop."""
        assert interval_ms >= 1, interval_ms
        last: tuple[int, str] | None = None
        while True:
            pair = self._next_pair(last)
            if pair is not None:
                last = pair
                try:
                    await self.run_round(*pair)
                except Exception:  # a bug in one round must not end anti-entropy
                    log.exception("anti-entropy round crashed partition=%d peer=%s", *pair)
            await self._sleep_ms(interval_ms)

    def _next_pair(self, last: tuple[int, str] | None) -> tuple[int, str] | None:
        """The first pair after ``last`` (wrapping) whose peer is live, or None."""
        ring = self._ring()
        if self._pairs[0] is not ring:
            pairs = sorted(
                (partition, node)
                for partition in ring.replica_partitions(self.node_id)
                for node in ring.preference_list(partition)
                if node != self.node_id
            )
            self._pairs = (ring, pairs)
        pairs = self._pairs[1]
        start = 0 if last is None else bisect.bisect_right(pairs, last)
        for step in range(len(pairs)):
            pair = pairs[(start + step) % len(pairs)]
            if self._is_live(pair[1]):
                return pair
        return None

    # -- tombstones ---------------------------------------------------------------

    def tombstone_confirmed(self, partition: int, key: bytes, digest: bytes) -> bool:
        """True when every other replica of ``partition`` durably held ``key`` with
        ``digest`` (the digest of the record we store), as shown by rounds.

        When the sweeper may purge a tombstone early: the record holds only
        tombstones (``tombstone_purgeable_early`` checks both), this returns
        True, and no hint for the partition is pending on any node (below).

        Why it is safe. For each other replica R, a round we ran found R's
        root equal to ours while our tree stood at generation g, and R
        answered the root only after a sync, so R durably held our whole
        partition as of g. The write log shows ``key`` unchanged here since
        some generation <= g (and, when it still knows, with this digest),
        so every replica durably held this tombstone. A replica holding it
        never sends an older version again (merges are joins: the tombstone
        supersedes what its writer saw), so no replica can bring the deleted
        value back. The confirmation must be at least ``confirm_settle_ms``
        old (a message sent before its sender held the tombstone has arrived
        or died by then), at most ``confirm_ttl_ms`` old, and on the same
        tree (not rebuilt since: a rebuild means the tree was not trusted).
        Single-replica partitions are never confirmed: they wait out the
        grace period.

        Anti-entropy keeps early purges purged: a confirmed tombstone is
        never pushed to a peer that lacks it (that peer held it, so it
        purged it), and a key confirmed here is never stored again with the
        same digest. A peer that has not confirmed it yet may hold it until
        its own confirmation or the grace period.

        Not covered, for the caller: records held by fallback nodes (hinted
        handoff) are outside the replicas' trees, and a node restored from a
        backup older than the tombstone is not the node that confirmed it;
        purge early only while no hint for the partition is pending anywhere.
        """
        ring = self._ring()
        if not 0 <= partition < ring.partition_count:
            return False
        replicas = ring.preference_list(partition)
        others = [node for node in replicas if node != self.node_id]
        if self.node_id not in replicas or not others or self.trees.tree(partition) is None:
            return False
        generation, last_digest = self.trees.last_write(partition, key)
        if last_digest is not None and last_digest != digest:
            return False
        settings = self.settings
        confirmed = self.confirmations.all_hold(
            partition,
            others,
            generation=generation,
            tree_epoch=self.trees.tree_epoch(partition),
            age_ms_range=(settings.confirm_settle_ms, settings.confirm_ttl_ms),
            now_ms=self._now_ms(),
        )
        if confirmed:
            self._purged_early.pop((partition, key), None)
            self._purged_early[(partition, key)] = digest
            if len(self._purged_early) > settings.confirmations_max:
                del self._purged_early[next(iter(self._purged_early))]
        return confirmed

    def tombstone_purgeable_early(self, partition: int, key: bytes, record: Record) -> bool:
        """``record`` holds only tombstones and every replica is known to hold it."""
        if any(sibling.value is not None for sibling in record.siblings):
            return False
        return self.tombstone_confirmed(partition, key, record_digest(encode_record(record)))

    def status(self) -> dict[str, Any]:
        lifetime = self.lifetime
        return {
            "rounds_total": lifetime.rounds_total,
            "rounds_failed": lifetime.rounds_failed,
            "rounds_partial": lifetime.rounds_partial,
            **lifetime.totals,
            "rounds_inflight": self._rounds_inflight,
            "confirmations": len(self.confirmations),
            "trees": self.trees.status(),
            "recent_rounds": [asdict(report) for report in self.recent_rounds],
        }


def _purgeable(record: Record, now_ms: int) -> bool:
    """Every sibling is past its purge time: the sweeper may already have removed it."""
    purge_at_ms = record.purge_at_ms()
    return purge_at_ms is not None and purge_at_ms <= now_ms


def _pull_reply_problem(asked: tuple[bytes, ...], reply: RepairPullReply) -> str | None:
    if not 1 <= reply.served <= len(asked):
        return f"served {reply.served} of {len(asked)} keys"
    if not 0 <= reply.expired <= reply.served - len(reply.records):
        return f"{reply.expired} expired and {len(reply.records)} records of {reply.served} served"
    served = asked[: reply.served]
    position = 0
    for key, _ in reply.records:
        while position < len(served) and served[position] != key:
            position += 1
        if position == len(served):
            return "a record for a key not asked for, or out of order"
        position += 1
    return None


def _describe(error: DynakvError) -> str:
    return f"{error.code}: {error.message}"[:300]

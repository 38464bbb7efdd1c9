"""Range reads: a page of one partition's records between two keys, from R replicas.

A replica answers ``RangeRead`` (``handle_range``) with the records of its
partition whose keys lie in ``[low, high)``, in key order, or from the top
with ``reverse``, at most ``limit`` records and about ``bytes_max`` bytes
(always at least one record), and ``resume``: the last key it returned when
it stopped early (None: nothing of the range is left after its records).

``RangeReader.read`` is the coordinator's side: it asks the partition's
replicas (``one``: one, ``quorum`` and ``strong``: a majority, ``all``: every one; this node
first when it is one, the ones the detector holds down last, the next one when
one fails), merges the records key by key (``core.record.merge``) up to the
earliest ``resume`` among the replies (past it a replica that stopped may hold
keys the page would miss), trims to the limit, and answers each key's visible
values and where the next page starts. Differences between replicas are left
to anti-entropy (no read repair here).

Bounds: ``RANGE_RECORDS_MAX`` records and ``RANGE_BYTES_MAX`` bytes per reply;
a replica examines at most ``RANGE_EXAMINE_MAX`` stored keys per request in
either direction (a reverse read sweeps backward from ``high``, or the
partition's end, with ``Storage.scan_raw_reverse``) and stops early with a
``resume`` key past it, so a range of any length is read a page at a time;
at most ``RANGE_INFLIGHT_MAX`` range reads coordinated at once (``Overloaded``
past it). ``RangeTooLong`` is left only for a forward request whose whole
budget went on stored keys just below ``low`` (see ``_below``).

Must never: return a record outside ``[low, high)``, serve a stored record that
breaks the record bounds (it is quarantined, as ``LocalReplica.read`` does), or
merge a peer's record that breaks them (that reply counts as a failure).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

import msgspec

from dynakv.api.backend import RangePage, RangeQuery
from dynakv.core.record import ConflictPolicy, Record, merge, record_bounds_problem
from dynakv.core.ring import partition_of
from dynakv.errors import (
    DynakvError,
    InvalidRequest,
    Overloaded,
    QuorumNotReached,
    RemoteError,
    RemoteProtocolError,
)
from dynakv.storage.base import Storage, StorageCorruption, decode_stored

if TYPE_CHECKING:  # net.messages registers this module's Structs: no import cycle at run time
    from dynakv.node.coordinator import Coordinator
    from dynakv.node.replica import LocalReplica

log = logging.getLogger(__name__)

RANGE_RECORDS_MAX: Final = 1000
RANGE_BYTES_MAX: Final = 2 * 1024 * 1024
RANGE_EXAMINE_MAX: Final = 4096
RANGE_INFLIGHT_MAX: Final = 256
_CHUNK_RECORDS: Final = 256
_BOUND_BYTES_MAX: Final = 8192


class RangeRead(msgspec.Struct, frozen=True, array_like=True, tag="rg"):
    """Ask a replica for its records of ``partition`` with keys in ``[low, high)``
    (``high`` None: to the partition's end)."""

    partition: int
    low: bytes
    high: bytes | None
    reverse: bool
    limit: int
    bytes_max: int


class RangeReadReply(msgspec.Struct, frozen=True, array_like=True, tag="rgr"):
    """Records in the order asked; ``resume``: the last key returned when the reply
    stopped early (more of the range may follow it), None when it did not."""

    records: list[tuple[bytes, Record]]
    resume: bytes | None


class RangeTooLong(DynakvError):
    """A forward range read spent a replica's whole sweep on stored keys below its
    ``low`` bound (keys that share all but its last byte), so no page or resume key
    inside the range could be answered."""

    code = "RangeTooLong"
    http_status = 400

    def __init__(self, *, examined: int, max: int) -> None:
        super().__init__(
            f"a range read examined {max} stored keys below its low bound; narrow the range",
            examined=examined,
            max=max,
        )


# --- the replica's side ------------------------------------------------------------------


def _record_bytes(key: bytes, record: Record) -> int:
    return len(key) + sum(len(s.value) for s in record.siblings if s.value is not None) + 32


class _Window:
    """The records a sweep keeps, in the order asked; the sweep stops once it is
    ``full``, so at most ``limit`` + 1 records and ``bytes_max`` bytes beyond the last."""

    __slots__ = ("bytes_max", "bytes_total", "limit", "records")

    def __init__(self, limit: int, bytes_max: int) -> None:
        self.records: list[tuple[bytes, Record]] = []
        self.limit = limit
        self.bytes_max = bytes_max
        self.bytes_total = 0

    def full(self) -> bool:
        """Enough is kept to fill a page and know that more follows."""
        return len(self.records) > self.limit or self.bytes_total > self.bytes_max

    def add(self, key: bytes, record: Record) -> None:
        self.records.append((key, record))
        self.bytes_total += _record_bytes(key, record)


def _below(low: bytes) -> bytes | None:
    """A key below ``low`` with few keys between (none when ``low`` ends in 0x00, as
    item keys do): a forward scan "after" it starts at ``low``, give or take those."""
    if not low:
        return None
    if low[-1] == 0:
        return low[:-1]
    return low[:-1] + bytes((low[-1] - 1,))


def _sweep(
    storage: Storage, replica: LocalReplica, message: RangeRead, window: _Window, examine_max: int
) -> tuple[bool, bytes | None]:
    """Feed ``window`` the partition's checked records in ``[low, high)`` in the order
    asked (going backward: from below ``high``, or the partition's end, down),
    examining at most ``examine_max`` stored keys. Returns whether the range ended
    (False: cut short) and the last key examined inside the range."""
    partition, low, high, reverse = message.partition, message.low, message.high, message.reverse
    cursor = high if reverse else _below(low)
    examined = 0
    last_in_range: bytes | None = None
    now_ms = replica.clock.now_ms()
    while examined < examine_max:
        asked = min(_CHUNK_RECORDS, examine_max - examined)
        if reverse:
            chunk = storage.scan_raw_reverse(partition, before=cursor, limit=asked)
        else:
            chunk = storage.scan_raw(partition, after=cursor, limit=asked)
        for key, data in chunk:
            examined += 1
            if key < low:
                if reverse:
                    return True, last_in_range
                continue
            if high is not None and key >= high:  # forward only: a reverse scan starts below
                return True, last_in_range
            last_in_range = key
            record = _checked(replica, partition, key, data, now_ms)
            if record is not None:
                window.add(key, record)
                if window.full():
                    return False, last_in_range
        if len(chunk) < asked:
            return True, last_in_range
        cursor = chunk[-1][0]
    return False, last_in_range


def _checked(
    replica: LocalReplica, partition: int, key: bytes, data: bytes, now_ms: int
) -> Record | None:
    try:
        record = decode_stored(partition, key, data)
    except StorageCorruption as exc:
        replica.quarantine.add(partition, key, exc.reason)
        return None
    problem = record_bounds_problem(record, replica.bounds, now_ms, check_values=False)
    if problem is not None:
        replica.quarantine.add(partition, key, problem)
        return None
    return record


def _page(
    records: list[tuple[bytes, Record]], limit: int, bytes_max: int
) -> tuple[list[tuple[bytes, Record]], bool]:
    """The longest head of ``records`` within the limits (at least one record), and
    whether anything was left out."""
    size = 0
    for index, (key, record) in enumerate(records):
        size += _record_bytes(key, record)
        if index >= limit or (index > 0 and size > bytes_max):
            return records[:index], True
    return records, False


def scan_range(storage: Storage, replica: LocalReplica, message: RangeRead) -> RangeReadReply:
    """This replica's answer to ``message`` (already checked)."""
    examine_max = RANGE_EXAMINE_MAX
    window = _Window(message.limit, message.bytes_max)
    ended, last_in_range = _sweep(storage, replica, message, window, examine_max)
    page, cut = _page(window.records, message.limit, message.bytes_max)
    if page and (cut or not ended):
        return RangeReadReply(page, page[-1][0])
    if not page and not ended:
        # The budget went on keys below low or on corrupt ones: go on past the last.
        if last_in_range is None:
            raise RangeTooLong(examined=examine_max, max=examine_max)
        return RangeReadReply([], last_in_range)
    return RangeReadReply(page, None)


def check_range_read(message: RangeRead, partition_count: int, key_bytes_max: int) -> None:
    """A peer's ``RangeRead`` must be one this cluster could send."""
    problem = None
    if not 0 <= message.partition < partition_count:
        problem = f"partition {message.partition} is not in 0..{partition_count - 1}"
    elif not 1 <= message.limit <= RANGE_RECORDS_MAX:
        problem = f"limit {message.limit} is not in 1..{RANGE_RECORDS_MAX}"
    elif not 1 <= message.bytes_max <= RANGE_BYTES_MAX:
        problem = f"bytes_max {message.bytes_max} is not in 1..{RANGE_BYTES_MAX}"
    elif max(len(message.low), len(message.high or b"")) > key_bytes_max + _BOUND_BYTES_MAX:
        problem = "a range bound is longer than any key"
    if problem is not None:
        raise RemoteProtocolError(f"invalid range read: {problem}", problem=problem)


def handle_range(
    message: RangeRead, sender: str, storage: Storage, replica: LocalReplica
) -> RangeReadReply:
    """The RPC handler for ``RangeRead`` (from member ``sender``)."""
    check_range_read(message, replica.partition_count, replica.key_bytes_max)
    log.debug("range read sender=%s partition=%d", sender, message.partition)
    return scan_range(storage, replica, message)


# --- the coordinator's side --------------------------------------------------------------


def _precedes(key: bytes, bound: bytes, reverse: bool) -> bool:
    """``key`` comes at or before ``bound`` in the order asked."""
    return key >= bound if reverse else key <= bound


def merge_replies(
    replies: list[RangeReadReply],
    reverse: bool,
    limit: int,
    bytes_max: int,
    policy: ConflictPolicy,
) -> tuple[list[tuple[bytes, Record]], bytes | None]:
    """The replies merged key by key up to the earliest ``resume`` (beyond it a replica
    that stopped may hold keys the others lack), trimmed to the limits; and where the
    next page starts (None: every reply reached the end of the range)."""
    resumes = [reply.resume for reply in replies if reply.resume is not None]
    cutoff = (max(resumes) if reverse else min(resumes)) if resumes else None
    merged: dict[bytes, Record] = {}
    for reply in replies:
        for key, record in reply.records:
            if cutoff is None or _precedes(key, cutoff, reverse):
                combined = merge(merged.get(key), record, policy)
                assert combined is not None
                merged[key] = combined
    ordered = sorted(merged.items(), reverse=reverse)
    page, cut = _page(ordered, limit, bytes_max)
    if cut:
        return page, page[-1][0]
    return page, cutoff


class RangeReader:
    """Coordinates range reads over a node's ``Coordinator`` (its ring, peers and replica)."""

    __slots__ = ("_coordinator", "_inflight", "inflight_max")

    def __init__(self, coordinator: Coordinator, *, inflight_max: int = RANGE_INFLIGHT_MAX) -> None:
        self._coordinator = coordinator
        self._inflight = 0
        self.inflight_max = inflight_max

    def _targets(self, partition: int) -> tuple[str, ...]:
        """Who holds ``partition`` for reads: the preference list, or during a ring
        change that moves it, the old list (as the coordinator's reads)."""
        coordinator = self._coordinator
        change = coordinator.routing()
        if change is not None and change.old.epoch == coordinator.ring.epoch:
            return tuple(change.read_targets(partition))
        return coordinator.ring.preference_list(partition)

    def _candidates(self, targets: tuple[str, ...]) -> list[str]:
        """Local first, then the live ones, then those the detector holds down."""
        coordinator = self._coordinator
        me = coordinator.node_id
        rest = [node for node in targets if node != me]
        live = [node for node in rest if not coordinator.is_down(node)]
        down = [node for node in rest if coordinator.is_down(node)]
        return ([me] if me in targets else []) + live + down

    async def _ask(self, node_id: str, message: RangeRead) -> RangeReadReply:
        coordinator = self._coordinator
        replica = coordinator.replica
        if node_id == coordinator.node_id:
            return scan_range(replica.storage, replica, message)
        reply = await coordinator.peers.call(node_id, message, coordinator.rpc_timeout_ms)
        if not isinstance(reply, RangeReadReply):
            raise RemoteProtocolError(
                f"replica {node_id} answered a range read with {type(reply).__name__}"
            )
        for key, record in reply.records:
            if not message.low <= key or (message.high is not None and key >= message.high):
                raise RemoteProtocolError(f"replica {node_id} answered a key outside the range")
            problem = replica.check_peer_record(node_id, record)
            if problem is not None:
                raise RemoteProtocolError(f"invalid record from peer {node_id}: {problem}")
        return reply

    async def _gather(
        self, message: RangeRead, required: int, candidates: list[str]
    ) -> list[RangeReadReply]:
        """``required`` replies, asking the next candidate when one fails."""
        replies: list[RangeReadReply] = []
        waiting = list(candidates)
        pending: dict[asyncio.Task[RangeReadReply], str] = {}
        try:
            while len(replies) < required:
                while waiting and len(pending) + len(replies) < required:
                    node_id = waiting.pop(0)
                    pending[asyncio.ensure_future(self._ask(node_id, message))] = node_id
                if not pending:
                    raise QuorumNotReached(
                        required=required, acked=len(replies), consistency=_level(required)
                    )
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    node_id = pending.pop(task)
                    error = task.exception()
                    if error is None:
                        replies.append(task.result())
                    elif isinstance(error, RangeTooLong):
                        raise error
                    elif isinstance(error, RemoteError) and error.remote_code == RangeTooLong.code:
                        limit = RANGE_EXAMINE_MAX
                        raise RangeTooLong(examined=limit, max=limit) from error
                    elif isinstance(error, DynakvError):
                        log.debug("range read failed node=%s error=%r", node_id, error)
                    else:
                        raise error
        finally:
            for task in pending:
                task.cancel()
        return replies

    async def read(self, query: RangeQuery) -> RangePage:
        """One page of ``query`` (see the module docstring)."""
        coordinator = self._coordinator
        partition_count = coordinator.ring.partition_count
        partition = query.partition
        if partition is None:
            partition = partition_of(query.low, partition_count)
        if not 0 <= partition < partition_count:
            raise InvalidRequest(f"partition {partition} is not in 0..{partition_count - 1}")
        if query.high is not None and query.high <= query.low:
            return RangePage([], None, partition_count)
        limit = max(1, min(query.limit, RANGE_RECORDS_MAX))
        bytes_max = max(1, min(query.bytes_max, RANGE_BYTES_MAX))
        message = RangeRead(partition, query.low, query.high, query.reverse, limit, bytes_max)
        targets = self._targets(partition)
        # A range is not read through per-key Paxos: strong runs as a quorum read.
        required = query.consistency.required(len(targets))
        if self._inflight >= self.inflight_max:
            raise Overloaded(resource="range_reads_inflight", limit=self.inflight_max)
        self._inflight += 1
        try:
            replies = await self._gather(message, required, self._candidates(targets))
        finally:
            self._inflight -= 1
        records, resume = merge_replies(
            replies, query.reverse, limit, bytes_max, coordinator.replica.policy
        )
        now_ms = coordinator.replica.clock.now_ms()
        entries = [
            (key, values) for key, record in records if (values := record.visible_values(now_ms))
        ]
        return RangePage(entries, resume, partition_count)


def _level(required: int) -> str:
    return "one" if required == 1 else f"{required} replicas"

"""The coordinator's protocol for one read or one write: pure, synchronous, no I/O.

The shell (``node.coordinator``) builds a coordination, carries out the
actions it returns (``ReplicaRead`` / ``ReplicaWrite`` to send), feeds every
answer back as an event, and asks for the outcome. Time enters only as the
``on_deadline`` event. The same objects run in the real node and in a
simulator.

Write: the coordinating replica has already minted the write and made it
durable locally (persist before send); ``WriteCoordination`` sends the
record to every other replica and decides on W acks (``Tally``). With a
sloppy quorum (every level but ``strong``), a home replica the failure
detector holds down at the start is replaced by the next live fallback in
the ring's order, which stores the write with a hint naming the home
replica; W counts the fallback's ack, as in Dynamo. A home replica that
fails during the write (refused, unreachable, or silent) is counted as
failed, never replaced in the count, so a quorum acknowledged by home
replicas stays what a quorum read relies on; it still gets a hinted copy
on the next fallback (uncounted), so it receives the write when it returns.
A fallback is used at most once per write. During a ring change, a write to
a moving partition goes to the old list and the new members (the ring
change's write targets) and needs W acks among the old list and W among the
new (``JointTally``), with no fallbacks: a stand-in would count for neither.

Read: ``ReadCoordination`` asks every replica but the local one (whose
record the shell passes in), decides on R replies, merges them, and returns
a repair (the merged record) for every replica that answered with something
else, including replies that arrive after the decision (read repair). A home
replica the failure detector holds down gets the next live fallback as a
stand-in, as writes do (the home replica is still asked: the detector may
be wrong), so a read during an outage also sees what the fallbacks took in
its place; but only home replicas count toward R, so R
fallbacks that never took a write cannot outvote the home replicas that
did (a quorum read always meets a quorum write's home replicas; with fewer
than R home replicas answering it fails). Fallbacks are never read-repaired
(they hold copies only for their hints).

Invariants: each replica answers at most once; a decided outcome never
changes; a repair always carries the merged record, never a replica's own.
Must never: import asyncio, read a clock, or choose randomly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dynakv.core.quorum import JointTally, Outcome, ReadTally, Tally
from dynakv.core.record import ConflictPolicy, Record, merge


@dataclass(frozen=True, slots=True)
class ReplicaRead:
    """Ask ``node`` for its record of the key."""

    node: str
    partition: int
    key: bytes


@dataclass(frozen=True, slots=True)
class ReplicaWrite:
    """Merge ``record`` into ``node``'s copy of the key, durably; with ``hint_for``,
    ``node`` is a fallback keeping it for that home replica until it returns."""

    node: str
    partition: int
    key: bytes
    record: Record
    hint_for: str = ""


class _Coordination:
    """What every coordination answers the same way: its outcome, and the deadline."""

    __slots__ = ("tally",)
    tally: Tally

    def on_deadline(self) -> Outcome:
        """The request's time is up: whoever has not answered may or may not have applied it."""
        if self.tally.outcome() is Outcome.PENDING:
            return self.tally.on_deadline()
        return self.tally.outcome()

    def outcome(self) -> Outcome:
        return self.tally.outcome()


class WriteCoordination(_Coordination):
    """One write, after the coordinating replica stored it durably."""

    __slots__ = ("_fallbacks", "_stands_in_for", "down", "key", "local_node", "partition", "record")

    def __init__(
        self,
        *,
        preference_list: tuple[str, ...],
        local_node: str,
        required: int,
        partition: int,
        key: bytes,
        record: Record,
        fallbacks: tuple[str, ...] = (),
        down: frozenset[str] = frozenset(),
        groups: tuple[tuple[frozenset[str], int], ...] = (),
    ) -> None:
        """``fallbacks``: the ring's fallback order (empty: a strict quorum, for
        ``strong``); ``down``: nodes the failure detector holds down now;
        ``groups``: during a ring change, the lists that each need their own acks
        (``required`` is then unused, and there are no fallbacks)."""
        assert local_node in preference_list, (local_node, preference_list)
        assert 1 <= required <= len(preference_list), (required, preference_list)
        assert not set(fallbacks) & set(preference_list), (fallbacks, preference_list)
        assert not (groups and fallbacks), "a joint write takes no fallbacks"
        self.partition = partition
        self.key = key
        self.record = record
        self.local_node = local_node
        self.down = down
        self._fallbacks = [node for node in fallbacks if node not in down]
        self._stands_in_for: dict[str, str] = {}  # fallback -> the home replica it replaces
        self.tally = (
            JointTally(preference_list, groups) if groups else Tally(preference_list, required)
        )
        self.tally.on_success(local_node)

    def start(self) -> list[ReplicaWrite]:
        """The writes to send: one to every other replica, in node order; a home
        replica already known to be down is replaced by a fallback at once."""
        writes: list[ReplicaWrite] = []
        for node in sorted(self.tally.pending):
            if node in self.down and self._fallbacks:
                writes.extend(self._replace(node, definite=True))
            else:
                writes.append(ReplicaWrite(node, self.partition, self.key, self.record))
        return writes

    def on_ack(self, node: str) -> Outcome:
        return _once(self.tally, node, Tally.on_success)

    def on_failure(self, node: str, *, definite: bool) -> tuple[Outcome, list[ReplicaWrite]]:
        """``definite``: the replica certainly did not apply it (never delivered, or
        refused). Returns the outcome and the fallback writes to send now."""
        if node not in self.tally.pending:
            return self.tally.outcome(), []
        if self._fallbacks:
            writes = self._replace(node, definite=definite, counted=False)
            return self.tally.outcome(), writes
        event = Tally.on_definite_failure if definite else Tally.on_unknown_failure
        return event(self.tally, node), []

    def _replace(self, node: str, *, definite: bool, counted: bool = True) -> list[ReplicaWrite]:
        """Hand ``node``'s copy to the next fallback, with a hint. ``counted``: the
        fallback joins the tally (before the failure is counted, so the quorum
        stays reachable through it); otherwise its ack changes nothing."""
        fallback = self._fallbacks.pop(0)
        home = self._stands_in_for.get(node, node)
        self._stands_in_for[fallback] = home
        if counted and self.tally.outcome() is Outcome.PENDING:
            self.tally.add(fallback)
        if definite:
            self.tally.on_definite_failure(node)
        else:
            self.tally.on_unknown_failure(node)
        return [ReplicaWrite(fallback, self.partition, self.key, self.record, hint_for=home)]

    def hinted(self) -> dict[str, str]:
        """Fallbacks asked so far, and the home replica each stands in for."""
        return dict(self._stands_in_for)


class ReadCoordination(_Coordination):
    """One read at R of N: ask, merge the first R replies, repair the stale."""

    __slots__ = (
        "_decided",
        "_merged",
        "_replies",
        "_stand_ins",
        "key",
        "partition",
        "policy",
    )

    def __init__(
        self,
        *,
        preference_list: tuple[str, ...],
        required: int,
        partition: int,
        key: bytes,
        policy: ConflictPolicy,
        fallbacks: tuple[str, ...] = (),
        down: frozenset[str] = frozenset(),
    ) -> None:
        assert 1 <= required <= len(preference_list), (required, preference_list)
        self.partition = partition
        self.key = key
        self.policy = policy
        live_fallbacks = [node for node in fallbacks if node not in down]
        self._stand_ins: set[str] = set()
        for home in preference_list:
            if home in down and live_fallbacks:
                self._stand_ins.add(live_fallbacks.pop(0))
        if self._stand_ins:
            # The home replica is asked too: the detector may hold it down wrongly (or
            # not yet up again), and only home replicas count toward R.
            targets = (*preference_list, *sorted(self._stand_ins))
            self.tally = ReadTally(targets, required, counted=frozenset(preference_list))
        else:
            self.tally = ReadTally(preference_list, required)
        self._replies: dict[str, Record | None] = {}
        self._merged: Record | None = None
        self._decided = False

    def start(self, local_node: str | None, local_record: Record | None) -> list[ReplicaRead]:
        """Count the local replica's record (if this node is one); the reads to send."""
        if local_node is not None:
            self._replies[local_node] = local_record
            self.tally.on_success(local_node)
        return [ReplicaRead(node, self.partition, self.key) for node in sorted(self.tally.pending)]

    def on_reply(self, node: str, record: Record | None) -> list[ReplicaWrite]:
        """A replica's record; after the decision, the repair it needs (if any)."""
        if node not in self.tally.pending:
            return []  # already counted as failed at the deadline
        self.tally.on_success(node)
        self._replies[node] = record
        return self._repair(node, record) if self._decided else []

    def on_failure(self, node: str) -> Outcome:
        return _once(self.tally, node, ReadTally.on_definite_failure)

    def decide(self) -> tuple[Record | None, list[ReplicaWrite]]:
        """The merged record of every reply so far, and the repairs for stale replicas."""
        assert self.tally.outcome() is Outcome.SUCCEEDED, self.tally.outcome()
        merged: Record | None = None
        for node in sorted(self._replies):
            merged = merge(merged, self._replies[node], self.policy)
        self._merged = merged
        self._decided = True
        repairs: list[ReplicaWrite] = []
        for node in sorted(self._replies):
            repairs.extend(self._repair(node, self._replies[node]))
        return merged, repairs

    def _repair(self, node: str, record: Record | None) -> list[ReplicaWrite]:
        merged = self._merged
        if merged is None or record == merged or node in self._stand_ins:
            return []
        return [ReplicaWrite(node, self.partition, self.key, merged)]


def _once(tally: Tally, node: str, event: Callable[[Tally, str], Outcome]) -> Outcome:
    # After the deadline the tally already counted a late replica as unknown.
    if node not in tally.pending:
        return tally.outcome()
    return event(tally, node)

"""Session guarantees, per client and key: read-your-writes, monotonic reads, writes-follow-reads.

Owns the model of what one client saw, in order, and the three checks. The
model is dynakv's versions (``core.versions``): every write has a *dot*
``(node, counter)`` naming it, and a *past*, the vector clock of the context
it carried (what its client had seen). A read returns a context whose clock
covers every write it reflects: the writes it shows and everything they
superseded (tombstones included). Under last-writer-wins a write can also
lose to a concurrent one with a larger HLC timestamp without being in its
past, so an lww read also carries the timestamp of what it shows, and a write
its own timestamp; a read then reflects every write with a timestamp up to
its own. So, for a read ``R`` and a write ``W``::

    R reflects W  iff  covers(R.clock, W.dot)  or  R.timestamp >= W.timestamp (both known)

and one version is at least another (``R2 >= R1``) iff ``R2.clock`` descends
``R1.clock``, or both timestamps are known and ``R2.timestamp >= R1.timestamp``.

The guarantees (Terry et al., 1994), for each client and key, in the client's
order (its operations are sequential: each ended before the next began):

- read-your-writes: a read reflects every write the client completed
  (``ok``) before it; a write of unknown outcome promises nothing;
- monotonic reads: a read is at least every earlier *settled* read of the
  client. A read is settled (``SessionOp.settled``, the caller's to judge)
  when a quorum of replicas held its version durably as it returned: a
  session read that no single replica can serve falls back to a quorum read,
  which answers whatever a quorum holds, so a version seen on fewer
  replicas (a write of unknown outcome, read where it landed) may be missed
  later (docs/consistency.md, a session's limits). An unsettled read is
  still checked against the settled ones before it;
- writes-follow-reads: a write's past covers every earlier read's clock
  (or, lww, its timestamp is larger than theirs), so it supersedes what
  the client saw. A write whose timestamp is unknown is held to its past.

Mapping from dynakv: a read's ``clock``/``timestamp`` are its context's
``clock``/``max_timestamp`` (the ``X-Dynakv-Context`` header; a 404 has one
too); a write's ``clock`` is the context it sent, its ``dot`` the one the
replica minted (the simulator captures it; over HTTP, the one entry where the
returned clock exceeds the sent one), its ``timestamp`` the returned context's
``max_timestamp``. Leave out failed reads and failed-for-sure writes.

Limits: timestamps compare without the node-id tie-break, so an lww write
that lost a timestamp tie to another node's write counts as reflected. A
purged tombstone takes its clock with it, so keep contexts younger than the
purge grace period. Must never: do I/O, read a clock, or depend on the
iteration order of a set or dict (violations come out in input order).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from dynakv.core.versions import (
    EMPTY_CLOCK,
    VClock,
    clock_descends,
    clock_get,
    clock_join,
    covers,
)

Dot = tuple[str, int]


class SessionKind(StrEnum):
    READ = "read"
    WRITE = "write"


class Guarantee(StrEnum):
    READ_YOUR_WRITES = "read_your_writes"
    MONOTONIC_READS = "monotonic_reads"
    WRITES_FOLLOW_READS = "writes_follow_reads"


ALL_GUARANTEES: Final = frozenset(Guarantee)


@dataclass(frozen=True, slots=True)
class SessionOp:
    """One operation of one client, as that client saw it."""

    client: str
    key: bytes
    kind: SessionKind
    clock: VClock = EMPTY_CLOCK  # read: its context's clock; write: the context it sent
    dot: Dot | None = None  # write: the dot it got (None if never learned)
    timestamp: int | None = None  # lww: read: context max_timestamp; write: its own
    ok: bool = True  # write: False if its outcome is unknown
    settled: bool = True  # read: a quorum held its version (monotonic reads' bar)

    def __post_init__(self) -> None:
        if self.kind is SessionKind.READ:
            assert self.dot is None and self.ok, self
        else:
            assert self.settled, self
        if self.dot is not None:
            assert self.dot[1] > 0, self

    def describe(self) -> str:
        stamp = "" if self.timestamp is None else f" ts={self.timestamp}"
        if self.kind is SessionKind.READ:
            unsettled = "" if self.settled else " (unsettled)"
            return f"{self.client}: read {self.key!r} -> clock={list(self.clock)}{stamp}{unsettled}"
        outcome = "ok" if self.ok else "unknown"
        past = list(self.clock)
        return f"{self.client}: write {self.key!r} dot={self.dot} past={past}{stamp} -> {outcome}"


@dataclass(frozen=True, slots=True)
class SessionViolation:
    guarantee: Guarantee
    operation: SessionOp
    position: int  # the operation's index in its client's sequence
    detail: str

    def explain(self) -> str:
        return (
            f"{self.guarantee.value}: #{self.position} {self.operation.describe()}: {self.detail}"
        )


@dataclass(frozen=True, slots=True)
class SessionReport:
    violations: tuple[SessionViolation, ...]
    clients: int
    operations: int

    @property
    def ok(self) -> bool:
        return not self.violations

    def explain(self) -> str:
        head = (
            f"{'ok' if self.ok else 'violated'}: {self.clients} clients, "
            f"{self.operations} ops, {len(self.violations)} violations"
        )
        return "\n".join([head, *(v.explain() for v in self.violations)])


@dataclass(frozen=True, slots=True)
class _Bar:
    """The join of some reads' versions (none yet: ``any_read`` False)."""

    read_clock: VClock = EMPTY_CLOCK  # the join of the reads' clocks
    read_timestamp: int | None = None  # the largest of their timestamps
    any_read: bool = False

    def raised(self, op: SessionOp) -> _Bar:
        stamps = [t for t in (self.read_timestamp, op.timestamp) if t is not None]
        return _Bar(clock_join(self.read_clock, op.clock), max(stamps) if stamps else None, True)


@dataclass(frozen=True, slots=True)
class _Seen:
    """What one client has done on one key so far."""

    reads: _Bar = _Bar()  # every read (writes-follow-reads)
    settled: _Bar = _Bar()  # the settled reads (monotonic reads)
    own_writes: tuple[SessionOp, ...] = ()  # completed, with a dot


def added_dot(sent: VClock, returned: VClock) -> Dot | None:
    """A write's dot, from what a client sees: the one entry where the answer's
    clock passes the clock it sent (None if not exactly one)."""
    grown = [(node, counter) for node, counter in returned if counter > clock_get(sent, node)]
    return grown[0] if len(grown) == 1 else None


def check_sessions(
    operations: Iterable[SessionOp], guarantees: frozenset[Guarantee] = ALL_GUARANTEES
) -> SessionReport:
    """Check each client's operations, in input order, against ``guarantees``."""
    seen: dict[tuple[str, bytes], _Seen] = {}
    positions: dict[str, int] = {}
    violations: list[SessionViolation] = []
    count = 0
    for op in operations:
        count += 1
        position = positions.get(op.client, 0)
        positions[op.client] = position + 1
        before = seen.get((op.client, op.key), _Seen())
        for guarantee, detail in _problems(op, before, guarantees):
            violations.append(SessionViolation(guarantee, op, position, detail))
        seen[(op.client, op.key)] = _after(op, before)
    return SessionReport(tuple(violations), len(positions), count)


def _problems(
    op: SessionOp, before: _Seen, guarantees: frozenset[Guarantee]
) -> list[tuple[Guarantee, str]]:
    found: list[tuple[Guarantee, str]] = []
    if op.kind is SessionKind.WRITE:
        if Guarantee.WRITES_FOLLOW_READS in guarantees and not _at_least(
            op, before.reads, strictly=True
        ):
            found.append(
                (Guarantee.WRITES_FOLLOW_READS, f"does not supersede {_shown(before.reads)}")
            )
        return found
    if Guarantee.READ_YOUR_WRITES in guarantees:
        missed = [write for write in before.own_writes if not _reflects(op, write)]
        if missed:
            dots = ", ".join(str(write.dot) for write in missed)
            found.append((Guarantee.READ_YOUR_WRITES, f"misses its own write(s) {dots}"))
    if Guarantee.MONOTONIC_READS in guarantees and not _at_least(
        op, before.settled, strictly=False
    ):
        found.append((Guarantee.MONOTONIC_READS, f"is older than {_shown(before.settled)}"))
    return found


def _reflects(read: SessionOp, write: SessionOp) -> bool:
    assert write.dot is not None
    if covers(read.clock, write.dot[0], write.dot[1]):
        return True
    return (
        read.timestamp is not None
        and write.timestamp is not None
        and read.timestamp >= write.timestamp
    )


def _at_least(op: SessionOp, before: _Bar, *, strictly: bool) -> bool:
    """Is ``op``'s version at least what the client read before (lww: later, if strictly)?"""
    if not before.any_read or clock_descends(op.clock, before.read_clock):
        return True
    if op.timestamp is None or before.read_timestamp is None:
        return False
    if strictly:
        return op.timestamp > before.read_timestamp
    return op.timestamp >= before.read_timestamp


def _shown(before: _Bar) -> str:
    stamp = "" if before.read_timestamp is None else f" ts={before.read_timestamp}"
    return f"what it read before: clock={list(before.read_clock)}{stamp}"


def _after(op: SessionOp, before: _Seen) -> _Seen:
    if op.kind is SessionKind.READ:
        settled = before.settled.raised(op) if op.settled else before.settled
        return _Seen(before.reads.raised(op), settled, before.own_writes)
    if not op.ok or op.dot is None:
        return before
    return _Seen(before.reads, before.settled, (*before.own_writes, op))

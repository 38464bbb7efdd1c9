"""The causal checker of the weak (one/quorum/all) clients: every read against the writes
its context covers.

Owns the model of every weak write issued (``Write``: its op, value, status
and past) and the dot each got when a replica minted it (``Mint``), and the
checks of one read (``check_read``): every value read was written; nothing
superseded reappears; on an rmw key at quorum or all, no acknowledged write
is lost and the answer is exactly right (lww: the write with the context's
timestamp; siblings: the causally maximal puts). ``workload`` documents the
checkers in full.

The only uncertainty allowed is a write its node minted but had not synced
when it crashed (``Mint.alive is None``): the simulator owns the disk, so it
knows which. Must never: relax a check beyond that, or read a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dynakv.core.record import ConflictPolicy, Context, Record
from dynakv.core.versions import VClock, covers
from dynakv.node.replica import NewWrite
from dynakv.sim.disk import SimStorage

if TYPE_CHECKING:
    from dynakv.sim.workload import Simulation


@dataclass
class Write:
    op: int
    key: bytes
    value: bytes | None
    past: VClock
    status: str = "pending"  # acked | unknown
    # A fallback took it with a hint (sloppy quorum): W may count the fallback's
    # ack, so a quorum of home replicas need not hold it until the hint is home.
    sloppy: bool = False


@dataclass
class Mint:
    op: int
    dot: tuple[str, int]
    timestamp: int
    storage: SimStorage  # the minting replica's, and its sync count at the mint
    syncs: int
    # None once its node crashed with it unsynced: fan-out waits for the fsync, so
    # it is gone unless a read served it before the crash (read replies and read
    # repair carry unsynced records). True again once a read shows it.
    alive: bool | None = True


class Model:
    """Every write issued, and the dot each minted write got, per key."""

    def __init__(self) -> None:
        self.writes: dict[int, Write] = {}
        self.mints: dict[bytes, list[Mint]] = {}
        self.by_value: dict[bytes, int] = {}
        self.problems: list[str] = []
        self.hints_home = False  # set once the hints drained after healing

    def minted(self, op: int, key: bytes, new: NewWrite, storage: SimStorage) -> None:
        """Record a write's dot; a dot names one write, so a reused dot is a failure
        (``core.record.make_write``: counters are at least the HLC timestamp)."""
        written = new.written
        dot = (written.node, written.counter)
        mints = self.mints.setdefault(key, [])
        for old in mints:
            if old.dot == dot:
                self.problems.append(
                    f"dot {dot} of op {old.op} ({self.writes[old.op].status}) "
                    f"of {key!r} re-minted by op {op}"
                )
        mints.append(Mint(op, dot, written.timestamp, storage, storage.syncs))

    def crashed(self, storage: SimStorage) -> None:
        """God's eye: a write minted on ``storage`` since its last sync, or one that only
        unsynced records there held (received by read repair), may be gone."""
        for mints in self.mints.values():
            for mint in mints:
                if mint.storage is storage and mint.syncs == storage.syncs:
                    mint.alive = None
        for (partition, key), lost in sorted(storage.unsynced.items()):
            if lost is None:  # a deletion lost: the durable record comes back
                continue
            kept = storage.durable.get((partition, key))
            for mint in self.mints.get(key, []):
                if covers(lost.clock(), *mint.dot) and (
                    kept is None or not covers(kept.clock(), *mint.dot)
                ):
                    mint.alive = None


def _lww_key(mint: Mint) -> tuple[int, str, int]:
    return (mint.timestamp, *mint.dot)


def went_back(old: Record, new: Record, policy: ConflictPolicy) -> bool:
    """A replica's record replaced by one that does not include it: under siblings the
    new clock must cover the old; under lww the newest write must not get older."""
    if policy is ConflictPolicy.LWW:
        newest = max(s.order_key() for s in old.siblings)
        return max(s.order_key() for s in new.siblings) < newest
    new_clock = new.clock()
    return not all(covers(new_clock, node, counter) for node, counter in old.clock())


def _supersedes(model: Model, newer: Mint, older: Mint) -> bool:
    """``newer``'s writer had seen ``older`` (its context covered the dot, and the HLC
    then stamped it later: the timestamp tells a re-minted dot's uses apart)."""
    return (
        newer.op != older.op
        and newer.alive is True
        and newer.timestamp > older.timestamp
        and covers(model.writes[newer.op].past, *older.dot)
    )


def check_read(
    sim: Simulation, key: bytes, values: list[bytes], context: Context, exact: bool, where: str
) -> None:
    """Checkers 1-4 for one successful read (``exact``: a quorum/all read of an rmw key)."""
    model = sim.model
    covered = [m for m in model.mints.get(key, []) if covers(context.clock, *m.dot)]
    for value in values:
        op = model.by_value.get(value)
        mints = [m for m in covered if m.op == op]
        if op is None or not mints:
            sim.fail(f"{where}: read {value!r} of {key!r}, which no minted write of it wrote")
            continue
        mints[0].alive = True
        for other in covered:
            if _supersedes(model, other, mints[0]):
                sim.fail(
                    f"{where}: {value!r} of {key!r} reappeared although op "
                    f"{other.op} (status {model.writes[other.op].status}) superseded it"
                )
    if exact:
        _check_exact(sim, key, values, context, covered, where)


def _check_exact(
    sim: Simulation,
    key: bytes,
    values: list[bytes],
    context: Context,
    covered: list[Mint],
    where: str,
) -> None:
    model = sim.model
    lww = sim.config.policy is ConflictPolicy.LWW
    for mint in model.mints.get(key, []):
        write = model.writes[mint.op]
        if write.status != "acked" or mint in covered:
            continue
        if write.sloppy and not model.hints_home:
            continue  # Dynamo's sloppy quorum: visible to quorums once the hint is home
        # lww: a concurrent write of unknown outcome may outrank an acknowledged one
        # (lww's order: timestamp, then the dot, as ``Sibling.order_key``).
        if not (lww and any(_lww_key(o) > _lww_key(mint) for o in covered)):
            sim.fail(
                f"{where}: acknowledged op {mint.op} ({write.value!r}) of {key!r} "
                f"is lost: the read saw {values!r}"
            )
    if lww:
        winners = [m for m in covered if m.timestamp == context.max_timestamp]
        expected = {model.writes[m.op].value for m in winners} if winners else {None}
        got = values[0] if values else None
        if len(values) > 1 or got not in expected:
            sim.fail(
                f"{where}: lww read of {key!r} gave {values!r}, expected one of "
                f"{sorted(expected, key=repr)!r}"
            )
        return
    # Writes lost unsynced in a crash (alive None) may or may not be there, and
    # may or may not hide what they superseded; nothing else is uncertain.
    maximal = [
        m
        for m in covered
        if not any(_supersedes(model, o, m) for o in covered)
        and model.writes[m.op].value is not None
    ]
    maybe_hidden = {
        m.op
        for m in maximal
        if m.alive is None
        or any(
            o.alive is None
            and o.timestamp > m.timestamp
            and covers(model.writes[o.op].past, *m.dot)
            for o in covered
        )
    }
    required = {model.writes[m.op].value for m in maximal if m.op not in maybe_hidden}
    allowed = {model.writes[m.op].value for m in maximal}
    if not required <= set(values) <= allowed or len(set(values)) != len(values):
        sim.fail(
            f"{where}: siblings read of {key!r} gave {sorted(values)!r}, expected "
            f"{sorted(v or b'' for v in required)!r} (and maybe "
            f"{sorted(v or b'' for v in allowed - required)!r})"
        )

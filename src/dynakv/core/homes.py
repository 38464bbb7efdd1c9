"""Who takes part in a ``strong`` operation on one partition, across ring changes: pure.

Per-key Paxos (``core.paxos``, ``core.lwt``) is safe only while every two
quorums in use meet. On a static ring a quorum is a majority of the key's
home list. A ring change (``core.claim.RingChange``, carried out by
``core.claimant``) moves a partition from an old list O to a new list N
whose majorities need not meet O's, so three rules keep strong operations
linearizable through it (``docs/consistency.md`` has the argument):

1. **Joint majorities while a change is open.** A proposer that knows an
   open change moving the partition needs, in every phase, a majority of O
   *and* a majority of N (``Homes.groups``), asking every live member of
   both (``Homes.targets``). The O majority is of the full old list, a
   removed (dead) node included, so it meets every quorum used before.
2. **The fence.** Every Paxos request names the proposer's ring epoch and
   the lists whose majorities it needs (``Homes.epoch``, ``Homes.lists``).
   An acceptor refuses a prepare, propose or read (``fence_problem``) unless
   the proposer knows a newer ring than it does, or the request needs a
   majority of the newest list the acceptor knows for the partition (the
   new list of an open change moving it, else its ring's list). So once an
   acceptor learned a change, no proposer still routing by the old list
   alone can use it; commits are never refused (they carry chosen values).
3. **Paxos state moves with the data.** Before a new member's transfer
   counts as verified, it merges the partition's Paxos state from a
   majority of O (``core.transfer``), each source read only while it routes
   by the change, so after the fence. Every value an old-list-only quorum
   chose was accepted by some member of that majority before its fence, so
   every new member holds it; a majority of N is either all old members (a
   majority of O) or holds a new member.

After the commit, proposers use N alone: every value chosen before is held
by a majority of N (joint quorums contain one; old-only ones by rule 3).

Must never: do I/O, read a clock, or choose randomly.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynakv.core.claim import RingChange
from dynakv.core.ring import Ring

HomeLists = tuple[tuple[str, ...], ...]


@dataclass(frozen=True, slots=True)
class Homes:
    """The replicas a strong operation on one partition asks, and what it needs of them."""

    epoch: int  # the ring epoch the proposer routes by
    lists: HomeLists  # the home lists it needs a majority of: (list,) or (old, new)
    targets: tuple[str, ...]  # whom it asks: every member of the lists but a removed node
    groups: tuple[tuple[frozenset[str], int], ...]  # (members asked, answers needed) per list

    @property
    def joint(self) -> bool:
        return len(self.lists) > 1


def majority(size: int) -> int:
    return size // 2 + 1


def single_list(home: tuple[str, ...], epoch: int = 0) -> Homes:
    """The homes of a partition no change moves: a majority of its one list."""
    return Homes(epoch, (home,), home, ((frozenset(home), majority(len(home))),))


def homes_of(ring: Ring, change: RingChange | None, partition: int) -> Homes:
    """The homes of ``partition`` for a proposer routing by ``ring`` and, if it learned
    one, the open ``change`` (its old ring is ``ring``)."""
    home = ring.preference_list(partition)
    if change is None or change.old.epoch != ring.epoch:
        return single_list(home, ring.epoch)
    new = change.new.preference_list(partition)
    if new == home:
        return single_list(home, ring.epoch)
    targets = change.write_targets(partition)
    old_asked = frozenset(change.read_targets(partition))
    groups = (
        (old_asked, majority(len(home))),  # of the full old list: a removed node counts
        (frozenset(new), majority(len(new))),
    )
    return Homes(ring.epoch, (home, new), targets, groups)


def newest_list(ring: Ring, change: RingChange | None, partition: int) -> tuple[str, ...]:
    """The newest home list of ``partition`` this node knows: the new list of an open
    change (its old ring is ``ring``), else ``ring``'s."""
    if change is not None and change.old.epoch == ring.epoch:
        return change.new.preference_list(partition)
    return ring.preference_list(partition)


def fence_problem(
    epoch: int, lists: HomeLists, *, ring: Ring, newest: tuple[str, ...]
) -> str | None:
    """Why an acceptor routing by ``ring`` (``newest``: ``newest_list`` of the partition)
    must refuse a prepare, propose or read from a proposer at ``epoch`` needing ``lists``,
    or None. See rule 2 of the module docstring."""
    if epoch > ring.epoch or newest in lists:
        return None
    return (
        f"the proposer routes by ring epoch {epoch} with home lists {list(map(list, lists))}; "
        f"this replica knows epoch {ring.epoch} and the home list {list(newest)} "
        "(a ring change moves the partition: strong operations need its majorities)"
    )

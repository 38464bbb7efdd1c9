"""Planted bugs in hinted handoff, anti-entropy and ring changes, to prove the
simulator's new checkers can fail.

Each is a subclass of a real component (or a factory around one) that
``cluster.SimCluster`` installs through ``node.assembly.Factories`` only when
``SimCluster(bug=...)`` names it:

- ``hint-replay-overwrites``: the owner stores a replayed hint as it came,
  over what it holds, instead of merging it (handoff's replays are the only
  replica writes that carry ring epoch 0, which is how the owner tells them
  apart here);
- ``stale-merkle-trees``: the replica never tells the Merkle trees about a
  write, so anti-entropy compares trees built once and finds nothing to move;
- ``drop-before-commit``: the ring-change shell drops a partition it is about
  to hand over before serving its first page, so the change streams nothing
  and the old owner's copies are gone before the new ring is committed;
- ``idempotency-forgets``: a replica drops the idempotency entries of every
  record it receives (replication, read repair, hints, anti-entropy), so it
  remembers only the idempotent writes it minted itself: a retry at another
  node is applied again;
- ``session-ignores-token``: a session read answers from the first replica
  it asks (the local one when it is a replica), as a read at ``one`` would,
  whatever the session's token says it has seen (installed over the
  coordinator's ``read_session``: ``node.assembly.Factories`` has no
  coordinator to swap).

Never imported by product code. Must never: be reachable without ``--bug``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dynakv.api.backend import GetResult
from dynakv.core.claimant import Action, ServePage
from dynakv.core.consistency import Consistency
from dynakv.core.record import Record
from dynakv.core.session import SessionToken
from dynakv.net.messages import Message, WriteReply, WriteRequest
from dynakv.node.coordinator import Coordinator
from dynakv.node.replica import reply_when_durable
from dynakv.node.ring_changes import RingChanges
from dynakv.sim.observed import ObservedReplica


class HintReplayOverwritesReplica(ObservedReplica):
    """PLANTED BUG: a replayed hint overwrites the owner's record (no merge)."""

    def handle(self, message: Message, sender: str) -> Message | asyncio.Future[Message]:
        if isinstance(message, WriteRequest) and message.epoch == 0 and not message.hint_for:
            self.storage.put(message.partition, message.key, message.record)
            if self.trees is not None:
                self.trees.invalidate(message.partition)
            return reply_when_durable(
                self.committer.durable_future(), WriteReply(self.ring_epoch())
            )
        return super().handle(message, sender)


def stale_trees_replica(**options: Any) -> ObservedReplica:
    """PLANTED BUG: the replica is built without the Merkle trees it must keep current."""
    return ObservedReplica(**{**options, "trees": None})


class DropBeforeCommitChanges(RingChanges):
    """PLANTED BUG: a partition is dropped as soon as its first page is asked for."""

    async def _do(self, action: Action) -> list[Action]:
        if isinstance(action, ServePage) and action.request.after is None:
            self.storage.delete_partition(action.request.partition)
            self.trees.invalidate(action.request.partition)
        return await super()._do(action)


class ForgetsIdempotencyReplica(ObservedReplica):
    """PLANTED BUG: a received record's idempotency entries are dropped on merge."""

    def apply(self, partition: int, key: bytes, incoming: Record, *, hint_for: str = "") -> Record:
        forgotten = Record(incoming.siblings)
        return super().apply(partition, key, forgotten, hint_for=hint_for)


def ignore_session_tokens(coordinator: Coordinator) -> None:
    """PLANTED BUG: ``coordinator``'s session reads ignore the token (a read at ``one``)."""

    async def read_session(key: bytes, session: SessionToken) -> GetResult:
        return await coordinator.read(key, Consistency.ONE)

    coordinator.read_session = read_session  # type: ignore[method-assign]

"""Planted bugs in the strong path, to prove the linearizability checker can fail.

Each is a subclass of a real component that the simulator installs only when
``SimCluster(bug=...)`` names it (the third, ``acceptor-forgets-on-restart``,
is what a restart recovers: ``cluster.SimCluster.restart`` drops the durable
acceptor states). Never imported by product code.

Must never: be reachable without ``--bug``.
"""

from __future__ import annotations

import msgspec

from dynakv.api.backend import GetResult
from dynakv.core.etag import etag_of
from dynakv.core.homes import Homes, homes_of
from dynakv.core.paxos import ZERO_BALLOT, AcceptorState, PxPrepare, PxPropose, PxRead
from dynakv.core.record import context_of
from dynakv.core.ring import partition_of
from dynakv.node.acceptor import Acceptor
from dynakv.node.strong import StrongPath


class ReadSkipsPaxos(StrongPath):
    """PLANTED BUG: a strong read answers this node's own record, with no Paxos round."""

    async def read(self, key: bytes) -> GetResult:
        partition = partition_of(key, self.ring.partition_count)
        record = self.replica.read(partition, key)
        now_ms = self.replica.clock.now_ms()
        values = record.visible_values(now_ms) if record is not None else []
        return GetResult(values=values, context=context_of(record), etag=etag_of(record, now_ms))


class IgnoresRingChangeStrongPath(StrongPath):
    """PLANTED BUG (with ``UnfencedAcceptor``): strong operations route by the ring's
    one home list while a ring change moves the partition (no joint majorities)."""

    def _homes(self, partition: int) -> Homes:
        return homes_of(self.ring, None, partition)


class UnfencedAcceptor(Acceptor):
    """PLANTED BUG (with ``IgnoresRingChangeStrongPath``): the acceptor takes requests
    routed by any list, and a new replica merges no Paxos state from the old ones."""

    def _check_route(self, message: PxPrepare | PxPropose | PxRead) -> None:
        return None

    def merge_streamed(self, partition: int, key: bytes, data: bytes, sender: str) -> None:
        return None


class ForgetsPromisesAcceptor(Acceptor):
    """PLANTED BUG: the acceptor remembers what it accepted but not what it promised
    since (a promise above its accepted ballot is forgotten as soon as it is made)."""

    def state(self, partition: int, key: bytes) -> AcceptorState:
        state = super().state(partition, key)
        floor = ZERO_BALLOT if state.accepted is None else state.accepted.ballot
        if state.committed is not None:
            floor = max(floor, state.committed.ballot)
        return msgspec.structs.replace(state, promised=floor)

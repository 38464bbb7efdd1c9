"""Hinted handoff: hand the writes this node took for a down replica back to it.

A fallback stores such a write with a durable hint naming the intended owner
(``storage.put_hinted``: the record and the hint in one batch). This loop,
every ``interval_ms``, picks the owners the failure detector holds up and
sends each up to ``batch_max`` of its hinted records as ordinary replica
writes (``WriteRequest``: a merge, so a replay or a duplicate is harmless);
a hint is deleted only once its owner acknowledged the write durably. Hints
older than ``hint_ttl_ms`` are dropped (anti-entropy repairs what they
held); a fallback refuses new hints past ``hints_bytes_max`` (the replica
answers Overloaded and the coordinator counts the failure).

Pacing: at most ``batch_max`` writes per owner per interval, and at most
``batch_max`` in flight per owner, so a returning node is not flooded.

Must never: delete a hint before its owner acknowledged it, or block the loop.
The record a hint points at stays on the fallback (it is outside the
partitions the fallback serves, so no read sees it; dropping it once every
hint for it is delivered is left for later, noted in docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dynakv.errors import DynakvError
from dynakv.net.messages import WriteReply, WriteRequest
from dynakv.node.clock import Clock
from dynakv.node.coordinator import Peers
from dynakv.node.replica import LocalReplica
from dynakv.storage import Hint
from dynakv.storage.base import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HandoffSettings:
    interval_ms: int = 200
    batch_max: int = 64
    hint_ttl_ms: int = 3 * 3600 * 1000
    rpc_timeout_ms: int = 1500

    def __post_init__(self) -> None:
        assert self.interval_ms > 0 and self.batch_max > 0 and self.hint_ttl_ms > 0


class HintedHandoff:
    def __init__(
        self,
        *,
        storage: Storage,
        replica: LocalReplica,
        peers: Peers,
        is_up: Callable[[str], bool],
        clock: Clock,
        settings: HandoffSettings,
    ) -> None:
        self._storage = storage
        self._replica = replica
        self._peers = peers
        self._is_up = is_up
        self._clock = clock
        self.settings = settings
        self.delivered_total = 0
        self.failed_total = 0
        self.expired_total = 0

    def held_for(self, owner: str) -> int:
        stats = self._storage.hint_summary().get(owner)
        return 0 if stats is None else stats.count

    async def run_forever(self) -> None:
        interval_s = self.settings.interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.deliver_once()
            except Exception:
                log.exception("hinted handoff round failed")

    async def deliver_once(self) -> int:
        """One round: expire old hints, then deliver a batch to every owner that is up."""
        now_ms = self._clock.now_ms()
        delivered = 0
        for owner, stats in sorted(self._storage.hint_summary().items()):
            if now_ms - stats.oldest_created_ms > self.settings.hint_ttl_ms:
                self._expire(owner, now_ms)
            if self._is_up(owner):
                delivered += await self._deliver(owner)
        return delivered

    async def _deliver(self, owner: str) -> int:
        hints = self._storage.hints_for(owner, limit=self.settings.batch_max)
        results = await asyncio.gather(*(self._hand_over(hint) for hint in hints))
        delivered = sum(results)
        if delivered:
            log.info("hinted handoff delivered=%d owner=%s", delivered, owner)
        return delivered

    async def _hand_over(self, hint: Hint) -> bool:
        record = self._replica.read(hint.partition, hint.key)
        if record is None:  # purged or quarantined since: nothing left to hand over
            self._storage.delete_hint(hint.owner, hint.partition, hint.key)
            return False
        request = WriteRequest(hint.partition, hint.key, record)
        try:
            reply = await self._peers.call(hint.owner, request, self.settings.rpc_timeout_ms)
        except DynakvError as exc:
            self.failed_total += 1
            log.debug("hint not delivered owner=%s error=%r", hint.owner, exc)
            return False
        if not isinstance(reply, WriteReply):
            self.failed_total += 1
            return False
        self._storage.delete_hint(hint.owner, hint.partition, hint.key)
        self.delivered_total += 1
        return True

    def _expire(self, owner: str, now_ms: int) -> None:
        """Drop this owner's hints older than the TTL (one bounded page a round)."""
        cutoff_ms = now_ms - self.settings.hint_ttl_ms
        for hint in self._storage.hints_for(owner, limit=self.settings.batch_max * 16):
            if hint.created_ms < cutoff_ms:
                self._storage.delete_hint(owner, hint.partition, hint.key)
                self.expired_total += 1

    def status(self) -> dict[str, Any]:
        summary = self._storage.hint_summary()
        return {
            "held": {owner: stats.count for owner, stats in summary.items()},
            "bytes": self._storage.hints_bytes_total,
            "delivered_total": self.delivered_total,
            "failed_total": self.failed_total,
            "expired_total": self.expired_total,
        }

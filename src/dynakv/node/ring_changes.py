"""The ring-change shell: runs ``core.claimant`` (and ``core.transfer``) on a node.

``core.claimant.Claimant`` is the pure state machine that carries one join,
leave or remove from plan to commit. This module feeds it: a tick every
``tick_ms`` of the event loop's clock with the members membership holds
live, every claimant or transfer message the RPC server hands over, every
newer ring membership learned, and the operator's requests (``request``);
and it carries out what it returns, strictly in order, one action list at a
time (a single worker drains a bounded queue): ``PersistRegister`` is
written to storage meta and synced before any later action runs, so a
promise or an accepted record is never sent before it is durable;
``InstallRing`` persists the ring and hands it to the node; ``ServePage``
reads a page of raw records (or of Paxos states); ``IngestPage`` merges the
page's records into storage (through the replica, so the Merkle trees
follow; Paxos states through the acceptor), syncs, then reports the page
stored; ``DropPartitions`` deletes partitions this node no longer
replicates; ``SetLifecycle`` and ``Retire`` go to membership.

Invariants: a message is refused (dropped, counted) before the claimant
sees it when the queue is full, never after, so the claimant's state never
runs ahead of what is carried out; every wait is bounded (a request times
out). Must never: block the loop for more than one page, unpickle anything,
or let a failed action stop the worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

import msgspec

from dynakv.config import NodeConfig
from dynakv.core.claim import ChangeKind
from dynakv.core.claimant import (
    Action,
    Answer,
    Claimant,
    ClaimantMessage,
    ClaimantTiming,
    ClusterChange,
    DropPartitions,
    InstallRing,
    Outcome,
    PersistRegister,
    RegisterState,
    Retire,
    ServePage,
    SetLifecycle,
    Unavailable,
)
from dynakv.core.failure_detector import RandomSource
from dynakv.core.gossip_messages import Lifecycle
from dynakv.core.record import decode_record
from dynakv.core.ring import Ring, decode_ring
from dynakv.core.transfer import IngestPage, Send, page_reply
from dynakv.errors import DynakvError
from dynakv.net.messages import GossipReceived, Message, RingFetch, RingFetchReply
from dynakv.node.gossip import GossipTransport, Spawn
from dynakv.node.merkle_trees import TreeKeeper
from dynakv.node.replica import LocalReplica
from dynakv.storage.base import Storage

log = logging.getLogger(__name__)

META_REGISTER: Final = "claimant_register"
META_RING: Final = "ring"
QUEUED_LISTS_MAX: Final = 4096
SEND_TIMEOUT_MS: Final = 2000
REQUEST_SLACK_MS: Final = 2000
HISTORY_MAX: Final = 8
FETCH_WAIT_S: Final = 1.0


class Sender(Protocol):
    def start_call(
        self, node_id: str, message: Message, timeout_ms: int
    ) -> asyncio.Future[Message]: ...


def load_ring(storage: Storage) -> Ring | None:
    """The ring this node installed last, if any (it survives restarts)."""
    data = storage.get_meta(META_RING)
    return None if data is None else decode_ring(data)


async def fetch_ring(config: NodeConfig) -> Ring | None:
    """A node that is not among ``[[nodes]]`` asks its seeds for the ring (proving the
    cluster secret in the handshake); bounded retries, fewer when it has data (a
    restart: its own stored ring may do)."""
    timing = config.cluster.timing
    transport = GossipTransport(
        secret=config.cluster_secret,
        node_id=config.node_id,
        connect_timeout_ms=timing.connect_timeout_ms,
        handshake_timeout_ms=timing.rpc_handshake_timeout_ms,
    )
    attempts = 1 if (config.data_dir / "db").exists() else timing.ring_fetch_attempts_max
    try:
        for _ in range(attempts):
            for seed in config.seed_addresses():
                request = RingFetch(sender=config.node_id)
                try:
                    reply = await transport.ask(seed, request, timing.rpc_timeout_ms)
                    if isinstance(reply, RingFetchReply):
                        return decode_ring(reply.ring_bytes)
                except DynakvError as exc:
                    log.warning("no ring from seed %s: %s", seed, exc)
            await asyncio.sleep(FETCH_WAIT_S)
        return None
    finally:
        await transport.close()


def load_register(storage: Storage) -> RegisterState | None:
    data = storage.get_meta(META_REGISTER)
    return None if data is None else msgspec.msgpack.decode(data, type=RegisterState)


class NodeHooks(Protocol):
    """What the shell needs from the node it runs on."""

    def install_ring(self, ring: Ring) -> None: ...

    def set_lifecycle(self, node_id: str, lifecycle: Lifecycle) -> None: ...

    def retire(self) -> None: ...

    def sender(self, node_id: str) -> Sender | None: ...

    def merge_paxos_state(self, partition: int, key: bytes, data: bytes, sender: str) -> None:
        """Fold a streamed acceptor state into this node's (``Acceptor.merge_streamed``)."""


class RingChanges:
    """Runs one node's ``Claimant``: ticks, messages, requests, actions in order."""

    def __init__(
        self,
        *,
        node_id: str,
        storage: Storage,
        replica: LocalReplica,
        trees: TreeKeeper,
        hooks: NodeHooks,
        ring: Ring | None,
        timing: ClaimantTiming,
        rng: RandomSource,
        live: Callable[[], frozenset[str]],
        tick_ms: int,
        now_ms: int,
    ) -> None:
        self.node_id = node_id
        self.storage = storage
        self.replica = replica
        self.trees = trees
        self.hooks = hooks
        self.timing = timing
        self.claimant = Claimant(
            node_id, timing, rng, ring=ring, register=load_register(storage), now_ms=now_ms
        )
        self._live = live
        self._tick_ms = tick_ms
        self._queue: deque[list[Action]] = deque()
        self._wake = asyncio.Event()
        self._answers: dict[int, asyncio.Future[Outcome]] = {}
        self._next_request = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Future[Message]] = set()
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_MAX)
        self._last_open: ClusterChange | None = None  # for the history, once committed
        self.dropped_messages = 0
        self.pages_served = 0
        self.records_ingested = 0
        self.paxos_states_merged = 0

    @staticmethod
    def now_ms() -> int:
        return int(asyncio.get_running_loop().time() * 1000)

    # -- lifecycle ------------------------------------------------------------------

    def start(self, spawn: Spawn | None = None) -> None:
        """Tick and work from now on (``spawn``: as ``MembershipShell.start``)."""
        spawn = spawn or asyncio.get_running_loop().create_task
        self._tasks = [spawn(self._tick_forever()), spawn(self._work())]

    def halt(self) -> None:
        """Stop at once, without waiting (a simulated crash)."""
        for task in self._tasks:
            task.cancel()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for future in self._answers.values():
            if not future.done():
                future.set_result(Unavailable("the node is stopping"))
        for send in list(self._sends):
            send.cancel()

    # -- inputs ---------------------------------------------------------------------

    async def request(
        self, kind: ChangeKind, node_id: str, *, zone: str = "", host: str = ""
    ) -> Outcome:
        """An operator's join, leave or remove: ``Accepted`` once the change is chosen
        (it then runs to its end by itself), or why not."""
        self._next_request += 1
        request_id = self._next_request
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._answers[request_id] = future
        self._enqueue(
            self.claimant.request(request_id, kind, node_id, self.now_ms(), zone=zone, host=host)
        )
        timeout_s = (self.timing.request_timeout_ms + REQUEST_SLACK_MS) / 1000
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return Unavailable(f"no answer within {timeout_s:.0f} s")
        finally:
            self._answers.pop(request_id, None)

    def on_message(self, message: ClaimantMessage, sender: str) -> GossipReceived:
        """The RPC handler: ``sender`` is the connection's proven node id."""
        if len(self._queue) >= QUEUED_LISTS_MAX:
            self.dropped_messages += 1  # before the claimant saw it: as if lost
        else:
            self._enqueue(self.claimant.on_message(sender, message, self.now_ms()))
        return GossipReceived()

    def on_ring(self, ring: Ring) -> None:
        """Membership learned a newer ring."""
        self._enqueue(self.claimant.on_ring(ring, self.now_ms()))

    def status(self) -> dict[str, Any]:
        return {
            **self.claimant.status(),
            "ready": self.claimant.ready(),
            "queued": len(self._queue),
            "dropped_messages": self.dropped_messages,
            "pages_served": self.pages_served,
            "records_ingested": self.records_ingested,
            "paxos_states_merged": self.paxos_states_merged,
            "committed": list(self.history),
        }

    # -- the worker -----------------------------------------------------------------

    def _enqueue(self, actions: list[Action]) -> None:
        if actions:
            self._queue.append(actions)
            self._wake.set()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self._tick_ms / 1000)
            try:
                self._enqueue(self.claimant.tick(self.now_ms(), self._live()))
                self._last_open = self.claimant.in_progress() or self._last_open
            except Exception:
                log.exception("claimant tick failed")

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                pending = deque(self._queue.popleft())
                for _ in range(10_000):
                    if not pending:
                        break
                    action = pending.popleft()
                    try:
                        pending.extendleft(reversed(await self._do(action)))
                    except Exception:
                        log.exception("ring-change action %s failed", type(action).__name__)

    async def _do(self, action: Action) -> list[Action]:
        """Carry out one action; the claimant's further actions, if it has any."""
        if isinstance(action, Send):
            self._send(action.to_node, action.message)
        elif isinstance(action, PersistRegister):
            self.storage.put_meta(META_REGISTER, msgspec.msgpack.encode(action.state))
            await self.replica.durable()
        elif isinstance(action, InstallRing):
            self.storage.put_meta(META_RING, action.ring_bytes)
            await self.replica.durable()
            ring = decode_ring(action.ring_bytes)
            log.info("ring epoch %d installed: %d nodes", ring.epoch, len(ring.nodes))
            self._note_committed(ring)
            self.hooks.install_ring(ring)
        elif isinstance(action, Answer):
            future = self._answers.get(action.request_id)
            if future is not None and not future.done():
                future.set_result(action.outcome)
        elif isinstance(action, SetLifecycle):
            self.hooks.set_lifecycle(action.node_id, action.lifecycle)
        elif isinstance(action, ServePage):
            request = action.request
            scan = self.storage.scan_paxos if request.paxos else self.storage.scan_raw
            items = scan(request.partition, after=request.after, limit=request.items_max)
            self.pages_served += 1
            self._send(request.sender, page_reply(self.node_id, request, items))
        elif isinstance(action, IngestPage):
            return await self._ingest(action)
        elif isinstance(action, DropPartitions):
            self._drop(action.partitions)
        elif isinstance(action, Retire):
            log.warning("this node left the ring and dropped its data: retiring")
            self.hooks.retire()
        return []

    def _note_committed(self, ring: Ring) -> None:
        change = next(
            (
                candidate
                for candidate in (self.claimant.learned, self._last_open)
                if candidate is not None and candidate.old_epoch + 1 == ring.epoch
            ),
            None,
        )
        if change is None:
            return
        slots = ring.partition_count * ring.replicas_wanted
        self.history.append(
            {
                "change": change.change_id,
                "kind": change.kind,
                "node": change.node_id,
                "epoch": ring.epoch,
                "transfers": len(change.transfers),
                "partitions_moved": len({t.partition for t in change.transfers}),
                "moved_fraction": round(len(change.transfers) / slots, 4),
            }
        )

    async def _ingest(self, page: IngestPage) -> list[Action]:
        """Merge a streamed page into storage (records, or Paxos states), durably; then
        it counts as stored. A page not merged or not synced is never reported: the
        receiver retries it or gives the source up."""
        if not (self._merge_paxos(page) if page.paxos else self._merge_records(page)):
            return []
        try:
            await self.replica.durable()
        except DynakvError as exc:
            log.warning("page of partition %d not synced: %s", page.partition, exc)
            return []
        if page.paxos:
            self.paxos_states_merged += len(page.items)
        else:
            self.records_ingested += len(page.items)
        return self.claimant.on_page_stored(page.partition, page.attempt, self.now_ms())

    def _merge_records(self, page: IngestPage) -> bool:
        for key, data in page.items:
            try:
                record = decode_record(data)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
                log.warning("a streamed record of partition %d does not decode", page.partition)
                return False
            if self.replica.check_peer_record("stream", record):
                return False
            try:
                self.replica.apply(page.partition, key, record)
            except DynakvError as exc:
                log.warning("ingest of partition %d stopped: %s", page.partition, exc)
                return False
        return True

    def _merge_paxos(self, page: IngestPage) -> bool:
        for key, data in page.items:
            try:
                self.hooks.merge_paxos_state(page.partition, key, data, page.source)
            except DynakvError as exc:
                log.warning("Paxos states of partition %d not merged: %s", page.partition, exc)
                return False
        return True

    def _drop(self, partitions: tuple[int, ...]) -> None:
        ring = self.claimant.ring
        held = set() if ring is None else set(ring.replica_partitions(self.node_id))
        for partition in partitions:
            if partition in held:
                log.error("refusing to drop partition %d: this node replicates it", partition)
                continue
            self.storage.delete_partition(partition)
            self.trees.invalidate(partition)
        log.info("dropped %d partitions this node no longer replicates", len(partitions))

    def _send(self, to_node: str, message: msgspec.Struct) -> None:
        if to_node == self.node_id:  # a receiver's report to itself as the leader
            local: ClaimantMessage = message  # type: ignore[assignment]
            self._enqueue(self.claimant.on_message(self.node_id, local, self.now_ms()))
            return
        sender = self.hooks.sender(to_node)
        if sender is None:
            return  # no address known yet: as if lost; the claimant resends
        future = sender.start_call(to_node, message, SEND_TIMEOUT_MS)  # type: ignore[arg-type]
        self._sends.add(future)
        future.add_done_callback(self._sent)

    def _sent(self, future: asyncio.Future[Message]) -> None:
        self._sends.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.debug("ring-change message not delivered: %r", future.exception())

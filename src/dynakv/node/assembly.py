"""One node's protocol components, wired in one place for the runtime and the simulator.

``NodeParts`` builds, from the injectables (``Injectables``: the node's spec,
the cluster config, its storage and group committer, a clock, its peers, a
gossip send function, a random source, the starting ring, optional factories
for the simulator's planted bugs), every protocol component of a node: the
Merkle trees, the replica, the coordinator, the membership shell, the
ring-change shell, hinted handoff, anti-entropy, the Paxos acceptor and the
strong path, the sweeper; and it owns what joins them: the current ring
(``install_ring``, ``on_ring_learned``), the RPC dispatch (``handle_rpc``),
the hooks the ring-change shell calls (``node.ring_changes.NodeHooks``), the
background loops (``start`` / ``stop_background`` / ``halt``) and the join
loop. ``node.runtime`` adds the real I/O around it (disk guard, RPC and
HTTP servers, gossip transport, signals); ``sim.cluster`` adds the simulated
disk and network.

Invariants: one ring at a time, installed everywhere at once (coordinator,
strong path, membership, the replica's epoch) and only ever newer; the
background loops run only between ``start`` and ``stop_background`` (or
``halt``); every loop is paced by the cluster's timings and bounded.
Must never: open a socket or a file, read the wall clock except through the
injected ``Clock`` (loop time for ticks), or draw randomness except from the
injected ``random.Random``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from dynakv.config import ClusterConfig, NodeSpec
from dynakv.core.antientropy import ExchangeLimits
from dynakv.core.claim import ChangeKind
from dynakv.core.claimant import Accepted, Outcome
from dynakv.core.gossip_messages import Lifecycle, RingLearned
from dynakv.core.merkle import TreeShape
from dynakv.core.ring import Ring, decode_ring, encode_ring
from dynakv.net.framed import HandlerResult
from dynakv.net.messages import Message, RingFetch, RingFetchReply
from dynakv.node.acceptor import Acceptor
from dynakv.node.antientropy import AntiEntropy, AntiEntropySettings
from dynakv.node.clock import Clock
from dynakv.node.coordinator import Coordinator, dispatch_rpc
from dynakv.node.gossip import MembershipShell, Spawn, new_membership
from dynakv.node.handoff import HandoffSettings, HintedHandoff
from dynakv.node.merkle_trees import TreeKeeper
from dynakv.node.ranges import RangeRead, handle_range
from dynakv.node.replica import Committer, DiskGuard, LocalReplica
from dynakv.node.ring_changes import META_RING, RingChanges
from dynakv.node.strong import StrongPath
from dynakv.storage.base import Storage
from dynakv.storage.sweeper import Sweeper

log = logging.getLogger(__name__)

LOOPS: Final = frozenset({"sweeper", "handoff", "anti_entropy"})
JOIN_ATTEMPTS_MAX: Final = 300
JOIN_RETRY_MS: Final = 1000


class NodePeers(Protocol):
    """The peers every component calls: ``net.rpc.PeerPool``, or ``sim.network.SimPeers``."""

    def start_call(
        self, node_id: str, message: Message, timeout_ms: int
    ) -> asyncio.Future[Message]: ...

    async def call(self, node_id: str, message: Message, timeout_ms: int) -> Message: ...

    def node_ids(self) -> tuple[str, ...]: ...

    def add(self, node_id: str, address: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Factories:
    """Which class builds each swappable component (the simulator plants bugs here)."""

    replica: Callable[..., LocalReplica] = LocalReplica
    acceptor: Callable[[LocalReplica], Acceptor] = Acceptor
    strong: Callable[..., StrongPath] = StrongPath
    handoff: Callable[..., HintedHandoff] = HintedHandoff
    anti_entropy: Callable[..., AntiEntropy] = AntiEntropy
    ring_changes: Callable[..., RingChanges] = RingChanges


@dataclass(frozen=True, slots=True)
class Injectables:
    """Everything a node's protocol components take from the world around them."""

    cluster: ClusterConfig
    me: NodeSpec
    storage: Storage
    committer: Committer
    clock: Clock
    peers: NodePeers
    send_gossip: Callable[[str, Message], None]
    rng: random.Random
    ring: Ring
    seeds: Sequence[str]
    on_retire: Callable[[], None]  # the node left the ring: stop it
    disk_guard: DiskGuard | None = None
    factories: Factories = field(default_factory=Factories)


class NodeParts:
    """A node's protocol components and the ring they share."""

    def __init__(self, given: Injectables) -> None:
        cluster, me, storage = given.cluster, given.me, given.storage
        limits, timing, made = cluster.limits, cluster.timing, given.factories
        self.cluster, self.me, self.node_id = cluster, me, me.node_id
        self.storage, self.clock, self.peers = storage, given.clock, given.peers
        self.ring = given.ring
        self._on_retire = given.on_retire
        shape = TreeShape(limits.anti_entropy_tree_fanout, limits.anti_entropy_tree_depth)
        self.trees = TreeKeeper(storage, shape=shape)
        self.trees_trusted = self.trees.load()
        self.replica = made.replica(
            node_id=me.node_id,
            storage=storage,
            committer=given.committer,
            clock=given.clock,
            policy=cluster.conflict_policy,
            tombstone_grace_s=timing.tombstone_grace_s,
            partition_count=cluster.partitions,
            key_bytes_max=limits.key_bytes_max,
            bounds=cluster.record_bounds(),
            disk_guard=given.disk_guard,
            hints_bytes_max=limits.hints_bytes_max,
            trees=self.trees,
        )
        self.replica.ring_epoch = lambda: self.ring.epoch
        self.coordinator = Coordinator(
            cluster=cluster, ring=self.ring, replica=self.replica, peers=given.peers
        )
        self.coordinator.is_down = self.is_down
        self.coordinator.on_epoch = self._observe_epoch
        self.membership = self._membership(given)
        self.changes = made.ring_changes(
            node_id=me.node_id,
            storage=storage,
            replica=self.replica,
            trees=self.trees,
            hooks=self,
            ring=self.ring,
            timing=timing.claimant(),
            rng=random.Random(given.rng.getrandbits(64)),
            live=lambda: frozenset(self.membership.membership.live_nodes()),
            tick_ms=timing.claimant_tick_ms,
            now_ms=MembershipShell.now_ms(),
        )
        self.coordinator.routing = self.changes.claimant.routing
        self.handoff = self._handoff(given)
        self.anti_entropy = self._anti_entropy(given)
        self.acceptor = made.acceptor(self.replica)
        self.strong = made.strong(
            cluster=cluster,
            ring=self.ring,
            replica=self.replica,
            acceptor=self.acceptor,
            peers=given.peers,
            rng=random.Random(given.rng.getrandbits(64)),
            is_down=self.is_down,
        )
        self.strong.routing = self.changes.claimant.routing
        self.acceptor.routes = lambda: (self.ring, self.changes.claimant.routing())
        self.sweeper = Sweeper(
            storage,
            batch_max=timing.sweep_batch_max,
            on_purge=lambda partition, key, old: self.trees.on_write(partition, key, old, None),
        )
        self.swept_total = 0
        self._loops: list[asyncio.Task[None]] = []

    def _handoff(self, given: Injectables) -> HintedHandoff:
        limits, timing = self.cluster.limits, self.cluster.timing
        return given.factories.handoff(
            storage=self.storage,
            replica=self.replica,
            peers=given.peers,
            is_up=self.is_up,
            clock=given.clock,
            settings=HandoffSettings(
                interval_ms=timing.handoff_interval_ms,
                batch_max=limits.handoff_batch_max,
                hint_ttl_ms=timing.hint_ttl_ms,
                rpc_timeout_ms=timing.rpc_timeout_ms,
            ),
        )

    def _anti_entropy(self, given: Injectables) -> AntiEntropy:
        limits, timing = self.cluster.limits, self.cluster.timing
        return given.factories.anti_entropy(
            replica=self.replica,
            trees=self.trees,
            peers=given.peers,
            ring=lambda: self.ring,
            is_live=self.is_up,
            now_ms=given.clock.now_ms,
            settings=AntiEntropySettings(
                exchange=ExchangeLimits(keys_per_round_max=limits.anti_entropy_keys_per_round_max),
                rate_bytes_per_s=limits.anti_entropy_rate_bytes_per_s,
                burst_bytes=limits.anti_entropy_burst_bytes,
                call_timeout_ms=timing.anti_entropy_rpc_timeout_ms,
                key_bytes_max=limits.key_bytes_max,
            ),
        )

    def _membership(self, given: Injectables) -> MembershipShell:
        in_ring = self.ring.has_node(self.node_id)
        membership = new_membership(
            self.cluster,
            self.me,
            list(given.seeds),
            random.Random(given.rng.getrandbits(64)),
            now_ms=MembershipShell.now_ms(),
            ring=(self.ring.epoch, encode_ring(self.ring)),
            lifecycle=Lifecycle.MEMBER if in_ring else Lifecycle.JOINING,
        )
        return MembershipShell(
            membership,
            given.send_gossip,
            tick_ms=self.cluster.timing.membership_tick_ms,
            on_ring=self.on_ring_learned,
        )

    # -- lifecycle ----------------------------------------------------------------

    def start(self, spawn: Spawn | None = None, *, loops: frozenset[str] = LOOPS) -> None:
        """Start membership, ring changes and the chosen background ``loops``."""
        assert loops <= LOOPS and not self._loops, (loops, "started twice")
        spawn = spawn or asyncio.get_running_loop().create_task
        self.membership.start(spawn)
        self.changes.start(spawn)
        timing = self.cluster.timing
        forever: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "sweeper": self._sweep_forever,
            "handoff": self.handoff.run_forever,
            "anti_entropy": lambda: self.anti_entropy.run_forever(timing.anti_entropy_interval_ms),
        }
        self._loops = [spawn(forever[name]()) for name in sorted(loops)]

    async def stop_background(self) -> None:
        """Stop the loops, ring changes and membership (before the servers close)."""
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        for name, stop in (
            ("ring changes", self.changes.stop),
            ("membership", self.membership.stop),
        ):
            try:
                await stop()
            except Exception:
                log.exception("stopping %s failed node=%s", name, self.node_id)

    async def close(self) -> None:
        """Close the coordinator and the strong path (after the RPC server closed)."""
        for name, close in (("coordinator", self.coordinator.close), ("strong", self.strong.close)):
            try:
                await close()
            except Exception:
                log.exception("stopping %s failed node=%s", name, self.node_id)

    def halt(self) -> None:
        """Stop every loop at once, without waiting (a simulated crash)."""
        for task in self._loops:
            task.cancel()
        self.membership.halt()
        self.changes.halt()

    async def _sweep_forever(self) -> None:
        interval_s = self.cluster.timing.sweep_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.swept_total += self.sweeper.sweep_once(self.clock.now_ms())
            except Exception:
                log.exception("sweep failed node=%s", self.node_id)

    # -- RPC ------------------------------------------------------------------------

    def handle_rpc(self, message: Message, sender: str) -> HandlerResult:
        """The answer to one RPC request from member ``sender``."""
        epoch = getattr(message, "epoch", 0)
        if epoch > self.ring.epoch:
            self._observe_epoch(sender, epoch)
        if isinstance(message, RingFetch):
            return RingFetchReply(epoch=self.ring.epoch, ring_bytes=encode_ring(self.ring))
        if isinstance(message, RangeRead):
            return handle_range(message, sender, self.replica.storage, self.replica)
        return dispatch_rpc(
            message,
            sender=sender,
            node_id=self.node_id,
            replica=self.replica,
            coordinator=self.coordinator,
            gossip=self.membership.on_message,
            anti_entropy=self.anti_entropy.handle,
            paxos=self.acceptor.handle,
            claimant=self.changes.on_message,
        )

    # -- the ring and the ring-change hooks ----------------------------------------

    def install_ring(self, ring: Ring) -> None:
        """A newer ring (committed here, or learned): route by it from now on."""
        if ring.epoch <= self.ring.epoch:
            return
        self.ring = ring
        self.coordinator.ring = ring
        self.strong.ring = ring
        self.membership.install_ring(ring.epoch, encode_ring(ring))
        for node in ring.nodes:
            self.sender(node.node_id)

    def on_ring_learned(self, learned: RingLearned) -> None:
        """Membership fetched a newer ring from a peer: persist it, route by it."""
        ring = decode_ring(learned.ring_bytes)
        if ring.epoch <= self.ring.epoch:
            return
        self.storage.put_meta(META_RING, learned.ring_bytes)
        self.install_ring(ring)
        self.changes.on_ring(ring)
        log.info("ring epoch %d learned by gossip", ring.epoch)

    def merge_paxos_state(self, partition: int, key: bytes, data: bytes, sender: str) -> None:
        self.acceptor.merge_streamed(partition, key, data, sender)

    def set_lifecycle(self, node_id: str, lifecycle: Lifecycle) -> None:
        self.membership.set_lifecycle(node_id, lifecycle)

    def retire(self) -> None:
        """This node left the ring: tell the others, then let the node stop."""
        self.membership.leave()
        self._on_retire()

    def sender(self, node_id: str) -> NodePeers | None:
        """The peers, once they know ``node_id``'s address (from membership)."""
        if node_id == self.node_id:
            return None
        if node_id not in self.peers.node_ids():
            member = self.membership.membership.member(node_id)
            if member is None or not member.rpc:
                return None
            self.peers.add(node_id, member.rpc)
        return self.peers

    def _observe_epoch(self, node_id: str, epoch: int) -> None:
        self.membership.observe_ring_epoch(epoch, node_id)

    def is_down(self, node_id: str) -> bool:
        """The detector holds ``node_id`` down. Never this node itself: its own view of
        itself may lag (a restart learns the others' verdict on it before refuting
        it), and a coordinator that held itself down would read itself uncounted."""
        return node_id != self.node_id and self.membership.membership.state_of(node_id) == "down"

    def is_up(self, node_id: str) -> bool:
        return self.membership.membership.state_of(node_id) == "up"

    async def request_ring_change(self, kind: ChangeKind, node_id: str | None) -> Outcome:
        """A join or leave of this node, or the remove of dead ``node_id``."""
        target = node_id if kind == "remove" and node_id else self.node_id
        return await self.changes.request(
            kind, target, zone=self.me.zone if kind == "join" else "", host=self.me.rpc_host
        )

    async def join_until_accepted(
        self, attempts_max: int = JOIN_ATTEMPTS_MAX, retry_ms: int = JOIN_RETRY_MS
    ) -> bool:
        """Ask to join until the change is accepted or this node is in the ring (bounded)."""
        for _ in range(attempts_max):
            await asyncio.sleep(retry_ms / 1000)
            if self.ring.has_node(self.node_id):
                return True
            if not self.changes.claimant.ready():
                continue
            outcome = await self.request_ring_change("join", None)
            log.info("join requested: %s", outcome)
            if isinstance(outcome, Accepted):
                return True
        log.error("join not accepted after %d attempts node=%s", attempts_max, self.node_id)
        return False

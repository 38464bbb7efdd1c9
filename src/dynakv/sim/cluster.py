"""A simulated cluster: the real node, wired by ``node.assembly``, over simulated
disks and network.

Per node: ``disk.SimStorage`` (volatile writes, a durable image that
survives a crash), ``disk.SimCommitter`` (group commit in virtual time), a
skewed ``SimClock``, ``network.SimPeers``, and ``node.assembly.NodeParts``:
the same replica, coordinator, membership, ring changes, hinted handoff,
anti-entropy, acceptor, strong path and sweeper ``node.runtime.Node`` runs,
with the same RPC dispatch, and their background loops spawned as the
node's work on the simulated network (a crash cancels them).

A cluster of ``nodes`` may start with only the first ``ring_nodes`` in the
ring (the others join when asked: ``SimNode.parts.request_ring_change``). A
node that leaves retires (its process ends for good); ``kill`` ends a node
for good (to be removed). Neither comes back on ``heal``.

Invariants: a restarted node sees exactly its synced records, hints,
acceptor states and meta (so its HLC resumes above its persisted high-water
mark, and its ring and claimant register are the last it synced); a crashed
incarnation's storage is closed, so it can change nothing after the crash;
at most ``nodes`` incarnations are live. Planted bugs (``BUGS``, to prove
the checkers can fail) enter only through ``SimCluster(bug=...)``: a
committer, a component factory (``sim.strong_bugs``, ``sim.node_bugs``), a
network filter, what a restart recovers or (``session-ignores-token``) a
method swapped on one coordinator instance, never product code.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable
from typing import Any

from dynakv.config import ClusterConfig, NodeSpec, Timing
from dynakv.core.record import ConflictPolicy, Record
from dynakv.core.ring import Ring, RingNode, partition_of
from dynakv.net.framed import HandlerResult
from dynakv.net.messages import (
    GOSSIP_MESSAGES,
    GossipReceived,
    Message,
    WriteReply,
    WriteRequest,
)
from dynakv.node.acceptor import Acceptor
from dynakv.node.assembly import LOOPS, Factories, Injectables, NodeParts
from dynakv.node.ring_changes import RingChanges, load_ring
from dynakv.node.strong import StrongPath
from dynakv.sim.disk import (
    AckBeforeSyncCommitter,
    CommitterLike,
    DiskImage,
    SimCommitter,
    SimStorage,
)
from dynakv.sim.loop import VirtualLoop
from dynakv.sim.network import SimNetwork, SimPeers
from dynakv.sim.node_bugs import (
    DropBeforeCommitChanges,
    ForgetsIdempotencyReplica,
    HintReplayOverwritesReplica,
    ignore_session_tokens,
    stale_trees_replica,
)
from dynakv.sim.observed import LocalWriteObserver, MintObserver, ObservedReplica, current_op
from dynakv.sim.strong_bugs import (
    ForgetsPromisesAcceptor,
    IgnoresRingChangeStrongPath,
    ReadSkipsPaxos,
    UnfencedAcceptor,
)

__all__ = ["BUGS", "SimCluster", "SimNode", "current_op"]

EPOCH_MS = 1_800_000_000_000  # virtual time 0 is this wall-clock ms (2027-01-15)
SKEW_MS_MAX = 50
PARTITIONS = 64
SIM_TIMING = Timing(
    request_timeout_ms=200,
    rpc_timeout_ms=150,
    connect_timeout_ms=50,
    membership_tick_ms=100,
    anti_entropy_interval_ms=100,
    anti_entropy_rpc_timeout_ms=300,
    ring_change_request_timeout_ms=3000,
    transfer_page_items_max=4,
)
WEAK_BUGS = ("ack-before-sync", "fake-write-ack", "merge-ignores-incoming", "deaf-gossip")
STRONG_BUGS = (
    "strong-read-skips-paxos",
    "acceptor-forgets-on-restart",
    "acceptor-forgets-promises",
    "strong-ignores-ring-change",
)
NODE_BUGS = ("hint-replay-overwrites", "stale-merkle-trees", "drop-before-commit")
SESSION_BUGS = ("idempotency-forgets", "session-ignores-token")
BUGS = WEAK_BUGS + STRONG_BUGS + NODE_BUGS + SESSION_BUGS
CrashObserver = Callable[["SimStorage"], None]
# (node id, partition, key, the record replaced, the new one)
ReplaceObserver = Callable[[str, int, bytes, Record, Record], None]


class MergeIgnoresIncomingReplica(ObservedReplica):
    """PLANTED BUG: merging keeps the local record and drops the incoming one."""

    def apply(self, partition: int, key: bytes, incoming: Record, *, hint_for: str = "") -> Record:
        local = self.storage.get(partition, key)
        return incoming if local is None else local


def fake_write_ack(src: str, dst: str, message: Message) -> Message | None:
    """PLANTED BUG: the network drops every WriteRequest and answers WriteReply anyway."""
    return WriteReply() if isinstance(message, WriteRequest) else None


def deaf_gossip(src: str, dst: str, message: Message) -> Message | None:
    """PLANTED BUG: n1 acknowledges every gossip message and processes none."""
    return GossipReceived() if dst == "n1" and isinstance(message, GOSSIP_MESSAGES) else None


class SimClock:
    """Virtual loop time as wall time, skewed per node."""

    def __init__(self, loop: VirtualLoop, skew_ms: int) -> None:
        self.loop = loop
        self.skew_ms = skew_ms

    def now_ms(self) -> int:
        return EPOCH_MS + self.skew_ms + int(self.loop.time() * 1000)

    def monotonic_ms(self) -> float:
        return self.loop.time() * 1000.0


CommitterFactory = Callable[[SimStorage, VirtualLoop, random.Random], CommitterLike]


def factories_for(bug: str | None, strong_peers: SimPeers) -> Factories:
    """The component classes of one node: the real ones, or one planted bug."""
    replicas: dict[str | None, Callable[..., Any]] = {
        "merge-ignores-incoming": MergeIgnoresIncomingReplica,
        "hint-replay-overwrites": HintReplayOverwritesReplica,
        "stale-merkle-trees": stale_trees_replica,
        "idempotency-forgets": ForgetsIdempotencyReplica,
    }
    strongs: dict[str | None, type[StrongPath]] = {
        "strong-read-skips-paxos": ReadSkipsPaxos,
        "strong-ignores-ring-change": IgnoresRingChangeStrongPath,
    }
    strong = strongs.get(bug, StrongPath)
    acceptors: dict[str | None, type[Acceptor]] = {
        "acceptor-forgets-promises": ForgetsPromisesAcceptor,
        "strong-ignores-ring-change": UnfencedAcceptor,
    }

    def strong_path(**options: Any) -> StrongPath:
        return strong(**{**options, "peers": strong_peers})

    return Factories(
        replica=replicas.get(bug, ObservedReplica),
        acceptor=acceptors.get(bug, Acceptor),
        strong=strong_path,
        ring_changes=DropBeforeCommitChanges if bug == "drop-before-commit" else RingChanges,
    )


class SimNode:
    """One incarnation of a node: its simulated disk, clock and peers, and the real
    components ``node.assembly`` wires over them."""

    def __init__(self, sim: SimCluster, node_id: str, image: DiskImage) -> None:
        self.node_id = node_id
        self.storage = SimStorage(image)
        self.committer = sim.committer_factory(self.storage, sim.loop, sim.rng)
        self.clock = SimClock(sim.loop, sim.skews_ms[node_id])
        self.peers = SimPeers(sim.network, node_id)
        cluster = sim.config
        self._node_by_address = {n.rpc_address: n.node_id for n in cluster.nodes}
        stored = load_ring(self.storage)
        self.parts = NodeParts(
            Injectables(
                cluster=cluster,
                me=cluster.node(node_id),
                storage=self.storage,
                committer=self.committer,
                clock=self.clock,
                peers=self.peers,
                send_gossip=self._send_gossip,
                rng=random.Random(sim.rng.getrandbits(64)),
                ring=sim.ring if stored is None or stored.epoch < sim.ring.epoch else stored,
                seeds=[n.rpc_address for n in cluster.nodes if n.node_id != node_id],
                on_retire=lambda: self._retire(sim),
                factories=factories_for(sim.bug, self.peers),
            )
        )
        parts = self.parts
        self.replica, self.coordinator, self.strong = parts.replica, parts.coordinator, parts.strong
        self.membership, self.acceptor, self.changes = (
            parts.membership,
            parts.acceptor,
            parts.changes,
        )
        self.handoff, self.anti_entropy = parts.handoff, parts.anti_entropy
        if isinstance(self.replica, ObservedReplica):
            self.replica.on_mint = sim.mint_observer
            self.replica.on_local_write = sim.local_write_observer
        if sim.bug == "session-ignores-token":
            ignore_session_tokens(self.coordinator)
        if sim.replace_observer is not None:
            self.storage.on_replace = functools.partial(sim.replace_observer, node_id)

    def _retire(self, sim: SimCluster) -> None:
        """Stop after the action that retired us returns (``serve`` waits likewise)."""
        sim.loop.call_soon(sim.retire, self.node_id)

    def start(self, network: SimNetwork, loops: frozenset[str]) -> None:
        self.parts.start(lambda coro: network.spawn(self.node_id, coro), loops=loops)

    def _send_gossip(self, address: str, message: Message) -> None:
        target = self._node_by_address.get(address)
        if target is None:
            return
        future = self.peers.start_call(target, message, SIM_TIMING.rpc_timeout_ms)
        future.add_done_callback(_ignore_answer)

    def handle_rpc(self, message: Message, sender: str) -> HandlerResult:
        """The real node's dispatch (``NodeParts.handle_rpc``)."""
        return self.parts.handle_rpc(message, sender)


def _ignore_answer(future: asyncio.Future[Message]) -> None:
    if not future.cancelled():
        future.exception()  # gossip is one-way: a lost message is the protocol's to handle


class SimCluster:
    def __init__(
        self,
        loop: VirtualLoop,
        seed: int,
        *,
        nodes: int = 3,
        ring_nodes: int | None = None,
        policy: ConflictPolicy = ConflictPolicy.LWW,
        replicas: int = 3,
        bug: str | None = None,
        loops: frozenset[str] = LOOPS,
        mint_observer: MintObserver | None = None,
        crash_observer: CrashObserver | None = None,
        replace_observer: ReplaceObserver | None = None,
        local_write_observer: LocalWriteObserver | None = None,
    ) -> None:
        """``ring_nodes``: how many of the ``nodes`` the first ring holds (default all);
        ``loops``: which background loops every node runs (``node.assembly.LOOPS``)."""
        assert bug is None or bug in BUGS, bug
        self.bug = bug
        self.loop = loop
        self.seed = seed
        self.loops = loops
        self.rng = random.Random(seed)
        self.node_ids = [f"n{i + 1}" for i in range(nodes)]
        self.config = ClusterConfig(
            name="sim",
            nodes=tuple(
                NodeSpec(n, f"z{i % 3}", "sim", 8000 + i, "sim", 9000 + i)
                for i, n in enumerate(self.node_ids)
            ),
            partitions=PARTITIONS,
            replicas=replicas,
            conflict_policy=policy,
            timing=SIM_TIMING,
        )
        in_ring = self.config.nodes[: nodes if ring_nodes is None else ring_nodes]
        self.ring = Ring.build(
            [RingNode(s.node_id, s.zone) for s in in_ring],
            partition_count=PARTITIONS,
            replicas=replicas,
        )
        self.skews_ms = {n: self.rng.randint(-SKEW_MS_MAX, SKEW_MS_MAX) for n in self.node_ids}
        self.network = SimNetwork(loop, random.Random(self.rng.getrandbits(64)))
        self.mint_observer = mint_observer
        self.local_write_observer = local_write_observer
        self.replace_observer = replace_observer
        self.crash_observer = crash_observer
        self.committer_factory: CommitterFactory = (
            AckBeforeSyncCommitter if bug == "ack-before-sync" else SimCommitter
        )
        if bug == "fake-write-ack":
            self.network.drop_filter = fake_write_ack
        if bug == "deaf-gossip":
            self.network.drop_filter = deaf_gossip
        self.nodes: dict[str, SimNode] = {}
        self.crashed: set[str] = set()
        self.gone: set[str] = set()  # retired (left the ring) or killed: never restarted
        for node_id in self.node_ids:
            self._start(node_id, DiskImage())

    def _start(self, node_id: str, image: DiskImage) -> None:
        node = SimNode(self, node_id, image)
        self.nodes[node_id] = node
        self.network.attach(node_id, node.handle_rpc)
        node.start(self.network, self.loops)

    def crash(self, node_id: str) -> None:
        """Lose everything not synced; stop answering; drop every pending waiter."""
        assert node_id not in self.crashed, node_id
        node = self.nodes[node_id]
        node.parts.halt()
        node.committer.crash()
        self.network.crash(node_id)
        node.storage.close()
        if self.crash_observer is not None:
            self.crash_observer(node.storage)
        self.crashed.add(node_id)
        self.loop.trace.record(f"{self.loop.time():.9f} crash {node_id}")

    def restart(self, node_id: str) -> None:
        assert node_id in self.crashed and node_id not in self.gone, node_id
        self.crashed.discard(node_id)
        image = self.nodes[node_id].storage.image()
        if self.bug == "acceptor-forgets-on-restart":
            image.paxos.clear()  # PLANTED BUG: promises and accepts were never persisted
        self._start(node_id, image)
        self.loop.trace.record(f"{self.loop.time():.9f} restart {node_id}")

    def kill(self, node_id: str) -> None:
        """Crash ``node_id`` for good (a dead machine, for ``remove``)."""
        if node_id not in self.crashed:
            self.crash(node_id)
        self.gone.add(node_id)
        self.loop.trace.record(f"{self.loop.time():.9f} kill {node_id}")

    def retire(self, node_id: str) -> None:
        """``node_id`` left the ring and stops, as ``node.runtime.serve`` does."""
        if node_id in self.gone:
            return
        self.kill(node_id)
        self.loop.trace.record(f"{self.loop.time():.9f} retired {node_id}")

    def pause(self, node_id: str) -> None:
        self.network.pause(node_id)
        self.loop.trace.record(f"{self.loop.time():.9f} pause {node_id}")

    def resume(self, node_id: str) -> None:
        self.network.resume(node_id)
        self.loop.trace.record(f"{self.loop.time():.9f} resume {node_id}")

    def partition(self, side_a: list[str], side_b: list[str], *, one_way: bool = False) -> None:
        self.network.partition(side_a, side_b, one_way=one_way)
        arrow = ">" if one_way else "|"
        self.loop.trace.record(f"{self.loop.time():.9f} partition {side_a}{arrow}{side_b}")

    def heal(self) -> None:
        """Restart every crashed node (not the gone), resume the paused, heal partitions."""
        for node_id in sorted(self.crashed - self.gone):
            self.restart(node_id)
        for node_id in self.node_ids:
            if self.network.is_paused(node_id):
                self.resume(node_id)
        self.network.heal()
        self.network.faults.loss_p = 0.0
        self.network.faults.duplicate_p = 0.0

    def live(self) -> list[str]:
        """Nodes a client can reach: not crashed, not paused, not gone."""
        return [
            n
            for n in self.node_ids
            if n not in self.crashed and n not in self.gone and not self.network.is_paused(n)
        ]

    def running(self) -> list[str]:
        """Every node not gone (after ``heal``, each of them is up)."""
        return [n for n in self.node_ids if n not in self.gone]

    def current_ring(self) -> Ring:
        """The newest ring any node installed."""
        return max((node.parts.ring for node in self.nodes.values()), key=lambda r: r.epoch)

    def members(self) -> list[str]:
        """The nodes of the newest ring that are not gone, in order."""
        ring = self.current_ring()
        return [n for n in self.node_ids if ring.has_node(n) and n not in self.gone]

    def replicas_of(self, key: bytes) -> tuple[int, tuple[str, ...]]:
        partition = partition_of(key, PARTITIONS)
        return partition, self.current_ring().preference_list(partition)

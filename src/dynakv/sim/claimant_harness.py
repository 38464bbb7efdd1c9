"""A seeded, in-memory run of ring changes: N claimants, dict storages, a lossy network.

Runs the real ``core.claimant`` (and ``core.transfer``) on every node, with a
storage per node (partition -> key -> encoded record, merged on ingest as the
node's shell must), clients that write and read random keys through random
coordinators while a join, leave or remove goes on, and membership reduced to
what the claimant needs: the live set (a perfect detector, or one
``detect_ms`` late) and installed rings spreading within ``gossip_ms_max``.
No asyncio: a heap of events in virtual ms; every choice comes from one
``random.Random``, so one seed gives one ``trace`` hash.

Clients route as the node shell must: by the coordinator's ``routing()``
during a change (writes to ``write_targets``, acknowledged after W acks among
the old list and W among the new, the joint quorum; reads from
``read_targets``), by its ring otherwise. Each message (claimant and client)
is delayed independently, lost with ``loss_p``, duplicated with
``duplicate_p``; claimant messages really go through msgpack.

What it records for the checks: every write acknowledged (and when), reads
that missed an acknowledged write (``read_violations``), the registers each
node persisted (so ``chosen`` knows exactly which records a majority
accepted), each ring installed per epoch, the partitions ingested and
dropped. ``problems()`` names what broke: two changes in progress in one
slot, two rings of one epoch, an acknowledged write on fewer than W of its
final preference list, a read that missed an acknowledged write.

Invariants: deliveries in (time, send order); every run bounded by
``events_max``. Must never: iterate a dict of str unsorted into the trace.
"""

from __future__ import annotations

import heapq
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Final

import msgspec

from dynakv.core.claim import ChangeKind
from dynakv.core.claimant import (
    Accepted,
    Action,
    Answer,
    ChangeState,
    Claimant,
    ClaimantMessage,
    ClaimantTiming,
    DropPartitions,
    InstallRing,
    Outcome,
    PersistRegister,
    RegisterState,
    Retire,
    ServePage,
    SetLifecycle,
    Stamp,
)
from dynakv.core.record import ConflictPolicy, Record, Sibling, decode_record, encode_record, merge
from dynakv.core.ring import Ring, RingNode, decode_ring, encode_ring, partition_of
from dynakv.core.transfer import IngestPage, Send, TransferTiming, page_reply
from dynakv.sim.loop import Trace

ZONES: Final = ("z1", "z2", "z3")
CLIENT_TIMEOUT_MS: Final = 200
HARNESS_TIMING: Final = ClaimantTiming(
    retry_interval_ms=100,
    heartbeat_ms=200,
    takeover_after_ms=1000,
    prepare_timeout_ms=400,
    prepare_backoff_ms=100,
    write_drain_ms=2 * CLIENT_TIMEOUT_MS,
    progress_interval_ms=200,
    drop_grace_ms=2 * CLIENT_TIMEOUT_MS,
    down_cancel_ms=3000,
    request_timeout_ms=8000,
    transfer=TransferTiming(page_items_max=8, page_bytes_max=2048, page_timeout_ms=200),
)


@dataclass(frozen=True, slots=True)
class Faults:
    loss_p: float = 0.0  # claimant messages
    client_loss_p: float = 0.0  # client writes, reads and their answers
    client_delay_ms_max: int = 5
    duplicate_p: float = 0.0
    delay_ms_min: int = 1
    delay_ms_max: int = 5
    gossip_ms_max: int = 300
    detect_ms: int = 0  # how long a crashed node still looks live


@dataclass(slots=True)
class SimNode:
    node_id: str
    zone: str
    claimant: Claimant
    ring: Ring | None
    register: RegisterState | None = None  # what it persisted
    storage: dict[int, dict[bytes, bytes]] = field(default_factory=dict)
    up: bool = True
    down_ms: int = 0
    retired: bool = False


@dataclass(slots=True)
class _Write:
    key: bytes
    partition: int
    timestamp: int
    started_ms: int
    old_list: tuple[str, ...]
    new_list: tuple[str, ...]
    needed: int
    acks: set[str] = field(default_factory=set)
    acked_ms: int | None = None
    stored: set[str] = field(default_factory=set)
    complete_ms: int | None = None  # when every target had stored it


@dataclass(slots=True)
class _Read:
    key: bytes
    partition: int
    started_ms: int
    needed: int
    quorum: bool
    targets: tuple[str, ...]
    replies: dict[str, Record | None] = field(default_factory=dict)
    done: bool = False


class ClaimantHarness:
    def __init__(
        self,
        seed: int,
        *,
        nodes: int = 4,
        partition_count: int = 32,
        replicas: int = 3,
        faults: Faults | None = None,
        timing: ClaimantTiming = HARNESS_TIMING,
        tick_ms: int = 20,
        events_max: int = 3_000_000,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.timing = timing
        self.tick_ms = tick_ms
        self.events_max = events_max
        self.now_ms = 0
        self.trace = Trace()
        members = [RingNode(f"n{i}", ZONES[i % len(ZONES)]) for i in range(nodes)]
        ring = Ring.build(members, partition_count, replicas)
        self.rings: dict[int, bytes] = {ring.epoch: encode_ring(ring)}
        self.nodes: dict[str, SimNode] = {}
        self.answers: dict[int, Outcome] = {}
        self.lifecycles: list[tuple[int, str, str]] = []
        self.accepted: defaultdict[tuple[int, Stamp], set[str]] = defaultdict(set)
        self.values: dict[tuple[int, Stamp], tuple[str, ChangeState]] = {}
        self.chosen: list[tuple[int, int, Stamp, str, ChangeState]] = []  # ms, slot, ...
        self.writes: list[_Write] = []
        self.read_violations: list[str] = []
        self.ingested: set[tuple[str, int]] = set()
        self.dropped: set[tuple[str, int]] = set()
        self.ring_conflicts: list[str] = []
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self._clock = 0
        self._reads: list[_Read] = []
        self._chosen_keys: set[tuple[int, Stamp]] = set()
        self._streams: dict[tuple[str, int, str], str] = {}  # (change, partition, to) -> from
        self._finished: set[str] = set()  # changes chosen committed or cancelled
        self.route_problems: list[str] = []
        self._by_partition: defaultdict[int, list[_Write]] = defaultdict(list)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(ClaimantMessage)
        for member in members:
            self._add(member.node_id, member.zone, ring)

    # -- scenario ------------------------------------------------------------------------

    def _add(self, node_id: str, zone: str, ring: Ring | None) -> None:
        rng = random.Random(self.rng.randrange(2**32))
        claimant = Claimant(node_id, self.timing, rng, ring=ring)
        self.nodes[node_id] = SimNode(node_id, zone, claimant, ring)
        self._at(self.rng.randrange(self.tick_ms), lambda: self._tick(node_id))

    def start_node(self, node_id: str, zone: str) -> None:
        """A new node, ringless until membership (gossip) hands it the current ring."""
        self._add(node_id, zone, None)
        ring_bytes = self.rings[max(self.rings)]
        delay = self.rng.randint(1, self.faults.gossip_ms_max)
        self._at(self.now_ms + delay, lambda: self._gossip_ring(node_id, ring_bytes))

    def request(self, at_ms: int, via: str, kind: ChangeKind, node_id: str, zone: str = "") -> int:
        request_id = self._next_seq()

        def call() -> None:
            node = self.nodes[via]
            self.trace.record(f"{self.now_ms} request {request_id} {via} {kind} {node_id}")
            if node.up and not node.retired:
                actions = node.claimant.request(request_id, kind, node_id, self.now_ms, zone=zone)
                self._do(node, actions)

        self._at(at_ms, call)
        return request_id

    def crash(self, at_ms: int, node_id: str, restart_after_ms: int | None = None) -> None:
        self._at(at_ms, lambda: self._crash_or_restart("crash", self.nodes[node_id]))
        if restart_after_ms is not None:
            restart_ms = at_ms + restart_after_ms
            self._at(restart_ms, lambda: self._crash_or_restart("restart", self.nodes[node_id]))

    def workload(self, start_ms: int, end_ms: int, writes: int, reads: int, keys: int) -> None:
        for kind, count in (("write", writes), ("read", reads)):
            for _ in range(count):
                key = b"k%d" % self.rng.randrange(keys)
                self._at(self.rng.randint(start_ms, end_ms), self._client_call(kind, key))

    def live(self) -> frozenset[str]:
        return frozenset(
            n.node_id
            for n in self.nodes.values()
            if not n.retired and (n.up or self.now_ms - n.down_ms < self.faults.detect_ms)
        )

    # -- running -------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _at(self, at_ms: int, call: Callable[[], None]) -> None:
        heapq.heappush(self._events, (max(at_ms, self.now_ms), self._next_seq(), call))

    def run(self, until_ms: int) -> None:
        for _ in range(self.events_max):
            if not self._events or self._events[0][0] > until_ms:
                self.now_ms = until_ms
                return
            self.now_ms, _, call = heapq.heappop(self._events)
            call()
        raise AssertionError(f"seed {self.seed}: more than {self.events_max} events")

    def _tick(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.up and not node.retired:
            self._do(node, node.claimant.tick(self.now_ms, self.live()))
        if not node.retired:
            self._at(self.now_ms + self.tick_ms, lambda: self._tick(node_id))

    def _gossip_ring(self, node_id: str, ring_bytes: bytes) -> None:
        node = self.nodes[node_id]
        ring = decode_ring(ring_bytes)
        if node.up and (node.ring is None or ring.epoch > node.ring.epoch):
            node.ring = ring
            self.trace.record(f"{self.now_ms} ring {node_id} {ring.epoch}")
            self._do(node, node.claimant.on_ring(ring, self.now_ms))

    def _crash_or_restart(self, kind: str, node: SimNode) -> None:
        self.trace.record(f"{self.now_ms} {kind} {node.node_id}")
        if kind == "crash":
            node.up, node.down_ms = False, self.now_ms
            return
        node.up = True
        rng = random.Random(self.rng.randrange(2**32))
        node.claimant = Claimant(
            node.node_id,
            self.timing,
            rng,
            ring=node.ring,
            register=node.register,
            now_ms=self.now_ms,
        )
        ring_bytes = self.rings[max(self.rings)]  # membership syncs with a peer at once
        delay = self.rng.randint(1, self.faults.gossip_ms_max)
        self._at(self.now_ms + delay, partial(self._gossip_ring, node.node_id, ring_bytes))

    def _deliver(self, to_node: str, sender: str, data: bytes) -> None:
        node = self.nodes[to_node]
        if not node.up or node.retired:
            return
        message = self._decoder.decode(data)
        self._do(node, node.claimant.on_message(sender, message, self.now_ms))

    def _send(self, sender: str, to_node: str, message: object) -> None:
        data = self._encoder.encode(message)
        self.trace.record(f"{self.now_ms} send {sender}>{to_node} {data.hex()[:64]}")
        copies = 2 if self.rng.random() < self.faults.duplicate_p else 1
        for _ in range(copies):
            if self.rng.random() < self.faults.loss_p:
                continue
            delay = self.rng.randint(self.faults.delay_ms_min, self.faults.delay_ms_max)
            self._at(self.now_ms + delay, lambda: self._deliver(to_node, sender, data))

    def _do(self, node: SimNode, actions: list[Action]) -> None:
        """Carry out the actions in order, as the node shell does."""
        pending: list[Action] = list(actions)
        for _ in range(10_000):
            if not pending:
                return
            action = pending.pop(0)
            pending = self._do_one(node, action) + pending
        raise AssertionError("actions did not settle")

    def _do_one(self, node: SimNode, action: Action) -> list[Action]:
        if isinstance(action, Send):
            self._send(node.node_id, action.to_node, action.message)
        elif isinstance(action, PersistRegister):
            node.register = action.state
            self._note_accept(node.node_id, action.state)
        elif isinstance(action, InstallRing):
            self._install(node, action)
        elif isinstance(action, Answer):
            self.answers[action.request_id] = action.outcome
            self.trace.record(f"{self.now_ms} answer {action.request_id} {action.outcome}")
        elif isinstance(action, SetLifecycle):
            self.lifecycles.append((self.now_ms, action.node_id, action.lifecycle.name))
        elif isinstance(action, ServePage):
            request = action.request
            self._check_page(node.node_id, request.change_id, request.partition, request.sender)
            # The harness's nodes run no Paxos: their Paxos keyspace is empty.
            stored = {} if request.paxos else node.storage.get(request.partition, {})
            keys = sorted(k for k in stored if request.after is None or k > request.after)
            items = [(k, stored[k]) for k in keys[: request.items_max]]
            self._send(node.node_id, request.sender, page_reply(node.node_id, request, items))
        elif isinstance(action, IngestPage):
            self._ingest(node, action)
            return node.claimant.on_page_stored(action.partition, action.attempt, self.now_ms)
        elif isinstance(action, DropPartitions):
            self._check_drop(node.node_id, action.partitions)
            for partition in action.partitions:
                node.storage.pop(partition, None)
                self.dropped.add((node.node_id, partition))
        elif isinstance(action, Retire):
            node.retired = True
            self.trace.record(f"{self.now_ms} retire {node.node_id}")
        return []

    def _install(self, node: SimNode, action: InstallRing) -> None:
        known = self.rings.setdefault(action.epoch, action.ring_bytes)
        if known != action.ring_bytes:
            self.ring_conflicts.append(f"two rings of epoch {action.epoch}")
        ring = decode_ring(action.ring_bytes)
        if node.ring is None or ring.epoch > node.ring.epoch:
            node.ring = ring
        for other in sorted(self.nodes):
            if other != node.node_id:
                delay = self.rng.randint(1, self.faults.gossip_ms_max)
                self._at(self.now_ms + delay, partial(self._gossip_ring, other, action.ring_bytes))

    def _check_page(self, source: str, change_id: str, partition: int, receiver: str) -> None:
        """A page read now misses later writes and those in flight: every coordinator must
        write to the receiver too, and no write that bypasses it may still be in flight."""
        if change_id in self._finished:
            return  # a receiver that has not heard yet: its data is dropped, or superseded
        self._streams[(change_id, partition, receiver)] = source
        for other_id, other in sorted(self.nodes.items()):
            routing = other.claimant.routing()
            if self._coordinates(other) and (
                routing is None or receiver not in routing.write_targets(partition)
            ):
                self.route_problems.append(
                    f"{self.now_ms}: {source} served a page of {partition} to {receiver} "
                    f"while {other_id} does not write to it"
                )
        for write in self._by_partition[partition]:
            in_flight = self.now_ms - write.started_ms <= CLIENT_TIMEOUT_MS
            targets = set(write.old_list) | set(write.new_list)
            bypass = source in targets - write.stored and receiver not in targets
            if write.partition == partition and in_flight and bypass:
                self.route_problems.append(
                    f"{self.now_ms}: {source} served a page of {partition} to {receiver} "
                    f"while write {write.timestamp} bypassing it was in flight"
                )

    def _check_drop(self, node_id: str, partitions: tuple[int, ...]) -> None:
        """Nothing still reads what a node drops: no coordinator routes, no read in flight."""
        dropped = set(partitions)
        for other_id, other in sorted(self.nodes.items()):
            if not self._coordinates(other) or other.ring is None:
                continue
            routing = other.claimant.routing()
            for partition in sorted(dropped):
                targets = (
                    other.ring.preference_list(partition)
                    if routing is None
                    else routing.read_targets(partition)
                )
                if node_id in targets:
                    self.route_problems.append(
                        f"{self.now_ms}: {node_id} dropped {partition}, which {other_id} reads"
                    )
        for read in self._reads:
            in_flight = not read.done and self.now_ms - read.started_ms <= CLIENT_TIMEOUT_MS
            if in_flight and read.partition in dropped and node_id in read.targets:
                self.route_problems.append(f"{self.now_ms}: {node_id} dropped under a read")

    def _note_accept(self, node_id: str, state: RegisterState) -> None:
        if state.stamp is None or state.change is None:
            return
        key = (state.slot, state.stamp)
        self.values[key] = (state.change.change_id, state.change.state)
        acceptors = self.accepted[key]
        acceptors.add(node_id)
        members = {n.node_id for n in decode_ring(self.rings[state.slot]).nodes}
        if key not in self._chosen_keys and len(acceptors & members) > len(members) // 2:
            self._chosen_keys.add(key)
            change_id, change_state = self.values[key]
            self.chosen.append((self.now_ms, state.slot, state.stamp, change_id, change_state))
            if change_state is not ChangeState.OPEN:
                self._finished.add(change_id)
                self._streams = {k: v for k, v in self._streams.items() if k[0] != change_id}

    def _ingest(self, node: SimNode, action: IngestPage) -> None:
        stored = node.storage.setdefault(action.partition, {})
        for key, data in action.items:
            old = stored.get(key)
            merged = merge(None if old is None else decode_record(old), decode_record(data), LWW)
            assert merged is not None
            stored[key] = encode_record(merged)
        self.ingested.add((node.node_id, action.partition))

    # -- clients -------------------------------------------------------------------------

    def _coordinates(self, node: SimNode) -> bool:
        """As the node shell: up, with a ring, and synced with the claimants (``ready``)."""
        return node.up and not node.retired and node.ring is not None and node.claimant.ready()

    def _coordinator(self) -> SimNode | None:
        candidates = [n for _, n in sorted(self.nodes.items()) if self._coordinates(n)]
        return self.rng.choice(candidates) if candidates else None

    def _client_call(self, kind: str, key: bytes) -> Callable[[], None]:
        def call() -> None:
            coordinator = self._coordinator()
            if coordinator is not None:
                (self._start_write if kind == "write" else self._start_read)(coordinator, key)

        return call

    def _lists(
        self, coordinator: SimNode, key: bytes
    ) -> tuple[int, tuple[str, ...], tuple[str, ...]]:
        ring = coordinator.ring
        assert ring is not None
        partition = partition_of(key, ring.partition_count)
        routing = coordinator.claimant.routing()
        if routing is None:
            return partition, ring.preference_list(partition), ring.preference_list(partition)
        return partition, routing.read_targets(partition), routing.new.preference_list(partition)

    def _start_write(self, coordinator: SimNode, key: bytes) -> None:
        self._clock += 1
        partition, old, new = self._lists(coordinator, key)
        needed = len(new) // 2 + 1  # the new list is always whole (a dead node is in no list)
        write = _Write(key, partition, self._clock, self.now_ms, old, new, needed)
        targets = set(old) | set(new)
        for (change_id, streamed, receiver), _ in sorted(self._streams.items()):
            if streamed == partition and receiver not in targets:
                self.route_problems.append(
                    f"{self.now_ms}: {coordinator.node_id} wrote partition {partition} "
                    f"around {receiver}, which streams it for {change_id}"
                )
        self.writes.append(write)
        self._by_partition[partition].append(write)
        index = len(self.writes) - 1
        for target in sorted(targets):
            self._net(partial(self._replica_write, index, target))

    def _start_read(self, coordinator: SimNode, key: bytes) -> None:
        partition, old, _ = self._lists(coordinator, key)
        needed = len(coordinator.ring.preference_list(0)) // 2 + 1  # type: ignore[union-attr]
        if self.rng.random() < 0.5:
            needed = 1  # consistency "one": only writes complete before it must show
        read = _Read(key, partition, self.now_ms, min(needed, len(old)), needed > 1, old)
        self._reads.append(read)
        index = len(self._reads) - 1
        for target in old:
            self._net(partial(self._replica_read, index, target))

    def _net(self, call: Callable[[], None]) -> None:
        """A client message: lost with ``client_loss_p``, else delivered after a delay."""
        if self.rng.random() >= self.faults.client_loss_p:
            delay = self.rng.randint(1, self.faults.client_delay_ms_max)
            self._at(self.now_ms + delay, call)

    def _serving(self, node_id: str) -> SimNode | None:
        node = self.nodes[node_id]
        return node if node.up and not node.retired else None

    def _replica_write(self, index: int, node_id: str) -> None:
        node, write = self._serving(node_id), self.writes[index]
        if node is None:
            return
        partition = write.partition
        sibling = Sibling(b"v%d" % write.timestamp, "c", write.timestamp, (), write.timestamp)
        stored = node.storage.setdefault(partition, {})
        old = stored.get(write.key)
        merged = merge(None if old is None else decode_record(old), Record((sibling,)), LWW)
        assert merged is not None
        stored[write.key] = encode_record(merged)
        write.stored.add(node_id)
        if write.complete_ms is None and write.stored >= set(write.old_list) | set(write.new_list):
            write.complete_ms = self.now_ms
        self._net(lambda: self._write_acked(index, node_id))

    def _write_acked(self, index: int, node_id: str) -> None:
        write = self.writes[index]
        if write.acked_ms is not None or self.now_ms - write.started_ms > CLIENT_TIMEOUT_MS:
            return
        write.acks.add(node_id)
        if all(
            len(write.acks & set(nodes)) >= min(write.needed, len(nodes))
            for nodes in (write.old_list, write.new_list)
        ):
            write.acked_ms = self.now_ms

    def _replica_read(self, index: int, node_id: str) -> None:
        node, read = self._serving(node_id), self._reads[index]
        if node is None:
            return
        data = node.storage.get(read.partition, {}).get(read.key)
        record = None if data is None else decode_record(data)
        self._net(lambda: self._read_reply(index, node_id, record))

    def _read_reply(self, index: int, node_id: str, record: Record | None) -> None:
        read = self._reads[index]
        if read.done or self.now_ms - read.started_ms > CLIENT_TIMEOUT_MS:
            return
        read.replies[node_id] = record
        if len(read.replies) < read.needed:
            return
        read.done = True
        merged: Record | None = None
        for replier in sorted(read.replies):
            merged = merge(merged, read.replies[replier], LWW)
        seen = 0 if merged is None else merged.max_timestamp()
        for write in self._by_partition[read.partition]:
            acked = read.quorum and write.acked_ms is not None and write.acked_ms < read.started_ms
            complete = write.complete_ms is not None and write.complete_ms < read.started_ms
            if (acked or complete) and write.key == read.key and write.timestamp > seen:
                self.read_violations.append(
                    f"{self.now_ms}: a read of {read.key!r} saw {seen}, not {write.timestamp}"
                )
                return

    # -- checks --------------------------------------------------------------------------

    def current_ring(self) -> Ring:
        return decode_ring(self.rings[max(self.rings)])

    def chosen_problems(self) -> list[str]:
        """Per slot, in stamp order: no change chosen OPEN while another is unfinished."""
        problems: list[str] = []
        by_slot: defaultdict[int, list[tuple[Stamp, str, ChangeState]]] = defaultdict(list)
        for _, slot, stamp, change_id, state in self.chosen:
            by_slot[slot].append((stamp, change_id, state))
        for slot, entries in sorted(by_slot.items()):
            current: str | None = None
            finished: dict[str, ChangeState] = {}
            for _stamp, change_id, state in sorted(entries):
                if current is not None and change_id != current:
                    problems.append(f"slot {slot}: {change_id} chosen while {current} in progress")
                if change_id in finished and (
                    state is ChangeState.OPEN or finished[change_id] != state
                ):
                    before = finished[change_id].name
                    problems.append(f"slot {slot}: {change_id} chosen {state.name} after {before}")
                if state is ChangeState.OPEN:
                    current = change_id
                else:
                    current, finished[change_id] = None, state
            committed = {c for c, s in finished.items() if s is ChangeState.COMMITTED}
            if len(committed) > 1:
                problems.append(f"slot {slot}: several commits {sorted(committed)}")
        return problems + self.ring_conflicts

    def replica_count(self, write: _Write, ring: Ring) -> int:
        partition = partition_of(write.key, ring.partition_count)
        count = 0
        for node_id in ring.preference_list(partition):
            data = self.nodes[node_id].storage.get(partition, {}).get(write.key)
            if data is not None and decode_record(data).max_timestamp() >= write.timestamp:
                count += 1
        return count

    def data_problems(self, ring: Ring, required: int) -> list[str]:
        """Every acknowledged write is on at least ``required`` of its final list."""
        return (
            [
                f"acked write {w.timestamp} of {w.key!r} on {found} of its list, not {required}"
                for w in self.writes
                if w.acked_ms is not None and (found := self.replica_count(w, ring)) < required
            ]
            + self.read_violations
            + self.route_problems
        )

    def leftovers(self, ring: Ring) -> list[tuple[str, int]]:
        """Partitions a live node stores but does not replicate in ``ring``."""
        return sorted(
            (node_id, partition)
            for node_id, node in self.nodes.items()
            if node.up and not node.retired
            for partition, records in node.storage.items()
            if records and partition not in ring.replica_partitions(node_id)
        )


LWW: Final = ConflictPolicy.LWW
__all__ = ["HARNESS_TIMING", "Accepted", "ClaimantHarness", "Faults", "SimNode"]

"""An in-memory driver for ``core.membership``: N state machines in virtual ms, seeded faults.

No asyncio: a heap of pending deliveries and a fixed tick (every node's
``tick`` every ``tick_ms``, in node id order). Every ``Send`` is really
encoded with msgpack (its length is what ``bytes_sent`` counts) and, with
``check_wire``, decoded again on delivery, so the wire format is exercised.

Faults: independent seeded loss and delay (so messages reorder); partitions
(groups that cannot talk to each other), healed at once; crash (the node's
state is gone; ``restart`` brings up a fresh one at the same address) and
pause (SIGSTOP: no ticks, no deliveries; messages to it are held, at most
``HELD_MAX``, and delivered after it resumes and ticks).

``Trace`` (``sim.loop``) hashes every send and every ``MemberChanged``, so
one seed gives one hash. ``measure_scale`` is the scale experiment; run it as
``python -m dynakv.sim.membership_sim --nodes 100 300 1000``.

Invariants: deliveries happen in (time, send order); every loop is bounded by
virtual time and ``EVENTS_MAX``. Must never: iterate a dict of str unsorted
into the trace or the order of ticks.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import msgspec

from dynakv.core.gossip_messages import (
    GossipMessage,
    Lifecycle,
    MemberChanged,
    MemberState,
    RingLearned,
    Send,
)
from dynakv.core.membership import Membership, MembershipTiming, detection_bound_ms
from dynakv.sim.loop import SimLimitExceeded, Trace

HELD_MAX = 10_000
RING_BYTES = 16 * 1024  # about a 1024-partition ring's encoding
EVENTS_MAX = 50_000_000
ZONES = ("z1", "z2", "z3")


@dataclass(frozen=True, slots=True)
class NetFaults:
    loss_p: float = 0.0
    delay_ms_min: int = 1
    delay_ms_max: int = 5


@dataclass(slots=True)
class SimNode:
    node_id: str
    address: str
    membership: Membership
    crashed: bool = False
    paused: bool = False
    held: list[tuple[str, GossipMessage]] = field(default_factory=list)


def address_of(node_id: str) -> str:
    return f"{node_id}.sim:7000"


class MembershipSim:
    def __init__(
        self,
        seed: int,
        timing: MembershipTiming | None = None,
        faults: NetFaults | None = None,
        *,
        tick_ms: int = 50,
        check_wire: bool = True,
    ) -> None:
        self.seed = seed
        self.timing = timing or MembershipTiming()
        self.faults = faults or NetFaults()
        self.tick_ms = tick_ms
        self.check_wire = check_wire
        self.rng = random.Random(seed)
        self.now_ms = 0
        self.nodes: dict[str, SimNode] = {}
        self._order: list[str] = []  # node ids, sorted: the tick order
        self._by_address: dict[str, str] = {}
        self._heap: list[tuple[int, int, str, str, bytes]] = []
        self._sends = 0
        self._next_tick_ms = 0
        self._group_of: dict[str, int] = {}
        self._decoder = msgspec.msgpack.Decoder(GossipMessage)
        self._encoder = msgspec.msgpack.Encoder()
        self.trace = Trace()
        self.bytes_sent: dict[str, int] = {}
        self.messages_sent = 0
        self.changes: list[tuple[int, str, MemberChanged]] = []  # (time, observer, change)
        self.rings_learned: list[tuple[int, str, int]] = []

    # -- building the cluster --------------------------------------------------

    def add_node(
        self,
        node_id: str,
        *,
        seeds: Sequence[str] = (),
        lifecycle: Lifecycle = Lifecycle.JOINING,
        known: Sequence[MemberState] = (),
        ring_epoch: int = 0,
    ) -> SimNode:
        index = len(self._order) if node_id not in self.nodes else self._order.index(node_id)
        me = MemberState(
            node_id, ZONES[index % len(ZONES)], f"{node_id}.sim:8000", address_of(node_id)
        )
        me = msgspec.structs.replace(me, lifecycle=lifecycle)
        membership = Membership(
            me,
            seeds,
            self.timing,
            random.Random(self.rng.getrandbits(64)),
            now_ms=self.now_ms,
            known=known,
            ring_epoch=ring_epoch,
            ring_bytes=b"ring-%d" % ring_epoch if ring_epoch else b"",
        )
        node = SimNode(node_id, address_of(node_id), membership)
        if node_id not in self.nodes:
            self._order.append(node_id)
            self._order.sort()
        self.nodes[node_id] = node
        self._by_address[node.address] = node_id
        self.bytes_sent.setdefault(node_id, 0)
        return node

    def bootstrap(self, count: int, prefix: str = "n") -> list[str]:
        """``count`` members that already know each other (all alive, lifecycle member)."""
        width = len(str(count))
        ids = [f"{prefix}{i:0{width}d}" for i in range(count)]
        states = [
            MemberState(
                node_id,
                ZONES[i % len(ZONES)],
                f"{node_id}.sim:8000",
                address_of(node_id),
                lifecycle=Lifecycle.MEMBER,
            )
            for i, node_id in enumerate(ids)
        ]
        for node_id in ids:
            self.add_node(node_id, lifecycle=Lifecycle.MEMBER, known=states)
        return ids

    # -- faults ------------------------------------------------------------------

    def crash(self, node_id: str) -> None:
        self.nodes[node_id].crashed = True
        self.trace.record(f"{self.now_ms} crash {node_id}")

    def restart(self, node_id: str, seeds: Sequence[str]) -> SimNode:
        assert self.nodes[node_id].crashed, node_id
        self.trace.record(f"{self.now_ms} restart {node_id}")
        old = self.nodes[node_id].membership.me
        return self.add_node(node_id, seeds=seeds, lifecycle=old.lifecycle)

    def pause(self, node_id: str) -> None:
        self.nodes[node_id].paused = True
        self.trace.record(f"{self.now_ms} pause {node_id}")

    def resume(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.paused = False
        self.trace.record(f"{self.now_ms} resume {node_id}")
        self._execute(node, node.membership.tick(self.now_ms))
        held, node.held = node.held, []
        for sender, message in held:
            self._deliver_to(node, sender, message)

    def partition(self, groups: Sequence[Collection[str]]) -> None:
        """Nodes in different groups cannot talk; nodes in no group talk to everyone."""
        self._group_of = {node_id: i for i, group in enumerate(groups) for node_id in group}
        self.trace.record(f"{self.now_ms} partition {[sorted(g) for g in groups]}")

    def heal(self) -> None:
        self._group_of = {}
        self.trace.record(f"{self.now_ms} heal")

    # -- running -----------------------------------------------------------------

    def run_for(self, duration_ms: int) -> None:
        self.run_until(self.now_ms + duration_ms)

    def run_until(self, until_ms: int, condition: Callable[[], bool] | None = None) -> bool:
        """Advance virtual time to ``until_ms``, or until ``condition`` holds (checked
        after every tick); whether the condition held."""
        for _ in range(EVENTS_MAX):
            next_delivery = self._heap[0][0] if self._heap else until_ms + 1
            step_ms = min(next_delivery, self._next_tick_ms)
            if step_ms > until_ms:
                self.now_ms = until_ms
                return condition() if condition is not None else False
            self.now_ms = step_ms
            if next_delivery <= self._next_tick_ms:
                _, _, target, sender, payload = heapq.heappop(self._heap)
                self._deliver(target, sender, payload)
                continue
            self._next_tick_ms += self.tick_ms
            for node_id in self._order:
                node = self.nodes[node_id]
                if not node.crashed and not node.paused:
                    self._execute(node, node.membership.tick(self.now_ms))
            if condition is not None and condition():
                return True
        raise SimLimitExceeded(f"more than {EVENTS_MAX} events before {until_ms} ms")

    def _execute(self, node: SimNode, actions: list[Send | MemberChanged | RingLearned]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(node.node_id, action)
            elif isinstance(action, MemberChanged):
                self.changes.append((self.now_ms, node.node_id, action))
                self.trace.record(
                    f"{self.now_ms} {node.node_id} sees {action.node_id} {action.old}->{action.new}"
                )
            else:
                self.rings_learned.append((self.now_ms, node.node_id, action.epoch))
                self.trace.record(f"{self.now_ms} {node.node_id} ring {action.epoch}")

    def _send(self, sender: str, send: Send) -> None:
        payload = self._encoder.encode(send.message)
        self.bytes_sent[sender] += len(payload)
        self.messages_sent += 1
        target = self._by_address.get(send.to_address)
        self.trace.record(f"{self.now_ms} {sender}>{target} {type(send.message).__name__}")
        if target is None or self.rng.random() < self.faults.loss_p:
            return
        group_a, group_b = self._group_of.get(sender), self._group_of.get(target)
        if group_a is not None and group_b is not None and group_a != group_b:
            return
        delay_ms = self.rng.randint(self.faults.delay_ms_min, self.faults.delay_ms_max)
        self._sends += 1
        heapq.heappush(self._heap, (self.now_ms + delay_ms, self._sends, target, sender, payload))

    def _deliver(self, target: str, sender: str, payload: bytes) -> None:
        node = self.nodes[target]
        if node.crashed:
            return
        message: GossipMessage = self._decoder.decode(payload)
        if node.paused:
            if len(node.held) < HELD_MAX:
                node.held.append((sender, message))
            return
        self._deliver_to(node, sender, message)

    def _deliver_to(self, node: SimNode, sender: str, message: GossipMessage) -> None:
        self._execute(node, node.membership.on_message(sender, message, self.now_ms))

    # -- looking -----------------------------------------------------------------

    def running(self) -> list[SimNode]:
        return [self.nodes[i] for i in self._order if not self.nodes[i].crashed]

    def seen_by_all(self, node_id: str, states: Collection[str | None]) -> bool:
        """Every running node other than ``node_id`` sees it in one of ``states``."""
        return all(
            node.membership.state_of(node_id) in states
            for node in self.running()
            if node.node_id != node_id
        )

    def converged(self) -> bool:
        """Every running node sees exactly the running nodes as live, with one live table."""
        running = self.running()
        expected = tuple(node.node_id for node in running)
        hashes = {node.membership.live_hash for node in running}
        return len(hashes) == 1 and all(
            node.membership.live_nodes() == expected for node in running
        )


@dataclass(frozen=True, slots=True)
class ScaleResult:
    nodes: int
    seed: int
    steady_bytes_per_node_s: float
    join_known_ms: int  # a join, until every node has the joiner in its table
    join_bytes_per_node_s: float  # over the join window
    detect_down_ms: int  # a crash, until every other node says "down"
    detect_bound_ms: int  # detection_bound_ms for this size
    ring_spread_ms: int  # a new ring epoch (16 KiB) installed on one node, until all have it
    real_s: float


def _bytes_total(sim: MembershipSim) -> int:
    return sum(sim.bytes_sent[node_id] for node_id in sorted(sim.bytes_sent))


def measure_scale(
    node_count: int, seed: int = 1, timing: MembershipTiming | None = None
) -> ScaleResult:
    """Bootstrap ``node_count`` members; measure steady gossip bytes, a join, a crash."""
    started = time.perf_counter()
    sim = MembershipSim(seed, timing)
    ids = sim.bootstrap(node_count)
    sim.run_for(5_000)  # settle: everyone has probed a few times
    steady_ms = 10_000
    before = _bytes_total(sim)
    sim.run_for(steady_ms)
    steady = (_bytes_total(sim) - before) / node_count / (steady_ms / 1000)
    joined_at, before = sim.now_ms, _bytes_total(sim)
    sim.add_node("joiner", seeds=[address_of(ids[0])])
    known = sim.run_until(
        sim.now_ms + 120_000, lambda: sim.seen_by_all("joiner", ("joining", "up"))
    )
    join_ms = sim.now_ms - joined_at if known else -1
    join_bytes = (_bytes_total(sim) - before) / (node_count + 1) / max(0.001, join_ms / 1000)
    victim = ids[len(ids) // 2]
    sim.run_for(1_000)
    sim.crash(victim)
    crashed_at = sim.now_ms
    bound_ms = detection_bound_ms(sim.timing, node_count + 1)
    down = sim.run_until(sim.now_ms + 2 * bound_ms, lambda: sim.seen_by_all(victim, ("down",)))
    detect_ms = sim.now_ms - crashed_at if down else -1
    installed_at = sim.now_ms
    sim.nodes[ids[0]].membership.install_ring(1, bytes(RING_BYTES))
    spread = sim.run_until(
        sim.now_ms + 120_000, lambda: all(n.membership.ring.epoch == 1 for n in sim.running())
    )
    return ScaleResult(
        nodes=node_count,
        seed=seed,
        steady_bytes_per_node_s=round(steady, 1),
        join_known_ms=join_ms,
        join_bytes_per_node_s=round(join_bytes, 1),
        detect_down_ms=detect_ms,
        detect_bound_ms=bound_ms,
        ring_spread_ms=sim.now_ms - installed_at if spread else -1,
        real_s=round(time.perf_counter() - started, 1),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dynakv.sim.membership_sim", description=__doc__
    )
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    for count in args.nodes:
        print(measure_scale(count, args.seed), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

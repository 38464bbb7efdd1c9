"""Seeded clients, the fault schedule, and the checkers of one simulation run.

A run: SAFETY (clients and faults for at most ``safety_s`` virtual seconds
or ``ops`` operations), then HEAL (restart, resume, reconnect; loss off),
then LIVENESS (read every key at ``all`` from every node, wait for read
repair) and the final checks. Everything is bounded: operations, virtual
time, loop iterations.

Clients: one sequential read-modify-write client per group of ``rmw`` keys
(read at quorum, then put or delete with the read's context, at quorum);
two ``chaos`` clients share other keys with blind writes, context deletes and
reads at one/quorum/all. Every put's value is unique (``v<op>``), and every
write's dot is captured when a replica mints it (``cluster.ObservedReplica``,
keyed by a context variable carrying the op id), so every read is checked against
exactly the writes the cluster could hold (``causal_check``):

1. every value read was written (by a minted write of that key);
2. (rmw keys) no acknowledged write lost: the read's context covers every
   acknowledged write, unless (lww only) a concurrent write of unknown outcome
   outranks it;
3. nothing superseded reappears: a visible value's write is not in the past
   of any write the read's context covers (a deleted key stays deleted);
4. (rmw keys) exactly the right answer: lww returns the write whose timestamp
   is the context's; siblings returns exactly the causally maximal puts;
5. convergence: after healing, every replica stores the same record;
6. (in tests) the same seed twice gives the same trace hash;
7. strong clients (``strong_clients``: strong get/put/delete, If-Match and
   If-None-Match writes on their own keys): each key's history is
   linearizable (``linearizability``), and read by every node after healing;
8. session clients and idempotent writers (``session_clients``, unless
   ``sessions`` is off): read-your-writes, monotonic reads and
   writes-follow-reads per client and key (``session_check``); an
   idempotent write retried after an unknown outcome or a lost answer is
   not applied again by a replica that holds it, never shows twice, and is
   there after healing if it was acknowledged.

Faults (unless ``faults`` is off): loss and duplication rates per run; every
50-400 virtual ms a crash or restart (at most one node down; a third of the
crashes bounce back within 1-30 ms), a pause or resume, a partition of one
node (both ways, or one way) or a heal. Each is counted in the run's stats.

Unknown-outcome writes are handled by the dots, not by weakening: such a
write counts exactly when a read's context covers its dot. The only
uncertain writes are those a node minted but had not synced when it crashed
(the simulator owns the disk, so it knows which): only they may be absent
or fail to hide what they superseded (``causal_check.Mint.alive is None``).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

from dynakv.core.consistency import WEAK_LEVELS, Consistency
from dynakv.core.record import EMPTY_CONTEXT, ConflictPolicy, Context, Record
from dynakv.errors import DynakvError
from dynakv.net.messages import Message, WriteRequest
from dynakv.node.assembly import LOOPS
from dynakv.sim import liveness
from dynakv.sim.causal_check import Model, Write, check_read, went_back
from dynakv.sim.cluster import SimCluster, current_op
from dynakv.sim.faults import fault_schedule
from dynakv.sim.loop import VirtualLoop, run_simulation
from dynakv.sim.ring_change_clients import finish_ring_changes, ring_change_client
from dynakv.sim.session_clients import SessionClients
from dynakv.sim.strong_clients import (
    STRONG_CLIENTS,
    StrongHistory,
    check_linearizable,
    final_reads,
    strong_client,
    strong_keys,
)

RMW_CLIENTS = 3
RMW_KEYS_PER_CLIENT = 3
CHAOS_CLIENTS = 2
CHAOS_KEYS = 4
SETTLE_S = 1.0
CONVERGE_MODES = ("reads", "anti-entropy")
# With ring changes, clients pace themselves so the workload outlasts the changes.
RING_CHANGE_IDLE_SCALE = 8


@dataclass(frozen=True)
class SimConfig:
    seed: int
    ops: int = 300
    policy: ConflictPolicy = ConflictPolicy.LWW
    nodes: int = 3
    safety_s: float = 30.0
    bug: str | None = None  # a planted bug from BUGS (to prove the checkers can fail)
    faults: bool = True  # crashes, pauses, partitions, loss and duplication
    # "reads": liveness reads every key at ``all``; "anti-entropy": no reads after
    # healing and no hinted handoff: the replicas must converge by anti-entropy alone.
    converge: str = "reads"
    ring_changes: bool = False  # the last node joins; then a leave, a kill and a remove
    sessions: bool = True  # session clients and idempotent writers (``session_clients``)

    def __post_init__(self) -> None:
        assert self.converge in CONVERGE_MODES, self.converge
        assert not self.ring_changes or self.nodes >= 5, "join, leave, remove need 5 nodes"
        # Check 9 reads every acknowledged write after the heal: not "no reads".
        assert not (self.ring_changes and self.converge != "reads"), "one variant at a time"

    def replay(self) -> str:
        bug = f" --bug {self.bug}" if self.bug else ""
        faults = "" if self.faults else " --no-faults"
        converge = "" if self.converge == "reads" else f" --converge {self.converge}"
        changes = " --ring-changes" if self.ring_changes else ""
        changes += "" if self.sessions else " --no-sessions"
        return (
            f"python -m dynakv.sim --seed {self.seed} --ops {self.ops} "
            f"--policy {self.policy.value} --nodes {self.nodes}{faults}{converge}{changes}{bug}"
        )


@dataclass
class SimResult:
    config: SimConfig
    trace_hash: str = ""
    failures: list[str] = field(default_factory=list)
    ops_done: int = 0
    virtual_s: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


class Simulation:
    def __init__(self, loop: VirtualLoop, config: SimConfig) -> None:
        self.loop = loop
        self.config = config
        self.rng = random.Random(config.seed ^ 0x5EED)
        self.model = Model()
        self.sessions = SessionClients(self) if config.sessions else None
        loops = LOOPS if config.converge == "reads" else LOOPS - {"handoff"}
        self.cluster = SimCluster(
            loop,
            config.seed,
            nodes=config.nodes,
            ring_nodes=config.nodes - 1 if config.ring_changes else None,
            policy=config.policy,
            bug=config.bug,
            loops=loops,
            mint_observer=self.model.minted,
            crash_observer=self.model.crashed,
            replace_observer=self.replaced,
            local_write_observer=None if self.sessions is None else self.sessions.on_local_write,
        )
        self.cluster.network.observer = self.sent
        self.idle_scale = RING_CHANGE_IDLE_SCALE if config.ring_changes else 1
        self.result = SimResult(config)
        self.next_op = 0
        self.ops_left = config.ops
        self.safety_over = False
        self.stats: dict[str, int] = {}
        self.strong_history = StrongHistory()
        rmw, chaos = self.keys()
        self.weak_keys = frozenset([*chaos, *(k for group in rmw for k in group)])

    def fail(self, message: str) -> None:
        if len(self.result.failures) < 20:
            self.result.failures.append(
                f"seed {self.config.seed}: {message} (replay: {self.config.replay()})"
            )

    def replaced(self, node: str, partition: int, key: bytes, old: Record, new: Record) -> None:
        """A replica's record of a weak key never goes back (every write path merges)."""
        if key in self.weak_keys and went_back(old, new, self.config.policy):
            self.fail(
                f"t={self.loop.time():.6f}s the record of {key!r} on {node} went back: "
                f"{old!r} replaced by {new!r}"
            )

    def sent(self, src: str, dst: str, message: Message) -> None:
        """A write handed to a fallback with a hint, on behalf of a client's op."""
        if isinstance(message, WriteRequest) and message.hint_for:
            write = self.model.writes.get(current_op.get())
            if write is not None:
                write.sloppy = True

    def count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1

    def new_op(self) -> int:
        self.next_op += 1
        return self.next_op

    def where(self, op: int, node: str) -> str:
        return f"t={self.loop.time():.6f}s op {op} via {node}"

    async def on_node(self, node: str, coro: Any) -> tuple[bool, Any]:
        """Run a client call on ``node``; (False, error) if it failed or the node crashed."""
        task = self.cluster.network.spawn(node, coro)
        await asyncio.wait({task})
        if task.cancelled():
            return False, "crashed"
        error = task.exception()
        if error is not None:
            if not isinstance(error, DynakvError):
                self.fail(f"client call on {node} raised {error!r}")
            return False, type(error).__name__
        return True, task.result()

    async def read(self, key: bytes, node: str, level: Consistency, exact: bool) -> Context | None:
        op = self.new_op()
        coordinator = self.cluster.nodes[node].coordinator
        ok, result = await self.on_node(node, coordinator.read(key, level))
        self.loop.trace.record(
            f"{self.loop.time():.9f} read {op} {key!r} {level} {result.values if ok else result}"
        )
        self.count(f"read_{level}_{'ok' if ok else 'failed'}")
        if not ok:
            return None
        check_read(self, key, result.values, result.context, exact, self.where(op, node))
        context: Context = result.context
        return context

    async def write(
        self, key: bytes, node: str, level: Consistency, delete: bool, context: Context
    ) -> bool:
        op = self.new_op()
        value = None if delete else b"v%d" % op
        write = Write(op, key, value, context.clock)
        self.model.writes[op] = write
        if value is not None:
            self.model.by_value[value] = op
        coordinator = self.cluster.nodes[node].coordinator
        token = current_op.set(op)
        try:
            coro = coordinator.write(key, value, level, 0, context)
            ok, result = await self.on_node(node, coro)
        finally:
            current_op.reset(token)
        write.status = "acked" if ok else "unknown"
        self.loop.trace.record(
            f"{self.loop.time():.9f} write {op} {key!r} {level} {value!r} {'ok' if ok else result}"
        )
        self.count(f"write_{level}_{'ok' if ok else 'failed'}")
        return ok

    # -- clients ----------------------------------------------------------------

    def pick_node(self) -> str | None:
        live = self.cluster.live()
        return self.rng.choice(live) if live else None

    def take_op(self) -> bool:
        if self.safety_over or self.ops_left <= 0:
            return False
        self.ops_left -= 1
        return True

    async def idle(self) -> None:
        await asyncio.sleep(self.rng.uniform(0.005, 0.06) * self.idle_scale)

    async def rmw_client(self, keys: list[bytes]) -> None:
        """Read at quorum, then put or delete on top of what was read, at quorum."""
        while self.take_op():
            key = self.rng.choice(keys)
            node = self.pick_node()
            if node is None:
                await self.idle()
                continue
            context = await self.read(key, node, Consistency.QUORUM, exact=True)
            writer = self.pick_node()
            if context is not None and writer is not None:
                await self.write(key, writer, Consistency.QUORUM, self.rng.random() < 0.2, context)
            await self.idle()

    async def chaos_client(self, keys: list[bytes]) -> None:
        """Blind puts, context deletes and reads at every level, on shared keys."""
        levels = list(WEAK_LEVELS)
        while self.take_op():
            key = self.rng.choice(keys)
            node = self.pick_node()
            if node is None:
                await self.idle()
                continue
            level = self.rng.choice(levels)
            roll = self.rng.random()
            if roll < 0.45:
                await self.write(key, node, level, False, EMPTY_CONTEXT)
            elif roll < 0.6:
                context = await self.read(key, node, level, exact=False)
                if context is not None:
                    await self.write(key, node, level, True, context)
            else:
                await self.read(key, node, level, exact=False)
            await self.idle()

    # -- phases -------------------------------------------------------------------

    def keys(self) -> tuple[list[list[bytes]], list[bytes]]:
        rmw = [[b"r%d-%d" % (c, i) for i in range(RMW_KEYS_PER_CLIENT)] for c in range(RMW_CLIENTS)]
        chaos = [b"c-%d" % i for i in range(CHAOS_KEYS)]
        return rmw, chaos

    async def run(self) -> SimResult:
        rmw, chaos = self.keys()
        clients = [asyncio.create_task(self.rmw_client(k)) for k in rmw]
        clients += [asyncio.create_task(self.chaos_client(chaos)) for _ in range(CHAOS_CLIENTS)]
        clients += [
            asyncio.create_task(strong_client(self, f"s{i}", strong_keys()))
            for i in range(STRONG_CLIENTS)
        ]
        if self.sessions is not None:
            clients += [asyncio.create_task(run) for run in self.sessions.clients()]
        if self.config.ring_changes:
            clients.append(asyncio.create_task(ring_change_client(self)))
        fault_task = asyncio.create_task(fault_schedule(self))
        await asyncio.wait(clients, timeout=self.config.safety_s)
        self.safety_over = True
        await asyncio.wait([*clients, fault_task])
        self.result.ops_done = self.config.ops - self.ops_left
        self.cluster.heal()
        self.loop.trace.record(f"{self.loop.time():.9f} heal")
        await asyncio.sleep(SETTLE_S)
        await self.liveness([k for group in rmw for k in group], chaos)
        await final_reads(self, strong_keys())
        check_linearizable(self)
        if self.sessions is not None:
            await self.sessions.finish()
        self.stats.update(self.strong_history.by_status)
        self.stats["strong_operations"] = len(self.strong_history.operations)
        self.count_machinery()
        self.result.virtual_s = self.loop.time()
        self.result.stats = dict(sorted(self.stats.items()))
        for problem in self.model.problems:
            self.fail(problem)
        return self.result

    def count_machinery(self) -> None:
        """What hinted handoff, anti-entropy and ring changes did (live incarnations)."""
        nodes = [self.cluster.nodes[n] for n in self.cluster.running()]
        self.stats["hints_delivered"] = sum(n.handoff.delivered_total for n in nodes)
        self.stats["hints_held"] = sum(
            stats.count for n in nodes for stats in n.storage.hint_summary().values()
        )
        totals = [n.anti_entropy.lifetime for n in nodes]
        self.stats["anti_entropy_rounds"] = sum(t.rounds_total for t in totals)
        self.stats["anti_entropy_keys_moved"] = sum(
            t.totals.get("keys_pulled", 0) + t.totals.get("keys_pushed", 0) for t in totals
        )
        self.stats["records_streamed"] = sum(n.changes.records_ingested for n in nodes)

    async def liveness(self, rmw: list[bytes], chaos: list[bytes]) -> None:
        """The checks after healing (``sim.liveness``): across ring changes, the ring
        spreads and every acknowledged write reads back at quorum; then convergence,
        by reads at ``all`` or by anti-entropy alone; membership throughout."""
        if self.config.ring_changes:
            await finish_ring_changes(self)
            await liveness.rings_agree(self)
            await liveness.acked_writes_survive(self, rmw)
        if self.config.converge == "anti-entropy":
            await liveness.membership_converges(self)  # rounds skip peers not up
            await liveness.converged_by_anti_entropy(self, rmw, chaos)
            liveness.check_every_replica(self, [*rmw, *chaos])
            return
        await liveness.hints_drain(self)
        self.model.hints_home = True
        liveness.check_every_replica(self, [*rmw, *chaos])
        await liveness.read_everything(self, rmw, chaos)
        await asyncio.sleep(SETTLE_S)
        await liveness.membership_converges(self)
        liveness.check_converged(self, [*rmw, *chaos])


def run_seed(config: SimConfig) -> SimResult:
    """One whole run: safety, heal, liveness, checks. Deterministic per ``config``."""

    async def main(loop: VirtualLoop) -> SimResult:
        return await Simulation(loop, config).run()

    result, loop = run_simulation(main, time_s_max=config.safety_s + 120)
    result.trace_hash = loop.trace.hexdigest()
    result.stats["trace_events"] = loop.trace.events
    result.stats["loop_iterations"] = loop.iterations
    errors = loop.callback_errors
    result.stats["callback_errors"] = len(errors)
    for error in errors[:3]:
        result.failures.append(
            f"seed {config.seed}: loop callback error {error} (replay: {config.replay()})"
        )
    return result

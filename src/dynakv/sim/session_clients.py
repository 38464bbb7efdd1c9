"""Session and idempotent clients of a simulation run, and their checks
(docs/simulation.md tells the whole story).

Session clients keep a token each, as the HTTP layer keeps ``X-Dynakv-Session``
(``core.session.observe`` on every answer), read with
``Coordinator.read_session`` and write at quorum with ``session=token`` on top
of all they saw of the key, on their own keys and keys shared with the
idempotent writers; a write is read back at once through another node, and a
read goes through a node other than the last written through. Their history
goes to ``session_check.check_sessions``; a read is *settled* when a quorum of
replicas held its version durably as it returned (god's eye), the bar for
monotonic reads.

Idempotent writers read at quorum, then put a unique value on that context
under a fresh idempotency key; a failure, or (``LOST_ANSWER_P``) an ok answer
taken as lost, is retried through another live node under the same key, at
most ``RETRIES_MAX`` times. Every attempt runs as the write's op
(``observed.current_op``), so each copy minted and each retry replayed is seen.
Checks: (1) a replica whose record holds a copy of the write as a live sibling
(so its idempotency entry too, unless the entries are full) never mints it
again; (2) no read of these keys, and no replica's record at the end, shows a
value twice or one never written, and an answer names a copy of its write;
(3) after healing, the converged record covers a copy of every acknowledged
write on these keys, or (lww) its winner outranks it.

These clients have their own budget (half the run's ``ops``) and
``random.Random``, so the run's other clients keep their share. Must never:
touch the causal model's keys, judge a call by more than its client saw (check
1: what the replica held), or let the order of a dict or set reach the trace.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from dynakv.core.consistency import Consistency
from dynakv.core.idempotency import IDEMPOTENCY_ENTRIES_MAX, idempotency_hash
from dynakv.core.record import EMPTY_CONTEXT, ConflictPolicy, Context, Record
from dynakv.core.session import (
    EMPTY_SESSION,
    SessionEntry,
    SessionToken,
    observe,
    satisfies,
    session_key_hash,
)
from dynakv.core.versions import clock_join, covers
from dynakv.node.replica import NewWrite
from dynakv.sim import liveness
from dynakv.sim.causal_check import Write
from dynakv.sim.observed import current_op
from dynakv.sim.session_check import SessionKind, SessionOp, added_dot, check_sessions

if TYPE_CHECKING:
    from dynakv.sim.workload import Simulation

SESSION_CLIENTS: Final = 2
SESSION_KEYS_PER_CLIENT: Final = 2
SHARED_KEYS: Final = 2
IDEMPOTENT_CLIENTS: Final = 2
IDEMPOTENT_KEYS_PER_CLIENT: Final = 2
SESSION_WRITE_P: Final = 0.4
RETRIES_MAX: Final = 3
LOST_ANSWER_P: Final = 0.25
FINAL_ATTEMPTS: Final = 3
CONVERGE_S: Final = 40.0
POLL_S: Final = 0.1
VIOLATIONS_SHOWN: Final = 5


@dataclass
class Tracked:
    """One write on these keys, every attempt of it: the copies replicas minted."""

    op: int
    key: bytes
    value: bytes
    ok: bool = False
    copies: list[tuple[int, str, int]] = field(default_factory=list)  # (timestamp, dot)


@dataclass
class _Session:
    """One session client's state: its token, and the join of what it saw per key."""

    name: str
    keys: list[bytes]
    token: SessionToken = EMPTY_SESSION
    seen: dict[bytes, Context] = field(default_factory=dict)
    last_writer: str | None = None


def _join(a: Context, b: Context) -> Context:
    return Context(clock_join(a.clock, b.clock), max(a.max_timestamp, b.max_timestamp))


class SessionClients:
    """The session and idempotent clients of one run, what they saw, and the checks."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        # Their own budget (half the run's ``ops``) and randomness, so the other
        # clients keep their share of the run and their sequence of choices.
        self.ops_left = sim.config.ops // 2
        self.rng = random.Random(sim.config.seed ^ 0x5E55)
        self.history: list[SessionOp] = []
        self.writes: dict[int, Tracked] = {}
        self.by_key: dict[bytes, list[Tracked]] = {}
        self.values: dict[bytes, set[bytes]] = {}  # every value written, per key
        shared = [b"sh-%d" % i for i in range(SHARED_KEYS)]
        self.sessions = [
            _Session(
                f"se{c}", [*(b"se%d-%d" % (c, i) for i in range(SESSION_KEYS_PER_CLIENT)), *shared]
            )
            for c in range(SESSION_CLIENTS)
        ]
        self.idempotent_keys = [
            [*(b"id%d-%d" % (c, i) for i in range(IDEMPOTENT_KEYS_PER_CLIENT)), *shared]
            for c in range(IDEMPOTENT_CLIENTS)
        ]
        self.keys = sorted({k for s in self.sessions for k in s.keys} | set(shared))
        self.keys += sorted({k for ks in self.idempotent_keys for k in ks} - set(self.keys))

    def clients(self) -> list[Coroutine[Any, Any, None]]:
        runs = [self.session_client(s) for s in self.sessions]
        runs += [self.idempotent_client(f"id{c}", k) for c, k in enumerate(self.idempotent_keys)]
        return runs

    # -- observation ------------------------------------------------------------

    def on_local_write(
        self, op: int, node: str, key: bytes, before: Record | None, new: NewWrite
    ) -> None:
        """A replica asked to mint one of these writes (check 1)."""
        tracked = self.writes.get(op)
        if tracked is None:
            return
        sim = self.sim
        if not new.applied:
            sim.count("idempotent_replayed")
            return
        written = new.written
        if tracked.copies:
            sim.count("idempotent_copies")
            full = before is not None and len(before.idempotency) >= IDEMPOTENCY_ENTRIES_MAX
            held = set() if before is None else {(s.node, s.counter) for s in before.siblings}
            again = [c for c in tracked.copies if (c[1], c[2]) in held]
            if again and not full:
                sim.fail(
                    f"t={sim.loop.time():.6f}s {node} applied idempotent op {op} of {key!r} "
                    f"again (dot {(written.node, written.counter)}) although its record held "
                    f"the copy {again[0][1:]}"
                )
        tracked.copies.append((written.timestamp, written.node, written.counter))

    def track(self, op: int, key: bytes, value: bytes, context: Context) -> Tracked:
        tracked = Tracked(op, key, value)
        self.writes[op] = tracked
        self.by_key.setdefault(key, []).append(tracked)
        self.values.setdefault(key, set()).add(value)
        # The causal model hears every mint (dot reuse is checked there); it needs
        # the write to name it, but never checks a read of these keys.
        self.sim.model.writes[op] = Write(op, key, value, context.clock)
        return tracked

    def check_values(self, key: bytes, values: list[bytes], where: str) -> None:
        """Check 2: each value shown once, and written."""
        known = self.values.get(key, set())
        for value in sorted(set(values)):
            if values.count(value) > 1:
                self.sim.fail(f"{where}: {key!r} shows {value!r} {values.count(value)} times")
            if value not in known:
                self.sim.fail(f"{where}: {key!r} shows {value!r}, which no client wrote")

    # -- calls ------------------------------------------------------------------

    def take_op(self) -> bool:
        if self.sim.safety_over or self.ops_left <= 0:
            return False
        self.ops_left -= 1
        return True

    async def idle(self) -> None:
        await asyncio.sleep(self.rng.uniform(0.005, 0.06) * self.sim.idle_scale)

    def pick(self, avoid: str | None) -> str | None:
        live = [n for n in self.sim.cluster.live() if n != avoid]
        return self.rng.choice(live) if live else None

    def _stamp(self, context: Context) -> int | None:
        return context.max_timestamp if self.sim.config.policy is ConflictPolicy.LWW else None

    def _saw(self, session: _Session, key: bytes, context: Context) -> None:
        """Fold an answer's context into the token (as the HTTP layer does) and the seen."""
        hashed = session_key_hash(key)
        session.token = observe(session.token, hashed, context.clock, context.max_timestamp)
        session.seen[key] = _join(session.seen.get(key, EMPTY_CONTEXT), context)

    async def _write(self, op: int, node: str, coro: Any) -> tuple[bool, Any]:
        """Run one write call on ``node`` as ``op`` (so its mints are attributed)."""
        token = current_op.set(op)
        try:
            return await self.sim.on_node(node, coro)
        finally:
            current_op.reset(token)

    async def session_read(self, session: _Session, key: bytes, node: str) -> bool:
        sim = self.sim
        coordinator = sim.cluster.nodes[node].coordinator
        ok, result = await sim.on_node(node, coordinator.read_session(key, session.token))
        shown = result.values if ok else result
        sim.loop.trace.record(f"{sim.loop.time():.9f} session {session.name} read {key!r} {shown}")
        sim.count(f"session_read_{'ok' if ok else 'failed'}")
        if not ok:
            return False
        context: Context = result.context
        self.check_values(key, result.values, f"t={sim.loop.time():.6f}s {session.name} via {node}")
        self._saw(session, key, context)
        settled = self._settled(key, context)
        sim.count("session_read_settled" if settled else "session_read_unsettled")
        stamp = self._stamp(context)
        read = SessionOp(session.name, key, SessionKind.READ, context.clock, None, stamp)
        self.history.append(read if settled else replace(read, settled=False))
        return True

    def _settled(self, key: bytes, context: Context) -> bool:
        """Did a quorum of the key's replicas hold the read's version durably (god's
        eye: their synced records), so every later quorum read must see it?"""
        cluster = self.sim.cluster
        partition, replicas = cluster.replicas_of(key)
        entry = SessionEntry(session_key_hash(key), context.clock, context.max_timestamp)
        policy = self.sim.config.policy
        holders = sum(
            satisfies(cluster.nodes[n].storage.durable.get((partition, key)), entry, policy)
            for n in replicas
            if n not in cluster.gone
        )
        return holders >= Consistency.QUORUM.required(len(replicas))

    async def session_write(self, session: _Session, key: bytes, node: str) -> bool:
        sim = self.sim
        op = sim.new_op()
        value = b"e%d" % op
        sent = session.seen.get(key, EMPTY_CONTEXT)
        tracked = self.track(op, key, value, sent)
        coordinator = sim.cluster.nodes[node].coordinator
        write = coordinator.write(key, value, Consistency.QUORUM, 0, sent, session=session.token)
        ok, result = await self._write(op, node, write)
        outcome = "ok" if ok else result
        sim.loop.trace.record(
            f"{sim.loop.time():.9f} session {session.name} write {op} {key!r} {outcome}"
        )
        sim.count(f"session_write_{'ok' if ok else 'failed'}")
        if not ok:
            self.history.append(
                SessionOp(session.name, key, SessionKind.WRITE, sent.clock, ok=False)
            )
            return False
        returned: Context = result
        dot = added_dot(sent.clock, returned.clock)
        if dot is None:
            sim.fail(f"{session.name} via {node}: write {op} of {key!r} answered {returned!r}")
            return False
        tracked.ok = True
        self._saw(session, key, returned)
        session.last_writer = node
        self.history.append(
            SessionOp(session.name, key, SessionKind.WRITE, sent.clock, dot, self._stamp(returned))
        )
        return True

    async def session_client(self, session: _Session) -> None:
        """Session writes, each read back at once through another node; session reads
        through a node other than the last one written through."""
        while self.take_op():
            key = self.rng.choice(session.keys)
            if self.rng.random() < SESSION_WRITE_P:
                writer = self.pick(None)
                if writer is not None and await self.session_write(session, key, writer):
                    reader = self.pick(writer)
                    if reader is not None and self.take_op():
                        await self.session_read(session, key, reader)
            else:
                reader = self.pick(session.last_writer)
                if reader is not None:
                    await self.session_read(session, key, reader)
            await self.idle()

    async def idempotent_client(self, name: str, keys: list[bytes]) -> None:
        """Read at quorum, then an idempotent put on that context, retried elsewhere."""
        sim = self.sim
        while self.take_op():
            key = self.rng.choice(keys)
            node = self.pick(None)
            if node is not None:
                coordinator = sim.cluster.nodes[node].coordinator
                ok, result = await sim.on_node(node, coordinator.read(key, Consistency.QUORUM))
                sim.count(f"idempotent_read_{'ok' if ok else 'failed'}")
                if ok:
                    where = f"t={sim.loop.time():.6f}s {name} read via {node}"
                    self.check_values(key, result.values, where)
                    await self.idempotent_write(name, key, result.context)
            await self.idle()

    async def idempotent_write(self, name: str, key: bytes, context: Context) -> None:
        sim = self.sim
        op = sim.new_op()
        value = b"i%d" % op
        key_hash = idempotency_hash(b"%s-%d" % (name.encode(), op))
        tracked = self.track(op, key, value, context)
        sim.count("idempotent_writes")
        node: str | None = None
        lost_answer = False
        for attempt in range(1 + RETRIES_MAX):
            node = self.pick(node)
            if node is None:
                return
            if attempt:
                sim.count("idempotent_retries")
            coordinator = sim.cluster.nodes[node].coordinator
            write = coordinator.write(
                key, value, Consistency.QUORUM, 0, context, idempotency_hash=key_hash
            )
            ok, result = await self._write(op, node, write)
            outcome = "ok" if ok else result
            sim.loop.trace.record(
                f"{sim.loop.time():.9f} idempotent {name} {op}#{attempt} {key!r} via {node} "
                f"{outcome}"
            )
            sim.count(f"idempotent_attempt_{'ok' if ok else result}")
            if not ok:
                continue
            tracked.ok = True
            self._check_answer(tracked, result, f"{name} via {node} attempt {attempt}")
            if lost_answer or self.rng.random() >= LOST_ANSWER_P:
                return
            lost_answer = True
            sim.count("idempotent_lost_answers")

    def _check_answer(self, tracked: Tracked, returned: Context, where: str) -> None:
        if not any(covers(returned.clock, node, counter) for _, node, counter in tracked.copies):
            self.sim.fail(
                f"{where}: the answer to op {tracked.op} of {tracked.key!r} names none of its "
                f"copies {tracked.copies}: {returned!r}"
            )

    # -- after healing ------------------------------------------------------------

    async def finish(self) -> None:
        """Converge, read every session's keys through every node, run the checks."""
        sim = self.sim
        if sim.config.converge == "reads":
            for key in self.keys:
                for node in sim.cluster.running():
                    await self._read_all(key, node)
        if await self._converged():
            for session in self.sessions:
                for key in session.keys:
                    for node in sim.cluster.running():
                        await self._final_session_read(session, key, node)
            self.check_records()
        self.check_history()

    async def _final_session_read(self, session: _Session, key: bytes, node: str) -> None:
        for _attempt in range(FINAL_ATTEMPTS):
            if await self.session_read(session, key, node):
                return
        self.sim.fail(f"after healing, a session read of {key!r} via {node} kept failing")

    async def _read_all(self, key: bytes, node: str) -> None:
        sim = self.sim
        coordinator = sim.cluster.nodes[node].coordinator
        for _attempt in range(FINAL_ATTEMPTS):
            ok, result = await sim.on_node(node, coordinator.read(key, Consistency.ALL))
            if ok:
                self.check_values(key, result.values, f"after healing, via {node}")
                return
        sim.fail(f"after healing, an `all` read of {key!r} via {node} kept failing")

    async def _converged(self) -> bool:
        sim = self.sim
        started = sim.loop.time()
        while liveness.replicas_differ(sim, self.keys):
            if sim.loop.time() - started >= CONVERGE_S:
                for key, records in liveness.replicas_differ(sim, self.keys).items():
                    sim.fail(f"replicas of {key!r} did not converge after healing: {records!r}")
                return False
            await asyncio.sleep(POLL_S)
        return True

    def check_records(self) -> None:
        """Checks 2 and 3 on each key's converged record."""
        sim = self.sim
        lww = sim.config.policy is ConflictPolicy.LWW
        for key in self.keys:
            partition, replicas = sim.cluster.replicas_of(key)
            holder = next(n for n in replicas if n not in sim.cluster.gone)
            node = sim.cluster.nodes[holder]
            record = node.replica.read(partition, key)
            values = [] if record is None else record.visible_values(node.clock.now_ms())
            self.check_values(key, values, f"stored on {holder} after healing")
            for tracked in self.by_key.get(key, []):
                if not tracked.ok:
                    continue
                if record is not None and any(
                    covers(record.clock(), n, c) for _, n, c in tracked.copies
                ):
                    continue
                if lww and record is not None:
                    winner = record.siblings[0].order_key()
                    if any(winner > copy for copy in tracked.copies):
                        continue
                sim.fail(
                    f"acknowledged op {tracked.op} ({tracked.value!r}) of {key!r} is not in "
                    f"its converged record on {holder}: {record!r}"
                )

    def check_history(self) -> None:
        sim = self.sim
        report = check_sessions(self.history)
        sim.stats["session_operations"] = report.operations
        sim.stats["session_violations"] = len(report.violations)
        for violation in report.violations[:VIOLATIONS_SHOWN]:
            sim.fail(f"session guarantee broken: {violation.explain()}")

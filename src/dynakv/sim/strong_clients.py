"""Strong and conditional clients of a simulation run, and their linearizability check.

``STRONG_CLIENTS`` concurrent clients share ``STRONG_KEYS`` keys and call the
real ``StrongPath`` of a random live node: ``strong`` get, put and delete,
``If-Match`` put and delete on the last ETag the client saw for the key,
and ``If-None-Match: *`` creates. Every value is unique (``s<op>``). Each
operation is recorded as a ``linearizability.Operation`` with its invocation
and response in virtual nanoseconds, mapped as HTTP would answer it:

    success                         OK (a get: its one value or absent, its ETag;
                                    a put or create: the new ETag)
    PreconditionFailed (412)        PRECONDITION_FAILED with the current ETag
                                    (``ABSENT_ETAG`` when the key has no value)
    OutcomeUnknown (504), or the    a write: UNKNOWN (it may take effect at any
    coordinator crashed under it    later time, or never); a get: dropped
    any other 503                   dropped: the strong path promises nothing
                                    was applied (lwt: Unavailable, Contended)

After healing, every node reads every strong key (the final reads join the
history; one that keeps failing is a liveness failure). Then each key's
history goes to ``linearizability.check_history``; a violation, or a search
past its budget, fails the run with the checker's explanation. Also checked
as the run goes: a strong operation answers within ``LATENCY_MS_MAX``
virtual ms (a minority never hangs), a get shows at most one value, a
successful put carries an ETag, and no error outside the table appears.

Must never: judge an operation by anything but what its client saw, or let
the order of a dict or set reach the trace.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from dynakv.core.etag import Condition, IfAbsent, IfMatch
from dynakv.errors import DynakvError, OutcomeUnknown, PreconditionFailed
from dynakv.sim.linearizability import (
    ABSENT_ETAG,
    Kind,
    Operation,
    Report,
    Status,
    Verdict,
    check_history,
)

if TYPE_CHECKING:
    from dynakv.sim.workload import Simulation

STRONG_CLIENTS: Final = 3
STRONG_KEYS: Final = 3
# The request deadline (200 ms) plus one fsync and a retry's sleep cut short.
LATENCY_MS_MAX: Final = 400
CHECK_STEPS_MAX: Final = 2_000_000
FINAL_READ_ATTEMPTS: Final = 3
_CONDITIONS: Final = {Kind.CAS_PUT, Kind.CAS_DELETE, Kind.CREATE}


def strong_keys() -> list[bytes]:
    return [b"s-%d" % i for i in range(STRONG_KEYS)]


@dataclass
class StrongHistory:
    """Every strong operation a client saw, in the order they returned."""

    operations: list[Operation] = field(default_factory=list)
    by_status: dict[str, int] = field(default_factory=dict)

    def add(self, operation: Operation) -> None:
        self.operations.append(operation)
        name = f"strong_{operation.kind.value}_{operation.status.value}"
        self.by_status[name] = self.by_status.get(name, 0) + 1

    def count(self, name: str) -> None:
        self.by_status[name] = self.by_status.get(name, 0) + 1


def _now_ns(sim: Simulation) -> int:
    return round(sim.loop.time() * 1e9)


def _choose(sim: Simulation, etag: str | None) -> Kind:
    """The next operation: reads, blind writes and conditional writes, about evenly."""
    roll = sim.rng.random()
    if roll < 0.35:
        return Kind.GET
    if roll < 0.5:
        return Kind.PUT
    if roll < 0.57:
        return Kind.DELETE
    if roll < 0.85:
        return Kind.CAS_PUT if etag is not None else Kind.CREATE
    if roll < 0.9:
        return Kind.CAS_DELETE if etag is not None else Kind.GET
    return Kind.CREATE


async def strong_client(sim: Simulation, name: str, keys: list[bytes]) -> None:
    """One sequential client: each operation on a random key through a random live node."""
    seen: dict[bytes, str | None] = {}  # the last ETag this client saw per key
    while sim.take_op():
        key = sim.rng.choice(keys)
        node = sim.pick_node()
        if node is None:
            await sim.idle()
            continue
        etag = seen.get(key)
        kind = _choose(sim, etag)
        value = b"s%d" % sim.new_op() if kind in (Kind.PUT, Kind.CAS_PUT, Kind.CREATE) else None
        expected = etag if kind in (Kind.CAS_PUT, Kind.CAS_DELETE) else None
        operation = await strong_call(sim, name, key, node, kind, value, expected)
        if operation is not None and operation.status is not Status.UNKNOWN:
            seen[key] = None if operation.etag == ABSENT_ETAG else operation.etag
        await sim.idle()


async def strong_call(
    sim: Simulation,
    client: str,
    key: bytes,
    node: str,
    kind: Kind,
    value: bytes | None,
    expected: str | None,
) -> Operation | None:
    """Run one strong operation on ``node``; record and return what the client saw
    (None: it tells nothing, a failed read or a write refused for sure)."""
    path = sim.cluster.nodes[node].strong
    coro: Any
    if kind is Kind.GET:
        coro = path.read(key)
    else:
        condition: Condition | None = None
        if kind is Kind.CREATE:
            condition = IfAbsent()
        elif expected is not None:
            condition = IfMatch(expected)
        coro = path.write(key, value, condition=condition, ttl_s=0)
    invoke_ns = _now_ns(sim)
    task = sim.cluster.network.spawn(node, coro)
    await asyncio.wait({task})
    return_ns = _now_ns(sim)
    base = Operation(client, key, kind, invoke_ns, None, Status.UNKNOWN, value, expected)
    operation = _outcome(sim, base, task, return_ns, f"{client} via {node}")
    outcome = "-" if operation is None else operation.status.value
    etag = "" if operation is None or operation.etag is None else f" {operation.etag}"
    sim.loop.trace.record(
        f"{sim.loop.time():.9f} strong {client} {kind.value} {key!r} {value!r} {outcome}{etag}"
    )
    if (return_ns - invoke_ns) / 1e6 > LATENCY_MS_MAX:
        sim.fail(
            f"{client} via {node}: strong {kind.value} of {key!r} took "
            f"{(return_ns - invoke_ns) / 1e6:.1f} ms (more than {LATENCY_MS_MAX})"
        )
    if operation is not None:
        sim.strong_history.add(operation)
    return operation


def _outcome(
    sim: Simulation, base: Operation, task: asyncio.Task[Any], return_ns: int, where: str
) -> Operation | None:
    """Map how the call ended to the checker's operation (the module's table)."""
    history = sim.strong_history
    kind, returned = base.kind, _returned(base, return_ns)
    if task.cancelled():  # the coordinator crashed under the call
        history.count("strong_coordinator_crashed")
        return None if kind is Kind.GET else base
    error = task.exception()
    if error is None:
        return _success(sim, returned, task.result(), where)
    if isinstance(error, PreconditionFailed):
        if kind not in _CONDITIONS:
            sim.fail(f"{where}: unconditional {kind.value} answered {error!r}")
            return None
        current = error.current_etag if error.current_etag is not None else ABSENT_ETAG
        return replace(returned, status=Status.PRECONDITION_FAILED, etag=current)
    if isinstance(error, DynakvError) and error.http_status == 503:
        history.count(f"strong_refused_{error.code}")
        return None
    if isinstance(error, OutcomeUnknown):
        return None if kind is Kind.GET else base
    sim.fail(f"{where}: strong {kind.value} of {base.key!r} raised {error!r}")
    return None


def _returned(base: Operation, return_ns: int) -> Operation:
    return replace(base, return_ns=return_ns, status=Status.OK)


def _success(sim: Simulation, returned: Operation, result: Any, where: str) -> Operation | None:
    if returned.kind is Kind.GET:
        values: list[bytes] = result.values
        if len(values) > 1:
            sim.fail(f"{where}: strong get of {returned.key!r} gave {len(values)} values")
            return None
        value = values[0] if values else None
        return replace(returned, value=value, etag=result.etag if value is not None else None)
    etag: str | None = result.etag
    if returned.kind in (Kind.DELETE, Kind.CAS_DELETE):
        if etag is not None:
            sim.fail(f"{where}: a strong delete of {returned.key!r} returned ETag {etag}")
        return replace(returned, etag=None)
    if etag is None:
        sim.fail(f"{where}: a strong {returned.kind.value} of {returned.key!r} gave no ETag")
        return None
    return replace(returned, etag=etag)


async def final_reads(sim: Simulation, keys: list[bytes]) -> None:
    """After healing: every node reads every strong key (liveness; the reads join the
    history, so they must show every acknowledged write)."""
    for key in keys:
        for node in sim.cluster.running():
            for _attempt in range(FINAL_READ_ATTEMPTS):
                operation = await strong_call(sim, "final", key, node, Kind.GET, None, None)
                if operation is not None:
                    break
                await asyncio.sleep(0.05)
            else:
                sim.fail(f"after healing, a strong read of {key!r} via {node} kept failing")


def check_linearizable(sim: Simulation) -> Report:
    """Each strong key's history must be linearizable; fail the run if not."""
    report = check_history(sim.strong_history.operations, steps_max=CHECK_STEPS_MAX)
    for check in report.keys:
        sim.stats[f"linearizability_steps_{check.key.decode()}"] = check.steps
        if check.verdict is not Verdict.OK:
            sim.fail(f"strong history not linearizable: {check.explain()}")
    return report

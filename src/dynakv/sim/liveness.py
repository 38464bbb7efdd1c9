"""The liveness phase of a simulation run: what must hold once the faults are healed.

Owns the checks that run after ``SimCluster.heal``: the ring spread to every
running node (``rings_agree``); every acknowledged write of an rmw key is
read back at quorum, from the newest ring's members (``acked_writes_survive``,
the check across join, leave and remove); every key read at ``all`` from every
running node, then every replica stores the same record
(``read_everything`` then ``replicas_differ``); or, with no read at all, the
replicas converge through anti-entropy alone, and what they converged to is
checked against the model as a read would be (``converged_by_anti_entropy``);
every member sees every member up (``membership_converges``); once the
hints drained (``hints_drain``), each replica's own record holds nothing
superseded (``check_every_replica``, before any read repairs it).

Every wait is bounded by a virtual deadline and polls a condition; a miss is
a failure of the run (with its replay command, via ``Simulation.fail``).
Must never: read through a coordinator in ``converged_by_anti_entropy`` (that
would repair what anti-entropy must), or sleep without a deadline.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from dynakv.core.consistency import Consistency
from dynakv.core.record import context_of
from dynakv.sim.causal_check import check_read

if TYPE_CHECKING:
    from dynakv.sim.workload import Simulation

# Past the detector's suspicion and refutation times (core.failure_detector).
MEMBERSHIP_CONVERGE_S: Final = 20.0
# Several walks of every (partition, peer) pair at the simulator's round interval.
ANTI_ENTROPY_CONVERGE_S: Final = 40.0
# A change left open by the safety phase finishes (barrier, drain, streams, commit).
RING_SETTLE_S: Final = 40.0
HINTS_DRAIN_S: Final = 10.0
POLL_S: Final = 0.1
READ_ATTEMPTS: Final = 3


async def rings_agree(sim: Simulation) -> None:
    """Within RING_SETTLE_S, the change left open (if any) ends and every running
    node installs the newest ring."""
    cluster = sim.cluster
    deadline = sim.loop.time() + RING_SETTLE_S
    while True:
        newest = cluster.current_ring().epoch
        epochs = {n: cluster.nodes[n].parts.ring.epoch for n in cluster.running()}
        open_changes = sorted(
            n for n in cluster.running() if cluster.nodes[n].changes.claimant.in_progress()
        )
        if not open_changes and all(epoch == newest for epoch in epochs.values()):
            sim.stats["ring_epoch_final"] = newest
            return
        if sim.loop.time() >= deadline:
            sim.fail(
                f"after healing, ring changes did not settle: epochs {epochs!r} "
                f"(newest {newest}), a change still open on {open_changes}"
            )
            return
        await asyncio.sleep(POLL_S)


async def acked_writes_survive(sim: Simulation, rmw: list[bytes]) -> None:
    """Read every rmw key at quorum through a member of the newest ring: the exact
    check fails if an acknowledged write is missing."""
    members = sim.cluster.members()
    for index, key in enumerate(rmw):
        node = members[index % len(members)]
        for _attempt in range(READ_ATTEMPTS):
            if await sim.read(key, node, Consistency.QUORUM, exact=True) is not None:
                break
        else:
            sim.fail(f"after healing, a quorum read of {key!r} via {node} kept failing")


async def read_everything(sim: Simulation, rmw: list[bytes], chaos: list[bytes]) -> None:
    """Read every key at ``all`` from every running node (read repair does the rest)."""
    for key in [*rmw, *chaos]:
        for node in sim.cluster.running():
            for _attempt in range(READ_ATTEMPTS):
                if await sim.read(key, node, Consistency.ALL, exact=key in rmw) is not None:
                    break
            else:
                sim.fail(f"after healing, an `all` read of {key!r} via {node} kept failing")


def replicas_differ(sim: Simulation, keys: list[bytes]) -> dict[bytes, dict[str, str]]:
    """The keys whose replicas (in the newest ring) store different records."""
    cluster, differing = sim.cluster, {}
    for key in keys:
        partition, replicas = cluster.replicas_of(key)
        records = {
            n: repr(cluster.nodes[n].replica.read(partition, key))
            for n in replicas
            if n not in cluster.gone
        }
        if len(set(records.values())) != 1:
            differing[key] = records
    return differing


def check_converged(sim: Simulation, keys: list[bytes]) -> None:
    for key, records in replicas_differ(sim, keys).items():
        sim.fail(f"replicas of {key!r} did not converge after healing: {records!r}")


async def converged_by_anti_entropy(sim: Simulation, rmw: list[bytes], chaos: list[bytes]) -> None:
    """No reads: wait until anti-entropy made every replica's record the same, then
    check that record as an ``all`` read would be checked (nothing lost, nothing
    superseded back)."""
    keys = [*rmw, *chaos]
    started = sim.loop.time()
    while replicas_differ(sim, keys):
        if sim.loop.time() - started >= ANTI_ENTROPY_CONVERGE_S:
            for key, records in replicas_differ(sim, keys).items():
                sim.fail(
                    f"anti-entropy alone did not converge the replicas of {key!r} within "
                    f"{ANTI_ENTROPY_CONVERGE_S:.0f} s: {records!r}"
                )
            return
        await asyncio.sleep(POLL_S)
    sim.stats["anti_entropy_converged_ms"] = int(1000 * (sim.loop.time() - started))
    for key in keys:
        partition, replicas = sim.cluster.replicas_of(key)
        node = sim.cluster.nodes[replicas[0]]
        record = node.replica.read(partition, key)
        values = [] if record is None else record.visible_values(node.clock.now_ms())
        where = f"t={sim.loop.time():.6f}s stored on {replicas[0]} after anti-entropy"
        check_read(sim, key, values, context_of(record), key in rmw, where)


async def hints_drain(sim: Simulation) -> None:
    """Wait (bounded) until no running node holds a hint for a running node."""
    cluster = sim.cluster
    started = sim.loop.time()
    while sim.loop.time() - started < HINTS_DRAIN_S:
        held = sum(
            stats.count
            for n in cluster.running()
            for owner, stats in cluster.nodes[n].storage.hint_summary().items()
            if owner in cluster.running()
        )
        if held == 0:
            sim.stats["hints_drained_ms"] = int(1000 * (sim.loop.time() - started))
            return
        await asyncio.sleep(POLL_S)
    sim.count("hints_not_drained")  # anti-entropy repairs what they hold


def check_every_replica(sim: Simulation, keys: list[bytes]) -> None:
    """Each replica's own record, before any read repairs it, as a read at ``one``
    would show it: every value was written, nothing superseded is back (a hint
    replayed, a record pushed by anti-entropy or streamed by a ring change that
    resurrected a deleted or overwritten value shows here)."""
    cluster = sim.cluster
    for key in keys:
        partition, replicas = cluster.replicas_of(key)
        for node_id in replicas:
            if node_id in cluster.gone:
                continue
            node = cluster.nodes[node_id]
            record = node.replica.read(partition, key)
            values = [] if record is None else record.visible_values(node.clock.now_ms())
            where = f"t={sim.loop.time():.6f}s stored on {node_id} after healing"
            check_read(sim, key, values, context_of(record), False, where)


async def membership_converges(sim: Simulation) -> None:
    """After healing, every running node sees every member up within the deadline."""
    cluster = sim.cluster
    deadline = sim.loop.time() + MEMBERSHIP_CONVERGE_S
    started = sim.loop.time()
    while True:
        members = cluster.members()
        views = {
            node_id: [cluster.nodes[node_id].membership.membership.state_of(m) for m in members]
            for node_id in cluster.running()
        }
        if all(view == ["up"] * len(members) for view in views.values()):
            sim.stats["membership_converged_ms"] = int(1000 * (sim.loop.time() - started))
            sim.stats["membership_changes"] = sum(
                cluster.nodes[n].membership.changes_total for n in cluster.running()
            )
            return
        if sim.loop.time() >= deadline:
            sim.fail(f"membership did not converge after healing: {views!r}")
            return
        await asyncio.sleep(POLL_S)

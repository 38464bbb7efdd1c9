"""The operator of a simulation run: a join, a leave and a remove during the workload.

With ``SimConfig.ring_changes``, the cluster starts with every node but the
last in the ring. While the clients run, this operator asks, in virtual
time, the last node to join; then a member to leave (it hands its partitions
off and retires); then kills another member for good and asks a survivor to
remove it. Each request goes through the node's real ``request_ring_change``
(the admin API's call) as work of that node, so a crash cancels it; a
request not accepted (busy, unavailable, the node crashed or paused) is
asked again after ``RETRY_S``; an accepted change is waited for until the
newest ring's epoch passes the one it started from, and asked again if the
claimant cancelled it instead (a receiver down too long, no source left for
a partition: what an operator would retry once the cluster is whole). Every step is bounded
by the safety phase: when it ends, the operator stops where it is, except
that a node it killed is still removed after healing (``finish_ring_changes``,
bounded by ``FINISH_S``).

What it proves is checked elsewhere: ``liveness.acked_writes_survive`` reads
every acknowledged write at quorum after the heal, and the causal checker
runs on every read made during the changes. Must never: ask for two
changes at once, or restart a node it killed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from dynakv.core.claim import ChangeKind
from dynakv.core.claimant import Accepted, ChangeState

if TYPE_CHECKING:
    from dynakv.sim.workload import Simulation

RETRY_S: Final = 0.25
COMMIT_WAIT_S: Final = 15.0
POLL_S: Final = 0.05
FIRST_CHANGE_AFTER_S: Final = 0.3
FINISH_S: Final = 30.0


async def ring_change_client(sim: Simulation) -> None:
    """Join the last node, then a leave, then a kill and a remove (in that order)."""
    cluster = sim.cluster
    await asyncio.sleep(FIRST_CHANGE_AFTER_S)
    joiner = cluster.node_ids[-1]
    if not await change(sim, "join", joiner, None):
        return
    leaver = sim.rng.choice([n for n in cluster.members() if n != joiner])
    if not await change(sim, "leave", leaver, None):
        return
    victim = sim.rng.choice([n for n in cluster.members() if n != leaver])
    cluster.kill(victim)
    sim.count("ring_change_kill")
    await change(sim, "remove", None, victim)


async def finish_ring_changes(sim: Simulation) -> None:
    """After healing: a node killed for good but still in the ring is removed (the
    operator's last step, cut short by the end of the safety phase), bounded."""
    cluster = sim.cluster
    dead = [n for n in sorted(cluster.gone) if cluster.current_ring().has_node(n)]
    if not dead:
        return
    deadline = sim.loop.time() + FINISH_S
    await change(sim, "remove", None, dead[0], going=lambda: sim.loop.time() < deadline)


async def change(
    sim: Simulation,
    kind: ChangeKind,
    via: str | None,
    target: str | None,
    going: Callable[[], bool] | None = None,
) -> bool:
    """Ask ``via`` (or any live member) for the change until it is accepted, then
    wait for its commit; False if ``going`` (default: the safety phase) ended first."""
    cluster = sim.cluster
    going = going or (lambda: not sim.safety_over)
    while going():
        node = via or _any_live_member(sim, exclude=target)
        if node is None or node not in cluster.live():
            await asyncio.sleep(RETRY_S)
            continue
        before = cluster.current_ring().epoch
        parts = cluster.nodes[node].parts
        task = cluster.network.spawn(node, parts.request_ring_change(kind, target))
        await asyncio.wait({task})
        outcome = None if task.cancelled() or task.exception() else task.result()
        sim.loop.trace.record(f"{sim.loop.time():.9f} ring {kind} via {node}: {outcome!r}")
        if isinstance(outcome, Accepted):
            sim.count(f"ring_change_{kind}_accepted")
            settled = await _settled(sim, before, going)
            if settled == "committed":
                sim.count(f"ring_change_{kind}_committed")
                return True
            if settled != "cancelled":
                return False
            sim.count(f"ring_change_{kind}_cancelled")
        sim.count(f"ring_change_{kind}_retried")
        await asyncio.sleep(RETRY_S)
    return False


def _any_live_member(sim: Simulation, exclude: str | None) -> str | None:
    live = [n for n in sim.cluster.members() if n in sim.cluster.live() and n != exclude]
    return sim.rng.choice(live) if live else None


async def _settled(sim: Simulation, before: int, going: Callable[[], bool]) -> str:
    """Wait (bounded) until some node installed a ring newer than ``before``
    ("committed"), or a running node learned the change cancelled ("cancelled");
    else "pending"."""
    deadline = sim.loop.time() + COMMIT_WAIT_S
    while True:
        if sim.cluster.current_ring().epoch > before:
            return "committed"
        if _cancelled(sim, before):
            return "cancelled"
        if sim.loop.time() >= deadline or not going():
            return "pending"
        await asyncio.sleep(POLL_S)


def _cancelled(sim: Simulation, before: int) -> bool:
    """Has a running node learned the change from epoch ``before`` cancelled?"""
    for node_id in sim.cluster.running():
        learned = sim.cluster.nodes[node_id].changes.claimant.register.learned
        if learned is None or learned.old_epoch != before:
            continue
        if learned.state is ChangeState.CANCELLED:
            return True
    return False

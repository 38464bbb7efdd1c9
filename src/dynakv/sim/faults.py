"""The fault schedule of a simulation run (unless ``SimConfig.faults`` is off).

Per run: a loss rate and a duplication rate; then every 50-400 virtual ms
(times the run's pacing, ``Simulation.idle_scale``) one of: a crash or
restart (at most one node down at a time, nodes gone for good aside; a
third of the crashes bounce back within 1-30 ms), a pause or resume, a
partition of one node (both ways, or one way: it cannot hear the others),
or a heal. Each fault is counted in the run's stats. Every choice comes from
the run's ``random.Random``, in a fixed order, so one seed gives one
schedule. Must never: crash a second node while one is down, or restart a
node gone for good.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from dynakv.sim.workload import Simulation

FAULT_GAP_S: Final = (0.05, 0.4)


async def fault_schedule(sim: Simulation) -> None:
    """At most one node crashed at a time; pauses and partitions on top."""
    cluster, rng = sim.cluster, sim.rng
    if not sim.config.faults:
        return
    cluster.network.faults.loss_p = rng.choice([0.0, 0.01, 0.05])
    cluster.network.faults.duplicate_p = rng.choice([0.0, 0.02, 0.1])
    sim.stats["fault_loss_per_mille"] = round(1000 * cluster.network.faults.loss_p)
    while not sim.safety_over:
        await asyncio.sleep(rng.uniform(*FAULT_GAP_S) * sim.idle_scale)
        if sim.safety_over:
            return
        nodes = [n for n in cluster.node_ids if n not in cluster.gone]
        roll = rng.random()
        if roll < 0.35:
            crash_or_restart(sim)
        elif roll < 0.55:
            node = rng.choice(nodes)
            if cluster.network.is_paused(node):
                cluster.resume(node)
            elif node not in cluster.crashed:
                cluster.pause(node)
                sim.count("fault_pause")
        elif roll < 0.75:
            alone = rng.choice(nodes)
            others = [n for n in nodes if n != alone]
            if rng.random() < 0.3:
                cluster.partition(others, [alone], one_way=True)  # alone cannot hear
                sim.count("fault_partition_one_way")
            else:
                cluster.partition([alone], others)
                sim.count("fault_partition")
        else:
            cluster.network.heal()


def crash_or_restart(sim: Simulation) -> None:
    """Restart the crashed node, or crash one; a third of crashes are bounces (the
    process is back within 1-30 ms, inside the round trips it interrupted)."""
    cluster, rng = sim.cluster, sim.rng
    if cluster.crashed - cluster.gone:
        cluster.restart(sorted(cluster.crashed - cluster.gone)[0])
        return
    node = rng.choice([n for n in cluster.node_ids if n not in cluster.gone])
    cluster.crash(node)
    sim.count("fault_crash")
    if rng.random() < 1 / 3:
        sim.loop.call_later(rng.uniform(0.001, 0.03), bounce_back, sim, node)


def bounce_back(sim: Simulation, node: str) -> None:
    cluster = sim.cluster
    if node in cluster.crashed and node not in cluster.gone and not sim.safety_over:
        cluster.restart(node)
        sim.count("fault_bounce")

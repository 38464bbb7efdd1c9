"""At least 200 seeds under every fault, weak and strong clients together.

Each seed runs the whole workload (read-modify-write and chaos clients at
one/quorum/all, strong and conditional clients, session clients and
idempotent writers with their retries) through crashes, bounces,
pauses, partitions (both ways and one way), loss and duplication, then
heals; every checker runs, the linearizability and session checkers included; the nodes
run everything a real node runs (``node.assembly``). The seeds are cut into
chunks so pytest shows progress. Then 20 seeds of each variant: convergence
by anti-entropy alone, and a join, leave and remove during the workload. Speed is measured by
bench/sim_speed.py, never asserted here.
"""

from __future__ import annotations

import pytest

from dynakv.core.record import ConflictPolicy
from dynakv.sim.workload import SimConfig, run_seed

SEEDS = 240
CHUNK = 30
OPS = 200
FAULT_STATS = (
    "fault_crash",
    "fault_bounce",
    "fault_pause",
    "fault_partition",
    "fault_partition_one_way",
)


@pytest.mark.parametrize("first", range(0, SEEDS, CHUNK))
def test_every_seed_passes_every_checker_under_faults(first: int) -> None:
    # Alternate chunks between the policies: both see 120 seeds.
    policy = list(ConflictPolicy)[(first // CHUNK) % 2]
    failures: list[str] = []
    ops = strong = session = retries = 0
    faults = dict.fromkeys(FAULT_STATS, 0)
    hashes = {}
    for seed in range(first, first + CHUNK):
        result = run_seed(SimConfig(seed=seed, ops=OPS, policy=policy))
        hashes[seed] = result.trace_hash
        failures += result.failures
        ops += result.ops_done
        strong += result.stats["strong_operations"]
        session += result.stats["session_operations"]
        retries += result.stats.get("idempotent_retries", 0)
        for name in FAULT_STATS:
            faults[name] += result.stats.get(name, 0)
        assert result.virtual_s < 30 + 20, (seed, result.virtual_s)
    assert not failures, "\n".join(failures[:10])
    assert ops >= CHUNK * OPS * 0.9, ops
    # The strong clients ran, and every kind of fault happened in the chunk.
    assert strong >= CHUNK * OPS // 5, strong
    # The session and idempotent clients ran beside them (half as many ops), and
    # idempotent writes were retried through other nodes.
    assert session >= CHUNK * OPS // 4, session
    assert retries >= CHUNK, retries
    assert all(count > 0 for count in faults.values()), faults
    # One seed, one trace: the chunk's first seed again, strong history and all.
    again = run_seed(SimConfig(seed=first, ops=OPS, policy=policy))
    assert again.trace_hash == hashes[first]
    assert len(set(hashes.values())) == CHUNK


VARIANT_SEEDS = 20
VARIANTS = {
    "anti-entropy": {"converge": "anti-entropy"},
    "ring-changes": {"nodes": 5, "ring_changes": True},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_seed_passes_with_anti_entropy_alone_or_ring_changes(variant: str) -> None:
    """The two variants of the run (docs/simulation.md), both policies, every checker."""
    failures: list[str] = []
    for seed in range(VARIANT_SEEDS):
        policy = list(ConflictPolicy)[seed % 2]
        config = SimConfig(seed=seed, ops=OPS, policy=policy, **VARIANTS[variant])  # type: ignore[arg-type]
        result = run_seed(config)
        failures += result.failures
        if variant == "ring-changes":
            assert "ring_epoch_final" in result.stats, result.stats
        else:
            assert "anti_entropy_converged_ms" in result.stats, result.stats
    assert not failures, "\n".join(failures[:10])

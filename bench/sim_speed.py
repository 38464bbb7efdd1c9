"""How fast the simulator runs, in real time (a timing goal, never a test).

    .venv/bin/python bench/sim_speed.py [--seeds 40] [--ops 300] [--nodes 3]
                                        [--converge anti-entropy] [--ring-changes]

Runs seeds under both conflict policies (every fault on, weak and strong
clients together) and prints simulated operations per real second (and how
many of them were strong, each checked for linearizability at the end of its
run), virtual seconds per real second, and real (and CPU) seconds per seed; the
nodes run everything a real node runs (membership, hinted handoff,
anti-entropy, ring changes, the sweeper: ``node.assembly``); the goal
is at least 300 operations per real second on this kind of machine (the
figure the suite used to assert, moved here because these machines are
shared and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from dynakv.core.record import ConflictPolicy
from dynakv.sim.loop import VirtualLoop, run_simulation
from dynakv.sim.workload import SimConfig, run_seed

GOAL_OPS_PER_S = 300


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--converge", choices=("reads", "anti-entropy"), default="reads")
    parser.add_argument("--ring-changes", action="store_true")
    args = parser.parse_args()
    for policy in ConflictPolicy:
        started, cpu_started = time.perf_counter(), time.process_time()
        ops = strong = 0
        virtual_s = 0.0
        for seed in range(args.seeds):
            config = SimConfig(
                seed=seed,
                ops=args.ops,
                policy=policy,
                nodes=args.nodes,
                converge=args.converge,
                ring_changes=args.ring_changes,
            )
            result = run_seed(config)
            ops += result.ops_done
            strong += result.stats.get("strong_operations", 0)
            virtual_s += result.virtual_s
        elapsed_s = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
        verdict = "ok" if ops / elapsed_s >= GOAL_OPS_PER_S else "BELOW GOAL"
        print(
            f"{policy.value}: {args.seeds} seeds, {ops} ops ({strong} strong) in "
            f"{elapsed_s:.1f} s real: {ops / elapsed_s:.0f} ops/s ({verdict}, goal "
            f"{GOAL_OPS_PER_S}), {virtual_s / elapsed_s:.0f} virtual s per real s, "
            f"{elapsed_s / args.seeds:.3f} s per seed ({cpu_s / args.seeds:.3f} s CPU)"
        )

    async def idle_hour(loop: VirtualLoop) -> float:
        await asyncio.sleep(3600)
        return loop.time()

    started = time.perf_counter()
    run_simulation(idle_hour, time_s_max=7200)
    print(f"an idle virtual hour took {1000 * (time.perf_counter() - started):.1f} ms real")


if __name__ == "__main__":
    main()

"""How much data one join moves, at scale: ``python -m dynakv.sim.claim_scale``.

Builds the ring of n nodes in three zones (``core.claim.build_ring``), plans a
join of one more node (``plan_join``), and prints the fraction of replica
slots it moves (ideal: about 1/(n+1)), the joiner's share of primaries, the
replica-load spread within each zone, and how long building and planning
took. Pure computation: no network, no randomness; bounded by the sizes asked.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from dynakv.core.claim import build_ring, plan_join
from dynakv.core.ring import Ring, RingNode

ZONES = 3


def nodes_of(count: int) -> list[RingNode]:
    return [RingNode(f"n{i:04d}", f"z{i % ZONES}") for i in range(count)]


def zone_spread(ring: Ring) -> float:
    """The largest max/min ratio of preference-list slots between nodes of one zone."""
    load: Counter[str] = Counter()
    for partition in range(ring.partition_count):
        load.update(ring.preference_list(partition))
    worst = 1.0
    for zone in sorted({node.zone for node in ring.nodes}):
        counts = [load[node.node_id] for node in ring.nodes if node.zone == zone]
        worst = max(worst, max(counts) / max(1, min(counts)))
    return worst


def measure(count: int, partitions: int, replicas: int) -> dict[str, float]:
    started = time.perf_counter()
    ring = build_ring(nodes_of(count), partitions, replicas)
    built_s = time.perf_counter() - started
    joiner = RingNode(f"n{count:04d}", f"z{count % ZONES}")
    started = time.perf_counter()
    change = plan_join(ring, joiner)
    planned_s = time.perf_counter() - started
    return {
        "nodes": count,
        "moved_fraction": change.moved_fraction(),
        "ideal": 1 / (count + 1),
        "joiner_primaries": len(change.new.partitions_of(joiner.node_id)),
        "zone_spread": zone_spread(change.new),
        "build_s": built_s,
        "plan_s": planned_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--partitions", type=int, default=1024)
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args(argv)
    print("nodes  moved   1/(n+1)  joiner primaries  zone spread  build s  plan s")
    for count in args.nodes:
        if not 1 <= count <= args.partitions:
            parser.error(f"--nodes must be within 1..{args.partitions}")
        row = measure(count, args.partitions, args.replicas)
        print(
            f"{count:5d}  {row['moved_fraction']:.4f}  {row['ideal']:.4f}  "
            f"{int(row['joiner_primaries']):16d}  {row['zone_spread']:11.3f}  "
            f"{row['build_s']:7.2f}  {row['plan_s']:6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m dynakv.sim``: run one seed (or ``--seeds K`` seeds from ``--seed``).

Prints each run's trace hash and verdict, and every failure with the command
that replays it; exits 1 if any run failed. Owns no simulation logic.
"""

from __future__ import annotations

import argparse
import sys
import time

from dynakv.core.record import ConflictPolicy
from dynakv.sim.cluster import BUGS
from dynakv.sim.workload import SimConfig, run_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynakv.sim", description=__doc__)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--seeds", type=int, default=1, help="run this many seeds from --seed")
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--policy", choices=[p.value for p in ConflictPolicy], default="lww")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument(
        "--bug", choices=BUGS, default=None, help="plant a known bug (to see the checkers fail)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print run statistics")
    args = parser.parse_args(argv)
    failed = 0
    for seed in range(args.seed, args.seed + args.seeds):
        config = SimConfig(
            seed=seed,
            ops=args.ops,
            policy=ConflictPolicy(args.policy),
            nodes=args.nodes,
            bug=args.bug,
        )
        started = time.perf_counter()
        result = run_seed(config)
        elapsed_s = time.perf_counter() - started
        verdict = "ok" if result.ok else "FAILED"
        print(
            f"seed {seed} policy {args.policy} ops {result.ops_done} "
            f"virtual {result.virtual_s:.3f}s real {elapsed_s:.3f}s "
            f"trace {result.trace_hash} {verdict}"
        )
        if args.verbose:
            print(f"  stats {result.stats}")
        for failure in result.failures:
            print(f"  {failure}")
        failed += not result.ok
    if args.seeds > 1:
        print(f"{args.seeds - failed}/{args.seeds} seeds passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

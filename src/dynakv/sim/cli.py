"""``dynakv sim`` (and ``python -m dynakv.sim``): run simulation seeds from the command line.

    dynakv sim --seed S [--seeds K] [--ops N] [--nodes N] [--faults/--no-faults]
               [--policy lww|siblings] [--converge reads|anti-entropy]
               [--ring-changes] [--sessions/--no-sessions] [--bug NAME] [-v] [-q]

Prints, per seed, its verdict and trace hash, and on a failure every failure
line and the command that replays it; then a summary (seeds passed,
operations, strong and session operations, idempotent writes and their
retries, faults injected, real time). Exits 1 if any seed failed. Owns no
simulation logic: ``workload.run_seed`` does the run.
"""

from __future__ import annotations

import time

import click

from dynakv.core.record import ConflictPolicy
from dynakv.sim.cluster import BUGS
from dynakv.sim.workload import CONVERGE_MODES, SimConfig, SimResult, run_seed

CLIENT_STATS = ("session_operations", "idempotent_writes", "idempotent_retries")
SUMMED_STATS = (
    "fault_crash",
    "fault_bounce",
    "fault_pause",
    "fault_partition",
    "fault_partition_one_way",
)


def _line(result: SimResult, elapsed_s: float) -> str:
    config = result.config
    verdict = "ok" if result.ok else "FAILED"
    strong = result.stats.get("strong_operations", 0)
    session = result.stats.get("session_operations", 0)
    return (
        f"seed {config.seed} policy {config.policy.value} nodes {config.nodes} "
        f"faults {'on' if config.faults else 'off'} ops {result.ops_done} "
        f"({strong} strong, {session} session) virtual {result.virtual_s:.3f}s "
        f"real {elapsed_s:.3f}s trace {result.trace_hash} {verdict}"
    )


@click.command(name="sim")
@click.option("--seed", type=int, required=True, help="The (first) seed to run.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--ops", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--nodes", type=click.IntRange(min=3, max=9), default=3, show_default=True)
@click.option(
    "--faults/--no-faults", default=True, show_default=True, help="Crashes, partitions, loss."
)
@click.option(
    "--policy",
    type=click.Choice([p.value for p in ConflictPolicy]),
    default="lww",
    show_default=True,
)
@click.option(
    "--converge",
    type=click.Choice(CONVERGE_MODES),
    default="reads",
    show_default=True,
    help="After healing: read every key at `all`, or (no reads, no handoff) wait for "
    "anti-entropy alone to converge the replicas.",
)
@click.option(
    "--ring-changes",
    is_flag=True,
    help="Start with the last node outside the ring; join it, then leave, kill and "
    "remove members during the workload (needs --nodes 5 or more).",
)
@click.option(
    "--sessions/--no-sessions",
    default=True,
    show_default=True,
    help="Session clients and idempotent writers, with their checks.",
)
@click.option("--bug", type=click.Choice(BUGS), default=None, help="Plant a known bug.")
@click.option("-v", "--verbose", is_flag=True, help="Print each run's statistics.")
@click.option("-q", "--quiet", is_flag=True, help="Print only failures and the summary.")
def sim_command(
    seed: int,
    seeds: int,
    ops: int,
    nodes: int,
    faults: bool,
    policy: str,
    converge: str,
    ring_changes: bool,
    sessions: bool,
    bug: str | None,
    verbose: bool,
    quiet: bool,
) -> None:
    """Run the deterministic simulator: a whole cluster in virtual time, per seed."""
    if ring_changes and nodes < 5:
        raise click.BadParameter("--ring-changes needs --nodes 5 or more", param_hint="--nodes")
    if ring_changes and converge != "reads":
        raise click.BadParameter("one variant at a time", param_hint="--converge")
    failed = 0
    totals: dict[str, int] = dict.fromkeys(("ops", "strong", *CLIENT_STATS, *SUMMED_STATS), 0)
    started_all = time.perf_counter()
    for run in range(seed, seed + seeds):
        config = SimConfig(
            seed=run,
            ops=ops,
            policy=ConflictPolicy(policy),
            nodes=nodes,
            bug=bug,
            faults=faults,
            converge=converge,
            ring_changes=ring_changes,
            sessions=sessions,
        )
        started = time.perf_counter()
        result = run_seed(config)
        elapsed_s = time.perf_counter() - started
        totals["ops"] += result.ops_done
        totals["strong"] += result.stats.get("strong_operations", 0)
        for name in (*CLIENT_STATS, *SUMMED_STATS):
            totals[name] += result.stats.get(name, 0)
        if not quiet or not result.ok:
            click.echo(_line(result, elapsed_s))
        if verbose:
            click.echo(f"  stats {result.stats}")
        for failure in result.failures:
            click.echo(f"  {failure}")
        if not result.ok:
            click.echo(f"  replay: {config.replay()}")
        failed += not result.ok
    if seeds > 1 or quiet:
        faults_seen = ", ".join(f"{name[6:]} {totals[name]}" for name in SUMMED_STATS)
        click.echo(
            f"{seeds - failed}/{seeds} seeds passed; {totals['ops']} operations "
            f"({totals['strong']} strong, {totals['session_operations']} session; "
            f"{totals['idempotent_writes']} idempotent writes, "
            f"{totals['idempotent_retries']} retries); faults: {faults_seen}; "
            f"real {time.perf_counter() - started_all:.1f}s"
        )
    if failed:
        raise SystemExit(1)

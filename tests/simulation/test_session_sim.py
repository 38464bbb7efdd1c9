"""Session clients and idempotent writers in the simulator (``sim.session_clients``):
they run under faults and pass, and each new check is proved by a planted bug
it catches within a bounded number of seeds."""

from __future__ import annotations

import pytest

from dynakv.core.record import ConflictPolicy
from dynakv.sim.cluster import SESSION_BUGS
from dynakv.sim.workload import SimConfig, SimResult, run_seed

OPS = 300
BUG_SEEDS = 8
# What each planted bug must be caught by: the check it was planted to prove.
CAUGHT_BY = {
    "idempotency-forgets": "again (dot",
    "session-ignores-token": "session guarantee broken: read_your_writes",
}


def _sum(results: list[SimResult], name: str) -> int:
    return sum(result.stats.get(name, 0) for result in results)


@pytest.mark.parametrize("policy", list(ConflictPolicy))
def test_session_and_idempotent_clients_pass_under_faults(policy: ConflictPolicy) -> None:
    results = [run_seed(SimConfig(seed=seed, ops=OPS, policy=policy)) for seed in range(10)]
    failures = [failure for result in results for failure in result.failures]
    assert not failures, "\n".join(failures[:10])
    # The clients ran, and the paths the checks judge were taken: reads through a
    # node the write had not reached, unknown outcomes retried elsewhere, retries
    # answered from the idempotency entry, and copies minted where it was missing.
    assert _sum(results, "session_operations") >= 10 * 50
    assert _sum(results, "session_write_ok") >= 10 * 10
    assert _sum(results, "idempotent_writes") >= 10 * 15
    assert _sum(results, "idempotent_lost_answers") > 0
    assert _sum(results, "idempotent_replayed") > 0
    assert _sum(results, "idempotent_attempt_OutcomeUnknown") > 0
    assert _sum(results, "idempotent_copies") > 0
    assert all(result.stats["session_violations"] == 0 for result in results)


@pytest.mark.parametrize("policy", list(ConflictPolicy))
@pytest.mark.parametrize("bug", SESSION_BUGS)
def test_a_planted_session_or_idempotency_bug_is_caught(bug: str, policy: ConflictPolicy) -> None:
    caught = []
    for seed in range(BUG_SEEDS):
        result = run_seed(SimConfig(seed=seed, ops=OPS, policy=policy, bug=bug))
        if not result.ok:
            caught.append(result)
            if len(caught) == 2:
                break
    assert caught, f"planted bug {bug} under {policy} went unnoticed in {BUG_SEEDS} seeds"
    for result in caught:
        assert any(CAUGHT_BY[bug] in failure for failure in result.failures), result.failures
        for failure in result.failures:
            assert f"python -m dynakv.sim --seed {result.config.seed} " in failure
            assert f"--bug {bug}" in failure


def test_a_lost_acknowledged_write_is_caught_on_the_session_keys() -> None:
    """Check 3 (an acknowledged write is in the converged record), proved by a ring
    change that drops a partition before streaming it."""
    for seed in range(BUG_SEEDS):
        config = SimConfig(
            seed=seed,
            ops=OPS,
            policy=ConflictPolicy.SIBLINGS,
            nodes=5,
            ring_changes=True,
            bug="drop-before-commit",
        )
        failures = run_seed(config).failures
        if any("is not in its converged record" in failure for failure in failures):
            return
    pytest.fail(f"drop-before-commit lost no acknowledged session-key write in {BUG_SEEDS} seeds")


def test_without_the_clients_the_run_has_no_session_stats_and_replays_so() -> None:
    config = SimConfig(seed=3, ops=120, sessions=False)
    result = run_seed(config)
    assert result.ok, result.failures
    assert "session_operations" not in result.stats
    assert not any(name.startswith("idempotent_") for name in result.stats)
    assert config.replay().endswith("--nodes 3 --no-sessions")
    assert "--no-sessions" not in SimConfig(seed=3).replay()

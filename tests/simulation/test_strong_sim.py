"""Strong and conditional operations in the simulator: the real ``StrongPath`` and
``Acceptor`` on every node, histories checked for linearizability, bugs planted in
the strong path caught, and the simulated disk's crash model for Paxos state."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from dynakv.core.paxos import EMPTY_STATE, PxCommit, PxCommitted, encode_state
from dynakv.core.record import ConflictPolicy, Record, Sibling
from dynakv.node.replica import HLC_HIGH_WATER_META
from dynakv.sim.cluster import STRONG_BUGS, SimCluster
from dynakv.sim.disk import SimStorage
from dynakv.sim.linearizability import Kind, Operation, Report, Verdict, check_history
from dynakv.sim.loop import VirtualLoop, run_simulation
from dynakv.sim.workload import SimConfig, run_seed

OPS = 300
# Seeds to try before calling a planted bug unnoticed; each is caught far sooner
# (skipped reads: 28 of the first 30 seeds; forgotten promises: 9 of 40).
BUG_SEEDS = 40
CAUGHT_BUGS = ("strong-read-skips-paxos", "acceptor-forgets-promises")


def test_strong_clients_see_every_outcome_under_faults() -> None:
    """The history holds what the checker must weigh: successes of every kind, 412s,
    unknown outcomes and refusals (otherwise it would be checking nothing hard)."""
    stats: Counter[str] = Counter()
    for seed in range(12):
        result = run_seed(SimConfig(seed=seed, ops=OPS))
        assert result.ok, "\n".join(result.failures[:5])
        stats.update({k: v for k, v in result.stats.items() if k.startswith("strong_")})
    for kind in ("get", "put", "delete", "cas_put", "cas_delete", "create"):
        assert stats[f"strong_{kind}_ok"] > 0, (kind, stats)
    for kind in ("cas_put", "cas_delete", "create"):
        assert stats[f"strong_{kind}_precondition_failed"] > 0, (kind, stats)
    assert sum(v for k, v in stats.items() if k.endswith("_unknown")) > 0, stats
    assert sum(v for k, v in stats.items() if k.startswith("strong_refused_")) > 0, stats
    assert stats["strong_coordinator_crashed"] > 0, stats


def test_without_faults_every_strong_operation_has_a_definite_answer() -> None:
    for seed in range(5):
        result = run_seed(SimConfig(seed=seed, ops=OPS, faults=False))
        assert result.ok, "\n".join(result.failures[:5])
        assert not any(k.startswith("fault_") and k != "fault_loss_per_mille" for k in result.stats)
        unsure = [k for k in result.stats if k.endswith("_unknown") or "refused" in k]
        assert not unsure, result.stats


@pytest.mark.parametrize("policy", list(ConflictPolicy))
@pytest.mark.parametrize("bug", CAUGHT_BUGS)
def test_the_linearizability_checker_catches_a_planted_strong_bug(
    bug: str, policy: ConflictPolicy
) -> None:
    assert bug in STRONG_BUGS
    for seed in range(BUG_SEEDS):
        result = run_seed(SimConfig(seed=seed, ops=OPS, policy=policy, bug=bug))
        if not result.ok:
            break
    else:
        pytest.fail(f"planted bug {bug} under {policy} went unnoticed in {BUG_SEEDS} seeds")
    assert any("strong history not linearizable" in f for f in result.failures), result.failures
    for failure in result.failures:
        assert f"seed {seed}:" in failure and f"--seed {seed} " in failure
        assert f"--bug {bug}" in failure


def _forgotten_accept_scenario(bug: str | None) -> tuple[list[bytes], Report]:
    """n3 is cut off; a put through n1 is accepted by n1 and n2, and its commit to n2
    is answered without being delivered, so n2 holds the chosen value only as an
    accepted proposal. n2 restarts; n1 is cut off; n3 reads. A sound acceptor still
    reports the accepted value (the read finishes it); a forgetful one does not."""

    async def scenario(loop: VirtualLoop) -> tuple[list[bytes], Report]:
        cluster = SimCluster(loop, seed=1, bug=bug)
        network = cluster.network
        key = b"k"
        cluster.partition(["n3"], ["n1", "n2"])
        network.drop_filter = lambda src, dst, message: (
            PxCommitted(message.decree.ballot)
            if isinstance(message, PxCommit) and dst == "n2"
            else None
        )
        started = round(loop.time() * 1e9)
        written = await cluster.nodes["n1"].strong.write(key, b"v", condition=None, ttl_s=0)
        put_returned = round(loop.time() * 1e9)
        network.drop_filter = None
        await asyncio.sleep(0.05)  # every fsync done
        cluster.crash("n2")
        cluster.restart("n2")
        network.heal()
        cluster.partition(["n1"], ["n2", "n3"])
        read_started = round(loop.time() * 1e9)
        read = await cluster.nodes["n3"].strong.read(key)
        history = [
            Operation("a", key, Kind.PUT, started, put_returned, value=b"v", etag=written.etag),
            Operation(
                "b",
                key,
                Kind.GET,
                read_started,
                round(loop.time() * 1e9),
                value=read.values[0] if read.values else None,
                etag=read.etag,
            ),
        ]
        return read.values, check_history(history)

    result, _ = run_simulation(scenario)
    return result


def test_an_acceptor_that_forgets_its_state_on_restart_is_caught() -> None:
    values, report = _forgotten_accept_scenario(None)
    assert values == [b"v"] and report.ok, report.explain()
    assert "acceptor-forgets-on-restart" in STRONG_BUGS
    values, report = _forgotten_accept_scenario("acceptor-forgets-on-restart")
    assert values == [], "the forgetful acceptor hid the chosen value"
    assert report.verdict is Verdict.VIOLATION, report.explain()


def _record(value: bytes, counter: int) -> Record:
    sibling = Sibling(value=value, node="n1", counter=counter, past=(), timestamp=counter)
    return Record(siblings=(sibling,))


def test_the_simulated_disk_keeps_exactly_what_was_synced() -> None:
    storage = SimStorage()
    state = encode_state(EMPTY_STATE)
    storage.put_paxos(1, b"a", state, record=_record(b"x", 1))
    storage.put_meta("m", b"1")
    storage.sync()
    storage.put_paxos(1, b"b", state, record=_record(b"y", 2))  # never synced
    storage.put_meta("m", b"2")
    storage.delete_paxos(1, b"a")
    assert storage.get_paxos(1, b"a") is None and storage.get_meta("m") == b"2"
    after_crash = SimStorage(storage.image())
    assert after_crash.get_paxos(1, b"a") == state  # its delete was not synced
    assert after_crash.get(1, b"a") == _record(b"x", 1)
    assert after_crash.get_paxos(1, b"b") is None  # state and record: neither
    assert after_crash.get(1, b"b") is None
    assert after_crash.get_meta("m") == b"1"
    storage.sync()
    synced = SimStorage(storage.image())
    assert synced.get_paxos(1, b"a") is None and synced.get_paxos(1, b"b") == state
    assert synced.get(1, b"b") == _record(b"y", 2) and synced.get_meta("m") == b"2"


def test_a_restarted_node_resumes_its_clock_above_its_synced_high_water_mark() -> None:
    async def scenario(loop: VirtualLoop) -> tuple[int, int, bytes | None]:
        cluster = SimCluster(loop, seed=5)
        node = cluster.nodes["n1"]
        node.replica.tick(node.clock.now_ms())
        mark = node.replica.hlc_high_water_ms
        await node.replica.durable()
        cluster.crash("n1")
        cluster.restart("n1")
        restarted = cluster.nodes["n1"]
        return (
            mark,
            restarted.replica.hlc_high_water_ms,
            restarted.storage.get_meta(HLC_HIGH_WATER_META),
        )

    (mark, resumed, stored), _ = run_simulation(scenario)
    assert mark > 0 and resumed == mark and stored == mark.to_bytes(8, "big")

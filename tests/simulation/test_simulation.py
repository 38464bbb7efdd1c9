"""The deterministic simulator: one seed is one trace, the network keeps the RPC
contract, and the checkers catch bugs planted through the simulator's own hooks.
(The 200+ seeds under faults are in test_many_seeds.py; strong operations and
the linearizability checker in test_strong_sim.py; the command in test_sim_cli.py.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from dynakv.core.record import ConflictPolicy
from dynakv.errors import InvalidRequest, PeerUnreachable, RemoteError, RpcTimeout
from dynakv.net.messages import Message, Ping, Pong
from dynakv.sim.cluster import WEAK_BUGS
from dynakv.sim.loop import SimDeadlock, VirtualLoop, run_simulation
from dynakv.sim.network import SimNetwork, SimPeers
from dynakv.sim.workload import SimConfig, run_seed

OPS = 200
BUG_SEEDS = 12


@pytest.mark.parametrize("policy", list(ConflictPolicy))
def test_five_nodes_with_forwarded_writes_pass(policy: ConflictPolicy) -> None:
    for seed in range(8):
        result = run_seed(SimConfig(seed=seed, ops=OPS, policy=policy, nodes=5))
        assert result.ok, "\n".join(result.failures[:10])


def test_same_seed_gives_the_same_trace_and_different_seeds_do_not() -> None:
    first = run_seed(SimConfig(seed=7, ops=OPS, policy=ConflictPolicy.SIBLINGS))
    again = run_seed(SimConfig(seed=7, ops=OPS, policy=ConflictPolicy.SIBLINGS))
    assert first.trace_hash == again.trace_hash
    assert first.stats == again.stats
    hashes = {run_seed(SimConfig(seed=s, ops=50)).trace_hash for s in range(5)}
    assert len(hashes) == 5


@pytest.mark.parametrize("variant", [[], ["--ring-changes"], ["--converge", "anti-entropy"]])
def test_a_seed_replays_identically_in_other_processes(variant: list[str]) -> None:
    """str hashing differs per process: a run must not depend on it."""
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "dynakv.sim",
                "--seed",
                "3",
                "--ops",
                "150",
                "--nodes",
                "5",
                *variant,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        outputs.append(done.stdout.split("trace ")[1].split()[0])
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("policy", list(ConflictPolicy))
@pytest.mark.parametrize("bug", WEAK_BUGS)
def test_the_checkers_catch_a_planted_bug(bug: str, policy: ConflictPolicy) -> None:
    caught = []
    for seed in range(BUG_SEEDS):
        result = run_seed(SimConfig(seed=seed, ops=300, policy=policy, bug=bug))
        if not result.ok:
            caught.append(result)
            if len(caught) == 2:
                break
    assert caught, f"planted bug {bug} under {policy} went unnoticed in {BUG_SEEDS} seeds"
    for result in caught:
        for failure in result.failures:
            assert f"seed {result.config.seed}:" in failure
            assert f"python -m dynakv.sim --seed {result.config.seed} " in failure
            assert f"--bug {bug}" in failure
    if bug == "ack-before-sync":  # the crash must show as a lost acknowledged write
        assert any("acknowledged" in f and "is lost" in f for r in caught for f in r.failures)
    if bug == "deaf-gossip":
        assert all(any("membership did not converge" in f for f in r.failures) for r in caught)


def test_membership_is_driven_and_converges_after_crashes_pauses_and_partitions() -> None:
    changes = []
    for seed in range(6):
        result = run_seed(SimConfig(seed=seed, ops=400, policy=ConflictPolicy.LWW, nodes=5))
        assert result.ok, "\n".join(result.failures[:5])
        # Every node learned the other four (20 changes), and faults were noticed.
        assert result.stats["membership_changes"] >= 20, result.stats
        changes.append(result.stats["membership_changes"])
    assert max(changes) > 20, changes


def test_the_virtual_loop_jumps_idle_time_and_reports_a_deadlock() -> None:
    async def sleepy(loop: VirtualLoop) -> float:
        await asyncio.sleep(3600)
        return loop.time()

    result, loop = run_simulation(sleepy, time_s_max=7200)
    assert result == pytest.approx(3600)
    assert loop.iterations < 100, "an idle hour is a jump, not a wait"

    async def stuck(loop: VirtualLoop) -> None:
        await loop.create_future()

    with pytest.raises(SimDeadlock):
        run_simulation(stuck)


def test_the_network_keeps_the_rpc_error_contract() -> None:
    import random

    def handler(message: Message, sender: str) -> Message:
        if isinstance(message, Ping) and message.sender == "bad":
            raise InvalidRequest("refused", field="sender")
        return Pong(sender="b")

    async def scenario(loop: VirtualLoop) -> list[str]:
        network = SimNetwork(loop, random.Random(1))
        network.attach("a", handler)
        network.attach("b", handler)
        peers = SimPeers(network, "a")
        outcomes = [type(await peers.call("b", Ping(sender="a"), 100)).__name__]
        for setup, sender in (
            (lambda: network.crash("b"), "a"),
            (lambda: (network.attach("b", handler), network.partition(["a"], ["b"])), "a"),
            (network.heal, "bad"),
        ):
            setup()
            started = loop.time()
            try:
                await peers.call("b", Ping(sender=sender), 100)
            except (PeerUnreachable, RpcTimeout, RemoteError) as exc:
                outcomes.append(f"{type(exc).__name__}@{round(loop.time() - started, 3)}")
        return outcomes

    outcomes, _ = run_simulation(scenario)
    assert outcomes[0] == "Pong"
    assert outcomes[1] == "PeerUnreachable@0.0"
    assert outcomes[2] == "RpcTimeout@0.1"
    assert outcomes[3].startswith("RemoteError@")


def test_a_paused_node_times_callers_out_and_answers_after_resuming() -> None:
    import random

    seen: list[str] = []

    def handler(message: Message, sender: str) -> Message:
        assert isinstance(message, Ping)
        seen.append(message.sender)
        return Pong(sender="b")

    async def scenario(loop: VirtualLoop) -> tuple[str, list[str], str]:
        network = SimNetwork(loop, random.Random(2))
        network.attach("a", handler)
        network.attach("b", handler)
        peers = SimPeers(network, "a")
        network.pause("b")
        try:
            await peers.call("b", Ping(sender="held"), 50)
            first = "answered"
        except RpcTimeout:
            first = "RpcTimeout"
        before = list(seen)
        network.resume("b")
        reply = await peers.call("b", Ping(sender="after"), 50)
        assert isinstance(reply, Pong)
        return first, before, ",".join(seen)

    (first, before, after), _ = run_simulation(scenario)
    assert first == "RpcTimeout"
    assert before == []  # held, not delivered, while paused
    assert after == "held,after"  # delivered on resume; its late reply was dropped

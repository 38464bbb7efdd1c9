"""Gossip membership and failure detection between real node processes (issue 6):
5 nodes, N=3. Every node sees every other; a node paused with SIGSTOP is
`down` everywhere within the detection time and `up` again after SIGCONT, with
no flapping between; a process without the cluster secret never becomes a
member."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynakv.config import load_node_config
from dynakv.core.ring import Ring, RingNode, partition_of
from dynakv.node.dev import start_node
from tests.integration.conftest import Cluster, make_cluster, wait_for

pytestmark = pytest.mark.integration

NODES = 5
# Default timings: probe every 500 ms, suspicion 1.5-6 s scaled by log10(n).
DETECTION_S_MAX = 12.0


@pytest.fixture(scope="module")
def five(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from make_cluster(tmp_path_factory.mktemp("five"), nodes=NODES)


def states(cluster: Cluster, index: int) -> dict[str, str]:
    members = cluster.request(index, "GET", "/v1/status").json()["members"]
    return {member["node_id"]: member["state"] for member in members}


def test_every_node_sees_every_member_up_with_its_partitions(five: Cluster) -> None:
    everyone = {f"n{i}": "up" for i in range(1, NODES + 1)}
    for index in range(NODES):
        wait_for(lambda index=index: states(five, index) == everyone, f"n{index + 1} to see all")
    members = five.request(0, "GET", "/v1/status").json()["members"]
    assert [m["node_id"] for m in members] == sorted(everyone)
    assert sum(m["partitions"] for m in members) == 1024
    for member in members:
        assert set(member) >= {"node_id", "zone", "http", "state", "partitions", "hints_held"}
        assert member["state"] in ("up", "suspect", "down", "joining", "leaving")


def test_a_paused_node_is_down_within_the_detection_time_and_up_after_resuming(
    five: Cluster,
) -> None:
    paused = NODES - 1  # n5
    process = five.processes[paused]
    seen: list[str] = []
    process.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        while time.monotonic() - stopped_at < DETECTION_S_MAX:
            views = [states(five, i)["n5"] for i in range(NODES - 1)]
            if not seen or seen[-1] != views[0]:
                seen.append(views[0])  # n1's view, sampled every round
            if all(view == "down" for view in views):
                break
            time.sleep(0.1)
        detected_s = time.monotonic() - stopped_at
        assert seen[-1] == "down", (seen, detected_s)
        # No flapping: up, perhaps suspect, then down, never back.
        assert seen in (["up", "suspect", "down"], ["suspect", "down"], ["up", "down"]), seen
        # Requests still work with a member paused (quorum of the other replicas).
        put = five.put(0, b"while-paused", b"v", query="consistency=quorum")
        assert put.status == 204, put
    finally:
        process.send_signal(signal.SIGCONT)
    resumed_at = time.monotonic()
    for index in range(NODES):
        wait_for(
            lambda index=index: states(five, index)["n5"] == "up",
            f"n{index + 1} to see n5 up again",
            timeout_s=DETECTION_S_MAX,
        )
    back_s = time.monotonic() - resumed_at
    # Up it stays: sample for a few seconds.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert all(states(five, i)["n5"] == "up" for i in range(NODES)), "flapped after resume"
        time.sleep(0.2)
    print(f"paused node down after {detected_s:.1f} s everywhere, up {back_s:.1f} s after resume")


def test_a_process_without_the_cluster_secret_cannot_join(five: Cluster, tmp_path: Path) -> None:
    spec = five.spec
    stranger_dir = tmp_path / "stranger"
    stranger_dir.mkdir()
    secret = stranger_dir / "other.secret"
    secret.write_text("a-different-secret-0123456789abcdef\n")
    secret.chmod(0o600)
    # The stranger copies a member's config (same ring, same seeds) but not its secret.
    template = (spec.data_dir / "n5" / "node.toml").read_text()
    config_text = template.replace(str(spec.secret_path.resolve()), str(secret))
    config_text = config_text.replace(
        f'data_dir = "{(spec.data_dir / "n5").resolve()}"', f'data_dir = "{stranger_dir / "data"}"'
    )
    http_port, rpc_port = spec.http_port(4), spec.rpc_base_port + 4
    stop_n5 = five.stop(4)
    assert stop_n5 == 0
    config = stranger_dir / "node.toml"
    config.write_text(config_text)
    refused_before = sum(
        five.request(i, "GET", "/v1/status").json()["rpc_server"]["handshakes_refused_total"]
        for i in range(NODES - 1)
    )
    process = start_node(config, stranger_dir / "node.log")
    try:
        wait_for(
            lambda: (
                sum(
                    five.request(i, "GET", "/v1/status").json()["rpc_server"][
                        "handshakes_refused_total"
                    ]
                    for i in range(NODES - 1)
                )
                > refused_before
            ),
            "the members to refuse the stranger's handshakes",
        )
        time.sleep(2)  # gossip rounds in which a member would have let it back in
        for index in range(NODES - 1):
            assert states(five, index)["n5"] != "up", "a node without the secret got in"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    assert (http_port, rpc_port) == (spec.http_port(4), spec.rpc_base_port + 4)
    five.start(4)
    five.wait_healthy(4)


def test_writes_for_a_dead_node_go_to_fallbacks_with_hints_and_reach_it_when_back(
    five: Cluster,
) -> None:
    config = load_node_config(five.spec.data_dir / "n1" / "node.toml")
    ring = Ring.build(
        [RingNode(n.node_id, n.zone) for n in config.cluster.nodes],
        partition_count=config.cluster.partitions,
        replicas=config.cluster.replicas,
    )
    keys = [
        key
        for key in (f"hinted-{i}".encode() for i in range(400))
        if "n4" in ring.preference_list(partition_of(key, ring.partition_count))
    ][:40]
    dead = 3  # n4
    five.kill(dead)
    alive = [i for i in range(NODES) if i != dead]
    for index in alive:
        wait_for(lambda index=index: states(five, index)["n4"] == "down", "n4 to be down")
    for number, key in enumerate(keys):
        put = five.put(alive[number % len(alive)], key, b"while-n4-was-down")
        assert put.status == 204, put

    def held_for_n4() -> int:
        return sum(
            five.request(i, "GET", "/v1/status").json()["hints"]["held"].get("n4", 0) for i in alive
        )

    assert held_for_n4() >= len(keys), "every write n4 missed is hinted on a fallback"
    shown = [
        member["hints_held"]
        for i in alive
        for member in five.request(i, "GET", "/v1/status").json()["members"]
        if member["node_id"] == "n4"
    ]
    assert sum(shown) == held_for_n4()
    five.start(dead)
    five.wait_healthy(dead)
    wait_for(lambda: held_for_n4() == 0, "the hints to be handed off", timeout_s=30)
    for key in keys:
        record = five.local(dead, key)
        assert record is not None, key
        values = [s["value"] for s in record["siblings"] if not s["tombstone"]]
        assert values == ["d2hpbGUtbjQtd2FzLWRvd24="], (key, record)  # base64 of the value

"""Merkle anti-entropy between real node processes (issue 6, item 4): a node
whose data directory was wiped gets every key it replicates back through
anti-entropy alone (no reads), and the bytes streamed are reported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynakv.node.dev import DevCluster
from tests.integration.conftest import Cluster, make_cluster, wait_for

pytestmark = pytest.mark.integration

KEYS = 300


def _fast_anti_entropy(spec: DevCluster) -> None:
    """A round every 5 ms, so a walk over every partition takes seconds, not minutes."""
    for node_id in spec.node_ids():
        config = spec.data_dir / node_id / "node.toml"
        config.write_text(config.read_text() + "\n[timing]\nanti_entropy_interval_ms = 5\n")


@pytest.fixture
def repairing(tmp_path: Path) -> Iterator[Cluster]:
    yield from make_cluster(tmp_path, before_start=_fast_anti_entropy)


def moved(cluster: Cluster, index: int) -> dict[str, int]:
    status = cluster.request(index, "GET", "/v1/status").json()["anti_entropy"]
    return {name: value for name, value in status.items() if isinstance(value, int)}


def test_a_wiped_node_gets_every_key_back_through_anti_entropy_alone(repairing: Cluster) -> None:
    cluster = repairing
    values = {f"ae-{i}".encode(): f"value-{i}".encode() for i in range(KEYS)}
    for number, (key, value) in enumerate(values.items()):
        assert cluster.put(number % 3, key, value, query="consistency=all").status == 204
    wiped = 2  # n3: with N=3 on 3 nodes it replicates every key
    assert cluster.stop(wiped) == 0
    shutil.rmtree(cluster.spec.data_dir / "n3" / "db")
    cluster.start(wiped)
    cluster.wait_healthy(wiped)
    assert cluster.local(wiped, b"ae-0") is None, "the wipe left data behind"

    def restored() -> bool:
        return all(cluster.local(wiped, key) is not None for key in values)

    # No client reads in the meantime: only anti-entropy can bring them back.
    wait_for(restored, "anti-entropy to restore every key on n3", timeout_s=90)
    for key, value in values.items():
        got = cluster.get(wiped, key, query="consistency=one")
        assert (got.status, got.body) == (200, value), key
    reports = [moved(cluster, index) for index in range(3)]
    print("anti-entropy after the wipe:", reports)
    streamed = sum(sum(v for k, v in report.items() if "bytes" in k) for report in reports)
    assert streamed >= sum(len(v) for v in values.values()), reports


def test_admin_repair_forces_a_pass_and_reports_the_keys_and_bytes_moved(
    fresh_cluster: Cluster,
) -> None:
    cluster = fresh_cluster  # default timing: a background round per second
    values = {f"rep-{i}".encode(): f"v-{i}".encode() for i in range(KEYS)}
    for number, (key, value) in enumerate(values.items()):
        assert cluster.put(number % 3, key, value, query="consistency=all").status == 204
    assert cluster.stop(2) == 0
    shutil.rmtree(cluster.spec.data_dir / "n3" / "db")
    cluster.start(2)
    cluster.wait_healthy(2)
    # A repair runs with the replicas the node sees up: wait for gossip to
    # show it its peers (a repair before that skips them, and says so).
    wait_for(
        lambda: (
            all(
                member["state"] == "up"
                for member in cluster.request(2, "GET", "/v1/status").json()["members"]
            )
            and len(cluster.request(2, "GET", "/v1/status").json()["members"]) == 3
        ),
        "n3 to see its peers up",
    )
    endpoint = f"127.0.0.1:{cluster.port(2)}"
    done = subprocess.run(
        [sys.executable, "-m", "dynakv", "admin", "repair", "--endpoint", endpoint],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    summary = done.stdout.decode().splitlines()[0]
    report = json.loads(done.stdout.decode().split("\n", 1)[1])
    print(summary)
    assert "key(s)" in summary and "byte(s) moved" in summary
    missing = [key for key in values if cluster.local(2, key) is None]
    assert not missing, f"{len(missing)} keys still missing after the repair"
    # The forced pass moved what the (slow) background rounds had not yet.
    background = moved(cluster, 2)
    assert report["keys_moved"] + background["keys_pulled"] >= 1
    assert report["partitions"] == 1024
    one = subprocess.run(
        [
            sys.executable,
            "-m",
            "dynakv",
            "admin",
            "repair",
            "--endpoint",
            endpoint,
            "--partition",
            "7",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout.decode().split("\n", 1)[1])["partitions"] == 1

"""Power loss under a quorum-write load: each node's data directory is a
loop-mounted XFS of its own (``tests.faults.power``). The power is cut on one
node, then on two at once: the process is frozen, the file system shut down
without flushing its log, the process killed; then the file system is
mounted again (log recovery) and the node restarted.

Must hold: every write acknowledged (204 at quorum) before, during and after
the cuts reads back at quorum from every node; and a node whose power was cut
still holds, in its own store, every write it had acknowledged (writes at
``consistency=all`` just before the cut: each node fsynced them before
answering). Nodes run on loopback: power loss needs no namespaces.
Needs root, ``xfsprogs``, ``losetup``, ``mount`` and ``setpriv``; skipped
with the reason otherwise.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pytest

from tests.faults import power
from tests.faults.conftest import (
    FaultCluster,
    Place,
    WriteLoad,
    assert_all_readable,
    everyone_up,
    loopback_opener,
    require_fault_tools,
    tally,
    wait_for,
)
from tests.integration.conftest import free_port_block

pytestmark = pytest.mark.faults

ALL: Final = (0, 1, 2)
N1, N2, N3 = ALL
DISK_BYTES: Final = 512 * 1024 * 1024  # sparse; XFS needs >= 300 MiB
# The default reserve (256 MiB) would leave a small disk "low" from the start.
EXTRA_TOML: Final = "[limits]\ndisk_reserve_bytes = 67108864\n"
ACKS_PER_PHASE: Final = 60
WITNESSES_PER_CUT: Final = 20
TOOLS: Final = ("mkfs.xfs", "xfs_io", "losetup", "mount", "umount", "findmnt", "setpriv")


def _witness(cluster: FaultCluster, label: str) -> dict[bytes, bytes]:
    """Writes at ``consistency=all``: every node acknowledged each one durable."""
    written = {}
    for number in range(WITNESSES_PER_CUT):
        key, value = b"witness-%s-%d" % (label.encode(), number), b"w%d" % number
        # A peer just back may still be in its reconnect backoff (at most 1 s):
        # `all` then answers 503, which certainly stored nothing, so retry it.
        for _attempt in range(40):
            response = cluster.put(number % len(ALL), key, value, consistency="all")
            if response.status != 503:
                break
            time.sleep(0.05)
        assert response.status == 204, response
        written[key] = value
    return written


def _power_cycle(cluster: FaultCluster, disks: Sequence[power.Disk], nodes: Sequence[int]) -> float:
    """Cut the power of ``nodes`` at once, then bring them back; the seconds it took."""
    started = time.monotonic()
    for index in nodes:
        cluster.pause(index)  # nothing the process does after the cut may reach the disk
    for index in nodes:
        power.cut_power(disks[index])
    for index in nodes:
        cluster.kill(index)
    for index in nodes:
        power.remount(disks[index])
        cluster.start(index)
    for index in nodes:
        cluster.wait_healthy(index)
    return time.monotonic() - started


def _missing_locally(cluster: FaultCluster, index: int, written: dict[bytes, bytes]) -> list[bytes]:
    """The writes node ``index`` acknowledged that its own store no longer holds."""
    missing = []
    for key, value in written.items():
        record = cluster.local(index, key)
        values = [] if record is None else [s["value"] for s in record["siblings"]]
        if values != [base64.b64encode(value).decode()]:
            missing.append(key)
    return missing


def test_power_loss_on_one_then_two_nodes_loses_no_acknowledged_write(tmp_path: Path) -> None:
    require_fault_tools(*TOOLS)
    base = free_port_block(6)
    with power.disks(tmp_path, ["n1-disk", "n2-disk", "n3-disk"], DISK_BYTES) as disks:
        places = [
            Place(f"n{i + 1}", "127.0.0.1", base + i, base + 3 + i, disks[i].mount_point)
            for i in ALL
        ]
        cluster = FaultCluster(tmp_path / "home", places, loopback_opener)
        cluster.write_configs(extra_toml=EXTRA_TOML)
        try:
            for index in ALL:
                cluster.start(index)
            for index in ALL:
                cluster.wait_healthy(index)
            wait_for(lambda: everyone_up(cluster, ALL), "every node to see every member up")
            with WriteLoad(cluster, ALL, seed=3) as load:
                load.wait_acked(ACKS_PER_PHASE)
                before_one = _witness(cluster, "one")
                one_s = _power_cycle(cluster, disks, [N2])
                acks_one_s = load.wait_acked(ACKS_PER_PHASE)
                wait_for(lambda: everyone_up(cluster, ALL), "every node to see n2 up again")
                before_two = _witness(cluster, "two")
                two_s = _power_cycle(cluster, disks, [N1, N3])
                acks_two_s = load.wait_acked(ACKS_PER_PHASE)
            outcomes = load.outcomes()
            lost = {
                "n2 (first cut)": _missing_locally(cluster, N2, before_one),
                "n1 (second cut)": _missing_locally(cluster, N1, before_one | before_two),
                "n3 (second cut)": _missing_locally(cluster, N3, before_one | before_two),
            }
            assert not any(lost.values()), f"acknowledged writes lost by a power cut: {lost}"
            acked = load.acked() | before_one | before_two
            read_s = assert_all_readable(cluster, acked, ALL)
        finally:
            cluster.stop_all()
    print(
        f"\npower loss: n2 cut and back in {one_s:.2f} s, load acknowledging again "
        f"{acks_one_s:.2f} s later; n1+n3 cut and back in {two_s:.2f} s, load "
        f"acknowledging again {acks_two_s:.2f} s later; writes {tally(outcomes)}; "
        f"{len(acked)} acknowledged, all read back at quorum from 3 nodes in {read_s:.1f} s"
    )

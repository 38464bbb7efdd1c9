"""Network partitions between real node processes, each in a network namespace
of its own (``tests.faults.netns``), with a concurrent quorum-write load
running through each fault and through the heal.

- One node isolated (both directions): the majority keeps acknowledging
  quorum writes; a write through the isolated node fails (503/504) within the
  request timeout; the majority sees it ``down``, and everyone sees everyone
  ``up`` after the heal.
- A one-way cut (the others cannot open a connection to n3; n3 can to them)
  across a crash and restart of n3 (kill -9): n3 still coordinates quorum
  writes over the connections it opens, the others over each other.

After each, every acknowledged write reads back at quorum from every node.
Needs root, ``ip``, ``iptables`` and ``setpriv``; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Final

import pytest

from tests.faults import netns
from tests.faults.conftest import (
    NETNS_TOOLS,
    FaultCluster,
    Outcome,
    WriteLoad,
    assert_all_readable,
    cluster_in_namespaces,
    everyone_up,
    require_fault_tools,
    tally,
    wait_for,
)

pytestmark = pytest.mark.faults

ALL: Final = (0, 1, 2)
N1, N2, N3 = ALL
REQUEST_TIMEOUT_S: Final = 2.0  # the node's default request_timeout_ms
ANSWER_SLACK_S: Final = 1.0  # scheduling on a 2-core machine shared with the load
DETECTION_S_MAX: Final = 15.0  # probe 0.5 s + suspicion up to 6 s, with room
# A member declared dead hears of it again within the detector's reconnect
# interval (10 s, a sync with a random dead member) once its gossip retransmits
# ran out during the partition.
HEAL_S_MAX: Final = 25.0
ACKS_PER_PHASE: Final = 40


def _answered_in_time(outcomes: list[Outcome]) -> None:
    """Every write through a live node got an answer, within the request timeout."""
    slow = [o for o in outcomes if o.elapsed_s > REQUEST_TIMEOUT_S + ANSWER_SLACK_S]
    assert not slow, f"{len(slow)} writes took too long, e.g. {slow[:3]}"


def _during(outcomes: list[Outcome], start_s: float, end_s: float) -> list[Outcome]:
    """The writes that started and ended within [start_s, end_s]."""
    return [o for o in outcomes if o.started_s >= start_s and o.started_s + o.elapsed_s <= end_s]


def _views_of(cluster: FaultCluster, node_id: str, observers: tuple[int, ...]) -> list[str]:
    return [cluster.members(index)[node_id] for index in observers]


def test_an_isolated_node_fails_fast_while_the_majority_writes_on(tmp_path: Path) -> None:
    with cluster_in_namespaces(tmp_path) as (net, cluster):
        wait_for(lambda: everyone_up(cluster, ALL), "every node to see every member up")
        with WriteLoad(cluster, ALL, seed=1) as load:
            load.wait_acked(ACKS_PER_PHASE)
            netns.partition(net, [N3], [N1, N2])
            cut_at = time.monotonic()
            assert len(netns.rules(net, N3)) == 2 and len(netns.rules(net, N1)) == 1
            detected_s = wait_for(
                lambda: _views_of(cluster, "n3", (N1, N2)) == ["down", "down"],
                "the majority to see n3 down",
                DETECTION_S_MAX,
            )
            isolated_view = cluster.members(N3)
            assert isolated_view["n3"] == "up", isolated_view  # it only lost the others
            load.wait_acked(ACKS_PER_PHASE)  # the majority goes on
            probe_started = time.monotonic()
            refused = cluster.put(N3, b"through-the-minority", b"v")
            probe_s = time.monotonic() - probe_started
            assert refused.status in (503, 504), refused
            assert probe_s <= REQUEST_TIMEOUT_S + ANSWER_SLACK_S, probe_s
            healed_at = time.monotonic()
            netns.heal(net)
            assert not any(netns.rules(net, index) for index in ALL)
            heal_s = wait_for(
                lambda: everyone_up(cluster, ALL), "every node to see every member up", HEAL_S_MAX
            )
            load.wait_acked(ACKS_PER_PHASE)  # and everyone again, n3 included
        outcomes = load.outcomes()
        _answered_in_time(outcomes)
        assert all(o.status is not None for o in outcomes), tally(outcomes)
        during = _during(outcomes, cut_at, healed_at)
        majority = [o for o in during if o.node != N3]
        minority = [o for o in during if o.node == N3]
        assert majority and all(o.status == 204 for o in majority), tally(majority)
        assert minority and all(o.status in (503, 504) for o in minority), tally(minority)
        after = [o for o in outcomes if o.node == N3 and o.started_s > healed_at + heal_s]
        assert any(o.status == 204 for o in after), tally(after)
        acked = load.acked()
        read_s = assert_all_readable(cluster, acked, ALL)
    print(
        f"\nisolated n3: detected down by the majority in {detected_s:.2f} s; "
        f"n3's own view {isolated_view}; "
        f"a write through n3 answered {refused.status} in {probe_s:.2f} s; "
        f"all up {heal_s:.2f} s after the heal; during the partition "
        f"majority {tally(majority)}, n3 {tally(minority)}; "
        f"max answer {max(o.elapsed_s for o in outcomes):.2f} s; "
        f"{len(acked)} of {len(outcomes)} writes acknowledged, "
        f"all read back at quorum from 3 nodes in {read_s:.1f} s"
    )


def test_a_one_way_cut_leaves_every_node_writing_at_quorum(tmp_path: Path) -> None:
    with cluster_in_namespaces(tmp_path) as (net, cluster):
        wait_for(lambda: everyone_up(cluster, ALL), "every node to see every member up")
        with WriteLoad(cluster, ALL, seed=2) as load:
            load.wait_acked(ACKS_PER_PHASE)
            netns.cut_one_way(net, source=N1, receiver=N3)
            netns.cut_one_way(net, source=N2, receiver=N3)
            # Open connections survive a SYN drop: a crash makes everyone reconnect.
            cluster.kill(N3)
            cluster.start(N3)
            restart_s = cluster.wait_healthy(N3)
            cut_from = time.monotonic()
            load.wait_acked(3 * ACKS_PER_PHASE)
            seen_by_n1 = cluster.members(N1)["n3"]
            netns.heal(net)
            healed_at = time.monotonic()
            heal_s = wait_for(
                lambda: everyone_up(cluster, ALL), "every node to see every member up", HEAL_S_MAX
            )
            load.wait_acked(ACKS_PER_PHASE)
        outcomes = load.outcomes()
        answered = [o for o in outcomes if o.status is not None]
        _answered_in_time(answered)
        unanswered = [o for o in outcomes if o.status is None]
        assert all(o.node == N3 for o in unanswered), tally(unanswered)  # only while it was down
        during = _during(outcomes, cut_from, healed_at)
        for index in ALL:
            through = [o for o in during if o.node == index]
            assert through and all(o.status == 204 for o in through), (index, tally(through))
        acked = load.acked()
        read_s = assert_all_readable(cluster, acked, ALL)
    print(
        f"\none-way cut (n1, n2 cannot connect to n3): n3 restarted in {restart_s:.2f} s; "
        f"during the cut every node acknowledged every write ({tally(during)}); "
        f"n1 saw n3 {seen_by_n1!r}; all up {heal_s:.2f} s after the heal; "
        f"{len(acked)} of {len(outcomes)} writes acknowledged ({tally(outcomes)}), "
        f"all read back at quorum from 3 nodes in {read_s:.1f} s"
    )


def _a_dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait(timeout=10)
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)
    return process.pid


def test_namespaces_of_dead_runs_are_removed_and_live_ones_kept() -> None:
    """A killed run leaves its namespaces behind; the next run removes them,
    and never a live run's."""
    require_fault_tools(*NETNS_TOOLS)
    with netns.network(1) as net:
        stale = netns.Network(run_id=f"{netns.PREFIX}{_a_dead_pid()}", size=1)
        netns.run("ip", "netns", "add", stale.namespace(0))
        try:
            removed = netns.remove_stale_namespaces()
            assert removed == [stale.namespace(0)], removed
            left = set(netns.list_namespaces())
            assert stale.namespace(0) not in left
            assert set(net.namespaces()) <= left, "a live run's namespaces were removed"
        finally:
            netns.teardown(stale)
    assert not set(net.namespaces()) & set(netns.list_namespaces()), "teardown left some"

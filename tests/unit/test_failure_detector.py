"""SWIM probes, indirect probes, Lifeguard suspicion and local health, one step at a time."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from dynakv.core.failure_detector import (
    FailureDetector,
    MembershipTiming,
    ProbeFailed,
    ProbeSend,
    SuspicionExpired,
    detection_bound_ms,
    suspicion_timeout_ms,
)
from dynakv.core.gossip_messages import Ack, IndirectPing, Nack, Ping

TIMING = MembershipTiming()


class View:
    """A fixed set of live peers at ``<id>:1``."""

    def __init__(self, peers: Sequence[str]) -> None:
        self.peers = sorted(peers)

    def probe_address(self, node_id: str) -> str | None:
        return f"{node_id}:1" if node_id in self.peers else None

    def live_peer_ids(self) -> Sequence[str]:
        return self.peers

    def cluster_size(self) -> int:
        return len(self.peers) + 1

    def incarnation_of(self, node_id: str) -> int:
        return 4  # every probe begins at this incarnation


def detector(seed: int = 1) -> FailureDetector:
    return FailureDetector("me", "me:1", TIMING, random.Random(seed))


def sends(outputs: Sequence[object]) -> list[ProbeSend]:
    return [o for o in outputs if isinstance(o, ProbeSend)]


def test_suspicion_timeout_shrinks_from_max_to_min_with_confirmations() -> None:
    timeouts = [suspicion_timeout_ms(TIMING, 10, c)[0] for c in range(4)]
    assert timeouts[0] == TIMING.suspicion_max_ms
    assert timeouts[0] > timeouts[1] > timeouts[2]
    assert timeouts[2] == timeouts[3] == TIMING.suspicion_min_ms  # 2 confirmations expected


def test_suspicion_timeout_is_min_when_too_few_nodes_could_confirm() -> None:
    assert suspicion_timeout_ms(TIMING, 3, 0) == (TIMING.suspicion_min_ms, 0)


def test_suspicion_timeout_grows_with_log_of_cluster_size() -> None:
    assert suspicion_timeout_ms(TIMING, 1000, 0)[0] == 3 * TIMING.suspicion_max_ms


def test_detection_bound_for_a_small_cluster_is_a_few_seconds() -> None:
    assert 2000 <= detection_bound_ms(TIMING, 3) <= 6000


def test_probe_pings_one_member_per_period_round_robin() -> None:
    fd, view = detector(), View(["a", "b", "c"])
    targets = []
    for period in range(6):
        now = period * TIMING.probe_interval_ms
        outputs = fd.tick(now, view)
        [send] = sends(outputs)
        assert isinstance(send.message, Ping)
        targets.append(send.message.target)
        assert fd.on_ack(Ack(send.message.target, send.message.seq)) == []
    assert sorted(targets[:3]) == ["a", "b", "c"]
    assert sorted(targets[3:]) == ["a", "b", "c"]


def test_unanswered_probe_goes_indirect_then_fails() -> None:
    fd, view = detector(), View(["a", "b", "c", "d", "e"])
    [ping] = sends(fd.tick(0, view))
    assert isinstance(ping.message, Ping)
    target = ping.message.target
    assert fd.tick(TIMING.probe_timeout_ms - 1, view) == []
    outputs = sends(fd.tick(TIMING.probe_timeout_ms, view))
    indirect = [s for s in outputs if isinstance(s.message, IndirectPing)]
    retry = [s for s in outputs if isinstance(s.message, Ping)]
    assert len(indirect) == TIMING.indirect_probes
    assert all(s.node_id != target for s in indirect)
    assert all(isinstance(s.message, IndirectPing) and s.message.target == target for s in indirect)
    assert [s.node_id for s in retry] == [target]
    for send in indirect:
        fd.on_nack(Nack(send.node_id, ping.message.seq))
    outputs_at_end = fd.tick(TIMING.probe_interval_ms, view)
    assert ProbeFailed(target, 4) in outputs_at_end
    assert fd.awareness == 0  # every helper nacked: the target is the problem, not us


def test_an_indirect_ack_saves_the_probe() -> None:
    fd, view = detector(), View(["a", "b", "c"])
    [ping] = sends(fd.tick(0, view))
    assert isinstance(ping.message, Ping)
    fd.tick(TIMING.probe_timeout_ms, view)
    assert fd.on_ack(Ack("helper", ping.message.seq)) == []
    outputs = fd.tick(TIMING.probe_interval_ms, view)
    assert not [o for o in outputs if isinstance(o, ProbeFailed)]


def test_missing_nacks_raise_awareness_which_slows_probing() -> None:
    fd, view = detector(), View(["a", "b", "c", "d"])
    fd.tick(0, view)
    fd.tick(TIMING.probe_timeout_ms, view)
    failed = fd.tick(TIMING.probe_interval_ms, view)
    assert [o for o in failed if isinstance(o, ProbeFailed)]
    assert fd.awareness == TIMING.indirect_probes  # no helper nacked
    [ping] = sends(failed)  # the next probe starts in the same tick
    assert isinstance(ping.message, Ping)
    scaled_timeout = TIMING.probe_timeout_ms * (1 + fd.awareness)
    assert fd.tick(TIMING.probe_interval_ms + TIMING.probe_timeout_ms, view) == []
    assert sends(fd.tick(TIMING.probe_interval_ms + scaled_timeout, view))
    fd.on_ack(Ack(ping.message.target, ping.message.seq))
    assert fd.awareness == TIMING.indirect_probes - 1


def test_relay_forwards_the_ack_or_nacks_at_its_timeout() -> None:
    fd = detector()
    request = IndirectPing("asker", "asker:1", 41, "target", "target:1")
    [ping] = sends(fd.on_indirect_ping(request, now_ms=0))
    assert ping.address == "target:1" and isinstance(ping.message, Ping)
    [relayed] = sends(fd.on_ack(Ack("target", ping.message.seq)))
    assert relayed.address == "asker:1" and relayed.message == Ack("me", 41)
    [ping] = sends(fd.on_indirect_ping(request, now_ms=1000))
    assert fd.tick(1000 + TIMING.probe_timeout_ms - 1, View([])) == []
    [nack] = sends(fd.tick(1000 + TIMING.probe_timeout_ms, View([])))
    assert nack.message == Nack("me", 41)


def test_ping_for_another_node_is_ignored() -> None:
    fd = detector()
    assert fd.on_ping(Ping("a", "a:1", 5, "someone-else")) == []
    [ack] = sends(fd.on_ping(Ping("a", "a:1", 5, "me")))
    assert ack.address == "a:1" and ack.message == Ack("me", 5)


def test_confirmations_from_distinct_accusers_shorten_the_suspicion() -> None:
    fd = detector()
    assert fd.suspect("x", 3, "a", now_ms=0, cluster_size=10)
    assert fd.suspicions["x"].deadline_ms == TIMING.suspicion_max_ms
    assert not fd.suspect("x", 3, "a", now_ms=10, cluster_size=10)  # same accuser
    assert fd.suspect("x", 3, "b", now_ms=10, cluster_size=10)
    after_one = fd.suspicions["x"].deadline_ms
    assert TIMING.suspicion_min_ms < after_one < TIMING.suspicion_max_ms
    assert fd.suspect("x", 3, "c", now_ms=20, cluster_size=10)
    assert fd.suspicions["x"].deadline_ms == TIMING.suspicion_min_ms
    assert not fd.suspect("x", 3, "d", now_ms=30, cluster_size=10)  # enough already
    assert not fd.suspect("x", 2, "e", now_ms=30, cluster_size=10)  # an older life
    assert fd.tick(TIMING.suspicion_min_ms - 1, View([])) == []
    assert fd.tick(TIMING.suspicion_min_ms, View([])) == [SuspicionExpired("x", 3)]
    assert "x" not in fd.suspicions


def test_a_newer_incarnation_restarts_the_suspicion_and_clear_stops_it() -> None:
    fd = detector()
    fd.suspect("x", 1, "a", now_ms=0, cluster_size=3)
    assert fd.suspect("x", 2, "a", now_ms=500, cluster_size=3)
    assert fd.suspicions["x"].deadline_ms == 500 + TIMING.suspicion_min_ms
    fd.clear_suspicion("x")
    assert fd.tick(10_000, View([])) == []


def test_a_pause_drops_the_probe_without_a_verdict_and_delays_suspicions() -> None:
    fd, view = detector(), View(["a", "b"])
    fd.tick(0, view)
    fd.suspect("c", 0, "a", now_ms=0, cluster_size=3)
    gap_ms = TIMING.tick_gap_ms_max + 5000
    outputs = fd.tick(gap_ms, view)
    assert not [o for o in outputs if isinstance(o, ProbeFailed | SuspicionExpired)]
    assert fd.suspicions["c"].deadline_ms == TIMING.suspicion_min_ms + gap_ms
    assert [s for s in sends(outputs) if isinstance(s.message, Ping)]  # probing resumes


def test_a_node_that_left_stops_probing_but_still_answers() -> None:
    fd = detector()
    fd.probing = False
    assert fd.tick(0, View(["a"])) == []
    assert sends(fd.on_ping(Ping("a", "a:1", 1, "me")))


def test_timing_rejects_a_probe_timeout_longer_than_the_period() -> None:
    with pytest.raises(AssertionError):
        MembershipTiming(probe_interval_ms=100, probe_timeout_ms=100)

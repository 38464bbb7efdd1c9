"""Failure detection: SWIM probes and Lifeguard suspicion, as a pure state machine.

Why SWIM and not phi-accrual: phi-accrual needs a steady heartbeat stream from
every node to every node (O(n^2) messages, or gossip heartbeats whose
interarrival times blur with hops), and its verdict is a threshold on a
running estimate, so a burst of loss or a GC pause flips it and it flaps.
SWIM keeps per-node load constant (one probe per period), asks ``k`` other
nodes to probe before it accuses anyone (so one lossy link is not a death),
and turns an accusation into a *suspicion* the accused can refute by raising
its incarnation. Detection time is bounded by the timings (see
``detection_bound_ms``) rather than by a statistical estimate.

From Lifeguard (memberlist ``suspicion.go``, ``awareness.go``):

- the suspicion timeout starts at ``max`` and shrinks towards ``min`` as
  independent accusers confirm it (``suspicion_timeout_ms``);
- local health: a probe that fails without the helpers' nacks suggests that
  *this* node is slow, so it widens its own probe timeout and interval
  (``awareness``, 0..``awareness_max``) instead of accusing others faster;
- buddy system: a ping to a suspect carries its suspicion (``membership``).

And one of our own: a tick after a gap longer than ``tick_gap_ms_max`` means
this process was paused (SIGSTOP, a long GC); its silence is not evidence
against others, so an unanswered probe is dropped without a verdict and
running suspicions are pushed back by the gap.

This module owns the probe schedule, in-flight probes, relayed probes and
suspicion timers. It does not own the member table: it reads it through
``MemberView`` and reports ``ProbeFailed`` / ``SuspicionExpired`` for the
membership to apply. Must never: read a clock, draw from anything but the
passed-in ``RandomSource``, or declare a node dead without a suspicion first.
"""

from __future__ import annotations

import math
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from dynakv.core.gossip_messages import Ack, IndirectPing, Nack, Ping

T = TypeVar("T")
RELAYS_MAX = 256  # indirect probes this node runs for others at once


class RandomSource(Protocol):
    """The slice of ``random.Random`` the membership uses (core/ may not import random)."""

    def random(self) -> float: ...
    def randrange(self, stop: int, /) -> int: ...
    def shuffle(self, x: MutableSequence[Any], /) -> None: ...
    def sample(self, population: Sequence[T], k: int, /) -> list[T]: ...


@dataclass(frozen=True, slots=True)
class MembershipTiming:
    """Every membership timing and bound; defaults detect a crash in ~2-5 s on a small cluster."""

    probe_interval_ms: int = 500
    probe_timeout_ms: int = 200
    indirect_probes: int = 3
    # Suspicion lasts from max down to min as confirmations arrive; both are
    # multiplied by max(1, log10(cluster size)), since gossip takes O(log n) rounds.
    suspicion_min_ms: int = 1500
    suspicion_max_ms: int = 6000
    suspicion_confirmations: int = 2
    gossip_interval_ms: int = 200
    gossip_fanout: int = 3
    gossip_to_dead_ms: int = 30_000
    retransmit_mult: int = 4
    updates_per_message_max: int = 16
    # Push-pull with one random member; lengthened beyond 32 members (memberlist's scale).
    sync_interval_ms: int = 5000
    reconnect_interval_ms: int = 10_000  # sync with a random dead member (partition healing)
    join_retry_interval_ms: int = 1000
    ring_fetch_timeout_ms: int = 2000
    dead_member_ttl_ms: int = 3_600_000
    members_max: int = 4096
    awareness_max: int = 8
    tick_gap_ms_max: int = 1000

    def __post_init__(self) -> None:
        assert 0 < self.probe_timeout_ms < self.probe_interval_ms, self
        assert 0 < self.suspicion_min_ms <= self.suspicion_max_ms, self
        assert self.indirect_probes >= 0 and self.suspicion_confirmations >= 0, self
        assert self.gossip_interval_ms > 0 and self.gossip_fanout >= 1, self
        assert self.updates_per_message_max >= 1 and self.retransmit_mult >= 1, self
        assert self.members_max >= 2 and self.awareness_max >= 0, self
        assert self.tick_gap_ms_max > self.probe_timeout_ms, self


def cluster_scale(cluster_size: int) -> float:
    return max(1.0, math.log10(max(1, cluster_size)))


def suspicion_timeout_ms(
    timing: MembershipTiming, cluster_size: int, confirmations: int
) -> tuple[int, int]:
    """(timeout, expected confirmations): Lifeguard's max -> min, log-scaled by confirmations."""
    scale = cluster_scale(cluster_size)
    low = int(timing.suspicion_min_ms * scale)
    high = int(timing.suspicion_max_ms * scale)
    expected = timing.suspicion_confirmations
    if cluster_size - 2 < expected:
        expected = 0  # too few nodes to ever confirm: no reason to wait for them
    if expected < 1:
        return low, expected
    fraction = math.log(confirmations + 1) / math.log(expected + 1)
    return max(low, int(high - fraction * (high - low))), expected


def detection_bound_ms(timing: MembershipTiming, cluster_size: int) -> int:
    """A crashed node is down everywhere within this, without loss and with healthy nodes.

    Worst case: a survivor's shuffled round robin reaches it within 2(n-1)
    periods, the probe takes one more, the unconfirmed suspicion runs its
    maximum, and the death takes a few gossip rounds to spread.
    """
    peers = max(1, cluster_size - 1)
    periods = 2 * peers + 1
    high, _ = suspicion_timeout_ms(timing, cluster_size, 0)
    spread_rounds = 2 * math.ceil(math.log(max(2, cluster_size), timing.gossip_fanout + 1)) + 2
    return periods * timing.probe_interval_ms + high + spread_rounds * timing.gossip_interval_ms


class MemberView(Protocol):
    def probe_address(self, node_id: str) -> str | None:
        """The RPC address of a member worth probing (alive or suspect), else None."""

    def live_peer_ids(self) -> Sequence[str]:
        """Live members other than this node, sorted."""

    def cluster_size(self) -> int:
        """Live members, this node included."""

    def incarnation_of(self, node_id: str) -> int:
        """The member's incarnation as this node knows it now (0 if unknown)."""


@dataclass(frozen=True, slots=True)
class ProbeSend:
    """Send ``message`` to ``node_id`` at ``address``."""

    node_id: str
    address: str
    message: Ping | Ack | Nack | IndirectPing


@dataclass(frozen=True, slots=True)
class ProbeFailed:
    """Neither ``node_id`` nor any helper answered within a period: suspect it,
    unless it has since been heard alive at an incarnation past ``incarnation``
    (the one known when the probe began): newer evidence of life wins."""

    node_id: str
    incarnation: int = 0


@dataclass(frozen=True, slots=True)
class SuspicionExpired:
    """Nobody refuted the suspicion of ``node_id`` at ``incarnation`` in time: it is dead."""

    node_id: str
    incarnation: int


Output = ProbeSend | ProbeFailed | SuspicionExpired


@dataclass(slots=True)
class Suspicion:
    incarnation: int
    started_ms: int
    first_accuser: str
    expected: int
    deadline_ms: int
    confirmers: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    started_ms: int
    incarnation: int = 0
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(frozen=True, slots=True)
class _Relay:
    requester: str
    requester_address: str
    requester_seq: int
    deadline_ms: int


class FailureDetector:
    def __init__(
        self, self_id: str, self_address: str, timing: MembershipTiming, rng: RandomSource
    ) -> None:
        self.self_id = self_id
        self.self_address = self_address
        self.timing = timing
        self.awareness = 0
        self.probing = True  # False once this node has left
        self._rng = rng
        self._seq = 0
        self._order: list[str] = []  # the rest of this round of the shuffled round robin
        self._probe: _Probe | None = None
        self._next_probe_ms: int | None = None
        self._last_tick_ms: int | None = None
        self._relays: dict[int, _Relay] = {}
        self.suspicions: dict[str, Suspicion] = {}

    def _scaled(self, duration_ms: int) -> int:
        return duration_ms * (1 + self.awareness)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def add_awareness(self, delta: int) -> None:
        self.awareness = min(self.timing.awareness_max, max(0, self.awareness + delta))

    def add_member(self, node_id: str) -> None:
        """A new member joins this round of probes at a random place (memberlist does too)."""
        if node_id != self.self_id and node_id not in self._order:
            self._order.insert(self._rng.randrange(len(self._order) + 1), node_id)

    def tick(self, now_ms: int, view: MemberView) -> list[Output]:
        if (
            self._last_tick_ms is not None
            and now_ms - self._last_tick_ms > self.timing.tick_gap_ms_max
        ):
            self._after_pause(now_ms - self._last_tick_ms)
        self._last_tick_ms = now_ms
        outputs: list[Output] = []
        for seq in sorted(self._relays) if self._relays else ():
            relay = self._relays[seq]
            if now_ms >= relay.deadline_ms:
                del self._relays[seq]
                outputs.append(
                    ProbeSend(
                        relay.requester,
                        relay.requester_address,
                        Nack(self.self_id, relay.requester_seq),
                    )
                )
        if self.probing:
            outputs.extend(self._tick_probe(now_ms, view))
        for node_id in sorted(self.suspicions) if self.suspicions else ():
            suspicion = self.suspicions[node_id]
            if now_ms >= suspicion.deadline_ms:
                del self.suspicions[node_id]
                outputs.append(SuspicionExpired(node_id, suspicion.incarnation))
        return outputs

    def _after_pause(self, gap_ms: int) -> None:
        self._probe = None
        self._relays.clear()
        self._next_probe_ms = None
        for suspicion in self.suspicions.values():
            suspicion.deadline_ms += gap_ms

    def _tick_probe(self, now_ms: int, view: MemberView) -> list[Output]:
        outputs: list[Output] = []
        probe = self._probe
        if probe is not None:
            if not probe.indirect_sent and now_ms >= probe.started_ms + self._scaled(
                self.timing.probe_timeout_ms
            ):
                outputs.extend(self._send_indirect(probe, view))
            if now_ms >= probe.started_ms + self._scaled(self.timing.probe_interval_ms):
                self._probe = None
                # Lifeguard: helpers that did not even nack hint that we are the slow one;
                # with no helpers, any failed probe counts against our own health.
                missed = probe.expected_nacks - probe.nacks if probe.expected_nacks else 1
                self.add_awareness(missed)
                if view.probe_address(probe.target) is not None:
                    outputs.append(ProbeFailed(probe.target, probe.incarnation))
        if self._probe is None and (self._next_probe_ms is None or now_ms >= self._next_probe_ms):
            self._next_probe_ms = now_ms + self._scaled(self.timing.probe_interval_ms)
            outputs.extend(self._start_probe(now_ms, view))
        return outputs

    def _start_probe(self, now_ms: int, view: MemberView) -> list[Output]:
        refilled = False
        while True:
            if not self._order:
                if refilled:
                    return []
                self._order = list(view.live_peer_ids())
                self._rng.shuffle(self._order)
                refilled = True
                if not self._order:
                    return []
            target = self._order.pop()
            address = view.probe_address(target)
            if address is not None:
                break
        seq = self._next_seq()
        self._probe = _Probe(target, seq, now_ms, view.incarnation_of(target))
        return [ProbeSend(target, address, Ping(self.self_id, self.self_address, seq, target))]

    def _send_indirect(self, probe: _Probe, view: MemberView) -> list[Output]:
        probe.indirect_sent = True
        target_address = view.probe_address(probe.target)
        if target_address is None:
            return []
        helpers = [node_id for node_id in view.live_peer_ids() if node_id != probe.target]
        chosen = self._rng.sample(helpers, min(self.timing.indirect_probes, len(helpers)))
        # A second direct ping too (memberlist's is over TCP): one more chance against loss.
        ping = Ping(self.self_id, self.self_address, probe.seq, probe.target)
        outputs: list[Output] = [ProbeSend(probe.target, target_address, ping)]
        for helper in sorted(chosen):
            helper_address = view.probe_address(helper)
            if helper_address is None:
                continue
            probe.expected_nacks += 1
            message = IndirectPing(
                self.self_id, self.self_address, probe.seq, probe.target, target_address
            )
            outputs.append(ProbeSend(helper, helper_address, message))
        return outputs

    def on_ping(self, ping: Ping) -> list[Output]:
        if ping.target != self.self_id:
            return []  # meant for a node that used to live at this address
        return [ProbeSend(ping.sender, ping.sender_address, Ack(self.self_id, ping.seq))]

    def on_indirect_ping(self, request: IndirectPing, now_ms: int) -> list[Output]:
        if len(self._relays) >= RELAYS_MAX or request.target == self.self_id:
            return []
        seq = self._next_seq()
        assert seq not in self._relays, seq
        deadline_ms = now_ms + self._scaled(self.timing.probe_timeout_ms)
        self._relays[seq] = _Relay(request.sender, request.sender_address, request.seq, deadline_ms)
        ping = Ping(self.self_id, self.self_address, seq, request.target)
        return [ProbeSend(request.target, request.target_address, ping)]

    def on_ack(self, ack: Ack) -> list[Output]:
        relay = self._relays.pop(ack.seq, None)
        if relay is not None:
            ack = Ack(self.self_id, relay.requester_seq)
            return [ProbeSend(relay.requester, relay.requester_address, ack)]
        probe = self._probe
        if probe is not None and ack.seq == probe.seq:
            self._probe = None
            self.add_awareness(-1)
        return []

    def on_nack(self, nack: Nack) -> None:
        probe = self._probe
        if probe is not None and nack.seq == probe.seq:
            probe.nacks += 1

    def suspect(
        self, node_id: str, incarnation: int, accuser: str, now_ms: int, cluster_size: int
    ) -> bool:
        """Start or confirm a suspicion; True if it is news worth gossiping on."""
        suspicion = self.suspicions.get(node_id)
        if suspicion is None or suspicion.incarnation < incarnation:
            timeout_ms, expected = suspicion_timeout_ms(self.timing, cluster_size, 0)
            self.suspicions[node_id] = Suspicion(
                incarnation, now_ms, accuser, expected, now_ms + timeout_ms
            )
            return True
        if suspicion.incarnation > incarnation or not accuser:
            return False
        if accuser == suspicion.first_accuser or accuser in suspicion.confirmers:
            return False
        if len(suspicion.confirmers) >= suspicion.expected:
            return False
        suspicion.confirmers.add(accuser)
        timeout_ms, _ = suspicion_timeout_ms(self.timing, cluster_size, len(suspicion.confirmers))
        suspicion.deadline_ms = min(suspicion.deadline_ms, suspicion.started_ms + timeout_ms)
        return True

    def clear_suspicion(self, node_id: str) -> None:
        self.suspicions.pop(node_id, None)

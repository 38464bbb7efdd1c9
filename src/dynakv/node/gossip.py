"""The membership shell: runs ``core.membership`` on a node, over the RPC port.

``core.membership.Membership`` is the pure state machine (SWIM probing with
Lifeguard suspicion, gossip dissemination, Scuttlebutt push-pull). This
module feeds it: a tick every ``membership_tick_ms`` of the event loop's
clock, and every gossip message the RPC server hands over; and it carries
out what it returns: ``Send`` goes out as a one-way RPC (the answer is an
empty ``GossipReceived``; the protocol's own answers are new messages),
``MemberChanged`` is logged and counted, ``RingLearned`` is handed to the
ring owner.

Gossip travels on authenticated connections only (the RPC handshake), one
``PeerClient`` per address: seeds are addresses before they are members.
Bounded: at most ``clients_max`` clients (the least recently used one is
closed past it), sends in flight bounded by each client's ``inflight_max``
(a full client drops the message: gossip tolerates loss by design).

Must never: block the loop, let a failed send raise, or trust a message's
own claim of who sent it over the connection's proven sender (the state
machine drops a message whose sender differs from the proven one).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any, Final, assert_never

from dynakv.config import ClusterConfig, NodeSpec
from dynakv.core.gossip_messages import (
    Action,
    GossipMessage,
    Lifecycle,
    MemberChanged,
    MemberState,
    RingLearned,
    Send,
    state_name,
)
from dynakv.core.membership import Membership
from dynakv.core.ring import is_valid_ring
from dynakv.net.messages import GossipReceived, Message
from dynakv.net.rpc import PeerClient

log = logging.getLogger(__name__)

# Runs a coroutine as a task (``loop.create_task``, or the simulator's per-node spawn).
Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]

CLIENTS_MAX: Final = 1024
SEND_TIMEOUT_MS: Final = 1000
GOSSIP_INFLIGHT_MAX: Final = 256


class GossipTransport:
    """One-way sends to RPC addresses over authenticated, lazily opened connections."""

    def __init__(
        self,
        *,
        secret: bytes,
        node_id: str,
        connect_timeout_ms: int,
        handshake_timeout_ms: int,
        clients_max: int = CLIENTS_MAX,
    ) -> None:
        assert clients_max > 0
        self._secret = secret
        self._node_id = node_id
        self._connect_timeout_ms = connect_timeout_ms
        self._handshake_timeout_ms = handshake_timeout_ms
        self._clients_max = clients_max
        self._clients: OrderedDict[str, PeerClient] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        self.sent_total = 0
        self.failed_total = 0

    def send(self, address: str, message: Message) -> None:
        client = self._client(address)
        if client.inflight >= GOSSIP_INFLIGHT_MAX:
            self.failed_total += 1  # gossip tolerates loss; a backlog helps nobody
            return
        self.sent_total += 1
        future = client.start_call(message, SEND_TIMEOUT_MS)
        future.add_done_callback(self._on_sent)

    def ask(self, address: str, message: Message, timeout_ms: int) -> asyncio.Future[Message]:
        """A request-reply call to an address (a seed's ring, before membership)."""
        return self._client(address).start_call(message, timeout_ms)

    def _on_sent(self, future: asyncio.Future[Message]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.failed_total += 1

    def _client(self, address: str) -> PeerClient:
        client = self._clients.get(address)
        if client is not None:
            self._clients.move_to_end(address)
            return client
        if len(self._clients) >= self._clients_max:
            _, oldest = self._clients.popitem(last=False)
            task = asyncio.get_running_loop().create_task(oldest.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        client = PeerClient(
            address,
            secret=self._secret,
            node_id=self._node_id,
            name=f"gossip:{address}",
            connect_timeout_ms=self._connect_timeout_ms,
            handshake_timeout_ms=self._handshake_timeout_ms,
            inflight_max=GOSSIP_INFLIGHT_MAX,
        )
        self._clients[address] = client
        return client

    async def close(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        await asyncio.gather(*(c.close() for c in clients), *self._closing)


class MembershipShell:
    """Drives one node's ``Membership`` from the loop's clock and the RPC server."""

    def __init__(
        self,
        membership: Membership,
        send: Callable[[str, Message], None],
        *,
        tick_ms: int,
        on_ring: Callable[[RingLearned], None] | None = None,
    ) -> None:
        assert tick_ms > 0
        self.membership = membership
        self._send = send
        self._tick_ms = tick_ms
        self._on_ring = on_ring
        self._task: asyncio.Task[None] | None = None
        self.changes_total = 0

    @staticmethod
    def now_ms() -> int:
        return int(asyncio.get_running_loop().time() * 1000)

    def start(self, spawn: Spawn | None = None) -> None:
        """Tick from now on; ``spawn`` runs the ticker (the simulator's ties it to one
        node's incarnation, so a simulated crash stops it)."""
        assert self._task is None, "started twice"
        spawn = spawn or asyncio.get_running_loop().create_task
        self._task = spawn(self._tick_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def halt(self) -> None:
        """Stop ticking now, without waiting (a simulated crash)."""
        if self._task is not None:
            self._task.cancel()

    async def _tick_forever(self) -> None:
        interval_s = self._tick_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            try:
                self._run(self.membership.tick(self.now_ms()))
            except Exception:
                log.exception("membership tick failed")

    def set_lifecycle(self, node_id: str, lifecycle: Lifecycle) -> None:
        self._run(self.membership.set_lifecycle(node_id, lifecycle, self.now_ms()))

    def leave(self) -> None:
        self._run(self.membership.leave(self.now_ms()))

    def observe_ring_epoch(self, epoch: int, node_id: str) -> None:
        """A replica or coordination message from ``node_id`` named a newer ring."""
        member = self.membership.member(node_id)
        if member is not None:
            self._run(self.membership.observe_ring_epoch(epoch, member.rpc, self.now_ms()))

    def install_ring(self, epoch: int, ring_bytes: bytes) -> None:
        self.membership.install_ring(epoch, ring_bytes)

    def on_message(self, message: GossipMessage, sender: str) -> GossipReceived:
        """The RPC handler for gossip: ``sender`` is the proven node id."""
        self._run(self.membership.on_message(sender, message, self.now_ms()))
        return GossipReceived()

    def _run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action.to_address, action.message)
            elif isinstance(action, MemberChanged):
                self.changes_total += 1
                log.info("member %s: %s -> %s", action.node_id, action.old, action.new)
            elif isinstance(action, RingLearned):
                if self._on_ring is not None:
                    self._on_ring(action)
            else:
                assert_never(action)


def new_membership(
    cluster: ClusterConfig,
    me: NodeSpec,
    seeds: list[str],
    rng: random.Random,
    now_ms: int,
    *,
    ring: tuple[int, bytes] = (0, b""),
    lifecycle: Lifecycle = Lifecycle.MEMBER,
) -> Membership:
    """This node's membership: a member of ``ring`` (epoch, bytes), or joining it."""
    self_member = MemberState(
        node_id=me.node_id,
        zone=me.zone,
        http=me.http_address,
        rpc=me.rpc_address,
        lifecycle_version=1,
        lifecycle=lifecycle,
    )
    return Membership(
        self_member,
        seeds,
        cluster.timing.membership(),
        rng,
        now_ms=now_ms,
        ring_epoch=ring[0],
        ring_bytes=ring[1],
        ring_check=is_valid_ring,
    )


def members_status(
    membership: Membership,
    primaries: dict[str, int],
    hints_held: Callable[[str], int],
) -> list[dict[str, Any]]:
    """``/v1/status`` → ``members``: one object per member, this node included."""
    return [
        {
            "node_id": member.node_id,
            "zone": member.zone,
            "http": member.http,
            "state": state_name(member),
            "partitions": primaries.get(member.node_id, 0),
            "hints_held": hints_held(member.node_id),
            "incarnation": member.incarnation,
        }
        for member in membership.members()
    ]

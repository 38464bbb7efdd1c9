"""Node-to-node RPC over TCP: a server that runs a handler per request, and clients.

Built on raw ``asyncio.Protocol`` (uvloop-compatible) and ``net.codec`` frames.
Each connection is pipelined: many requests are in flight at once, replies go
out in completion order and are matched by ``request_id``.

Only members get in. Every connection opens with ``net.handshake``: client and
server each prove the shared cluster secret (HMAC-SHA256 over fresh nonces
from both sides and both node ids, one label per direction) before any other
frame is read. The server then calls ``handler(request, sender)`` with
``sender`` the client's *proven* node id; the client uses a connection only
after the server has proven itself (and, in a ``PeerPool``, proven to be the
node id it was dialled as). Frames before the end of the handshake are at most
``handshake_frame_bytes_max`` bytes and the handshake must end within
``handshake_timeout_ms``; a wrong or missing proof, a bad or oversized frame,
or the timeout closes the connection, and the server logs a WARNING with the
peer's address and the reason, at most once a second per reason (with a count
of the lines held back). The secret, nonces and proofs never appear in a log
line, an error, or ``status()``. The handshake authenticates the peer; it does
not encrypt the connection (an attacker on the path needs TLS to stop).

What a caller of ``PeerClient.call`` can rely on (the coordinator depends on it):

- ``PeerUnreachable``: the request certainly did NOT reach the peer (connect
  or handshake failed or timed out, the peer is in reconnect backoff after a
  recent failure, or the connection died before the request's frame was
  written). No request is written before the handshake has succeeded.
- ``RpcTimeout``: the request was written and no reply came in time, or the
  connection died after it was written: the peer may or may not have applied
  it. A dead connection fails its calls at once, not at their deadline.
- ``RemoteError``: the peer answered ``ErrorReply``; ``remote_code`` is its code,
  and the attributes ``remote_message`` and ``remote_facts`` carry the rest.
  A server over its ``inflight_max`` answers ``remote_code="Overloaded"``.
- ``Overloaded``: ``inflight_max`` calls to this peer are already outstanding.
- ``LocalProtocolError``: the request's frame is over ``frame_bytes_max``.

A failed connect or handshake puts the peer in backoff (25 ms doubling to
``reconnect_backoff_ms_max``; ``last_error`` says ``handshake failed: <reason>``
for the latter); calls during backoff fail at once with ``PeerUnreachable``. A
lost connection is simply reconnected by the next call. Time, for backoff and
for the part of a call's timeout spent connecting, is the event loop's clock.

Invariants:

- Everything is bounded: calls in flight per client and handlers in flight per
  server connection (``inflight_max``), frame size (``frame_bytes_max``), every
  call's duration (``timeout_ms``, connect and handshake included; a call may
  fail up to ``net.client.DEADLINE_SWEEP_S`` past it), connect
  attempts (one at a time per peer, ``connect_timeout_ms``), and a server
  connection whose peer stops reading stops being read (so replies cannot pile
  up without limit). The server also bounds its connections
  (``connections_max``: one past it is closed at once), the time from a
  frame's first byte to its last (``frame_timeout_ms``; an idle connection
  between frames is fine), and the bytes of incomplete frames held across all
  its connections (``buffered_bytes_total_max``: the connection whose frame
  would pass it is closed). ``RpcServer.status()`` counts each refusal.
- Frames queued during one event-loop iteration leave in one ``transport.write``.
- A request id is used once per client; a reply for an unknown id (it timed
  out) is dropped. A call is resolved exactly once.
- Bad bytes from a peer close that connection only; a failing handler becomes
  an ``ErrorReply``. Neither stops the server.
- A handler whose connection is lost runs to completion (a half-done write is
  its own to finish) and its reply is dropped; ``RpcServer.close`` cancels it.

The implementation: ``net.handshake`` (the pure handshake), ``net.framed`` (the
Protocol both ends share), ``net.server`` (``RpcServer``) and ``net.client``
(``PeerClient``); this module is their facade and their contract, and holds
``PeerPool``, a client per peer node that peers join and leave at run time.

Each ``PeerClient`` counts its calls and their failures by kind (timeout,
unreachable, remote, overloaded; ``RpcCounters``), as plain ints on the loop
thread; ``PeerPool.counters()`` reads them for the node's metrics without
touching the network.

This module never pickles and never retries a call: whether a retry is safe is
the caller's decision (only a ``PeerUnreachable`` call is certainly not applied).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from dynakv.net.client import PeerClient, RpcCounters
from dynakv.net.framed import (
    _LIMITS,
    _TIMING,
    RECONNECT_BACKOFF_MS_MIN,
    Handler,
    HandlerResult,
    error_reply,
    split_address,
)
from dynakv.net.handshake import check_node_id, check_secret
from dynakv.net.messages import Message
from dynakv.net.server import RpcServer

__all__ = [
    "RECONNECT_BACKOFF_MS_MIN",
    "Handler",
    "HandlerResult",
    "PeerClient",
    "PeerPool",
    "RpcCounters",
    "RpcServer",
    "error_reply",
    "split_address",
]


class PeerPool:
    """A ``PeerClient`` per peer node, by node id; peers are added and removed
    at run time. Each client expects its server to prove that node id."""

    def __init__(
        self,
        peers: Mapping[str, str],
        *,
        secret: bytes,
        node_id: str,
        connect_timeout_ms: int = _TIMING.connect_timeout_ms,
        reconnect_backoff_ms_max: int = _TIMING.reconnect_backoff_ms_max,
        inflight_max: int = _LIMITS.rpc_inflight_max,
        frame_bytes_max: int = _LIMITS.rpc_frame_bytes_max,
        local_host: str | None = None,
        handshake_timeout_ms: int = _TIMING.rpc_handshake_timeout_ms,
    ) -> None:
        check_secret(secret)
        check_node_id(node_id)
        self.node_id = node_id
        self._secret = secret
        self._options = {
            "connect_timeout_ms": connect_timeout_ms,
            "reconnect_backoff_ms_max": reconnect_backoff_ms_max,
            "inflight_max": inflight_max,
            "frame_bytes_max": frame_bytes_max,
            "handshake_timeout_ms": handshake_timeout_ms,
        }
        self._local_host = local_host
        self._clients: dict[str, PeerClient] = {}
        for peer_id, address in sorted(peers.items()):
            self.add(peer_id, address)

    def add(self, node_id: str, address: str) -> None:
        """Start talking to a new peer (connected lazily, by its first call)."""
        assert node_id not in self._clients, f"peer {node_id!r} is already in the pool"
        assert node_id != self.node_id, "a node is not its own peer"
        self._clients[node_id] = PeerClient(
            address,
            secret=self._secret,
            node_id=self.node_id,
            name=node_id,
            expected_node_id=node_id,
            local_host=self._local_host,
            **self._options,
        )

    async def remove(self, node_id: str) -> None:
        """Forget a peer and close its client: its calls in flight fail as if the
        connection were lost. An unknown id is a programmer error (KeyError)."""
        client = self._clients.pop(node_id)
        await client.close()

    def node_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._clients))

    def get(self, node_id: str) -> PeerClient:
        """The client for ``node_id``; an unknown id is a programmer error (KeyError)."""
        return self._clients[node_id]

    async def call(self, node_id: str, message: Message, timeout_ms: int) -> Message:
        return await self._clients[node_id].call(message, timeout_ms)

    def start_call(
        self, node_id: str, message: Message, timeout_ms: int
    ) -> asyncio.Future[Message]:
        return self._clients[node_id].start_call(message, timeout_ms)

    def is_up(self, node_id: str) -> bool:
        return self._clients[node_id].is_up

    def status(self) -> dict[str, dict[str, object]]:
        return {node_id: self._clients[node_id].status() for node_id in self.node_ids()}

    def counters(self) -> dict[str, RpcCounters]:
        """Each current peer's call counters (no I/O; a removed peer's are gone)."""
        return {node_id: self._clients[node_id].counters() for node_id in self.node_ids()}

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self._clients.values()))

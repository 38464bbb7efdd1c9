"""Node-to-node RPC over TCP: a server that runs a handler per request, and clients.

Built on raw ``asyncio.Protocol`` (uvloop-compatible) and ``net.codec`` frames.
Each connection is pipelined: many requests are in flight at once, replies go
out in completion order and are matched by ``request_id``.

What a caller of ``PeerClient.call`` can rely on (the coordinator depends on it):

- ``PeerUnreachable``: the request certainly did NOT reach the peer (connect
  failed or timed out, the peer is in reconnect backoff after a recent
  failure, or the connection died before the request's frame was written).
- ``RpcTimeout``: the request was written and no reply came in time, or the
  connection died after it was written: the peer may or may not have applied
  it. A dead connection fails its calls at once, not at their deadline.
- ``RemoteError``: the peer answered ``ErrorReply``; ``remote_code`` is its code,
  and the attributes ``remote_message`` and ``remote_facts`` carry the rest.
  A server over its ``inflight_max`` answers ``remote_code="Overloaded"``.
- ``Overloaded``: ``inflight_max`` calls to this peer are already outstanding.
- ``LocalProtocolError``: the request's frame is over ``frame_bytes_max``.

A failed connect puts the peer in backoff (25 ms doubling to
``reconnect_backoff_ms_max``); calls during backoff fail at once with
``PeerUnreachable``. A lost connection is simply reconnected by the next call.

Invariants:

- Everything is bounded: calls in flight per client and handlers in flight per
  server connection (``inflight_max``), frame size (``frame_bytes_max``), every
  call's duration (``timeout_ms``, connect included), connect attempts (one at a
  time per peer, ``connect_timeout_ms``), and a server connection whose peer
  stops reading stops being read (so replies cannot pile up without limit).
- Frames queued during one event-loop iteration leave in one ``transport.write``.
- A request id is used once per client; a reply for an unknown id (it timed
  out) is dropped. A call is resolved exactly once.
- Bad bytes from a peer close that connection only; a failing handler becomes
  an ``ErrorReply``. Neither stops the server.
- A handler whose connection is lost runs to completion (a half-done write is
  its own to finish) and its reply is dropped; ``RpcServer.close`` cancels it.

The implementation: ``net.framed`` (the Protocol both ends share),
``net.server`` (``RpcServer``) and ``net.client`` (``PeerClient``,
``PeerPool``); this module is their facade and their contract.

This module never pickles and never retries a call: whether a retry is safe is
the caller's decision (only a ``PeerUnreachable`` call is certainly not applied).
"""

from dynakv.net.client import PeerClient, PeerPool
from dynakv.net.framed import (
    RECONNECT_BACKOFF_MS_MIN,
    Handler,
    HandlerResult,
    error_reply,
    split_address,
)
from dynakv.net.server import RpcServer

__all__ = [
    "RECONNECT_BACKOFF_MS_MIN",
    "Handler",
    "HandlerResult",
    "PeerClient",
    "PeerPool",
    "RpcServer",
    "error_reply",
    "split_address",
]

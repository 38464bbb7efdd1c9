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

This module never pickles and never retries a call: whether a retry is safe is
the caller's decision (only a ``PeerUnreachable`` call is certainly not applied).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, cast

from dynakv.config import Limits, Timing
from dynakv.errors import (
    DynakvError,
    Overloaded,
    PeerUnreachable,
    RemoteError,
    RemoteProtocolError,
    RpcTimeout,
)
from dynakv.net.codec import Envelope, FrameDecoder, encode_frame
from dynakv.net.messages import ErrorReply, Message

logger = logging.getLogger(__name__)

# A handler answers at once (a Message), later without a task of its own (a
# Future), or as a coroutine (run as a task). The first two are the hot paths:
# a task per request costs more than the rest of a replica write.
HandlerResult = Message | asyncio.Future[Message] | Awaitable[Message]
Handler = Callable[[Message], HandlerResult]
Facts = dict[str, str | int | bool | None]

_LIMITS: Final = Limits()
_TIMING: Final = Timing()
RECONNECT_BACKOFF_MS_MIN: Final = 25


def error_reply(error: DynakvError) -> ErrorReply:
    """The wire form of ``error``: its code, message and facts (non-scalars as text)."""
    facts: Facts = {name: _wire_fact(value) for name, value in sorted(error.facts().items())}
    return ErrorReply(code=error.code, message=error.message, facts=facts)


def _wire_fact(value: object) -> str | int | bool | None:
    if value is None or isinstance(value, str | bool):
        return value
    if type(value) is int and -(2**63) <= value < 2**64:  # what msgpack can carry
        return value
    return str(value)


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) as ``(host, port)``."""
    host, separator, port_text = address.rpartition(":")
    if not separator or not host or not port_text.isdigit():
        raise ValueError(f"peer address must be 'host:port', got {address!r}")
    return host.strip("[]"), int(port_text)


class _FramedProtocol(asyncio.Protocol):
    """One TCP connection carrying frames both ways, with coalesced writes."""

    def __init__(self, frame_bytes_max: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._frame_bytes_max = frame_bytes_max
        self._decoder = FrameDecoder(frame_bytes_max)
        self._transport: asyncio.Transport | None = None
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self._lost = False
        self.peer_name = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        if peername:
            self.peer_name = f"{peername[0]}:{peername[1]}"

    def data_received(self, data: bytes) -> None:
        try:
            envelopes = self._decoder.feed(data)
        except RemoteProtocolError as exc:
            logger.warning("rpc bad frame; closing peer=%s error=%r", self.peer_name, exc.message)
            self.abort()
            return
        for envelope in envelopes:
            if self._lost or not self._on_envelope(envelope):
                return

    def _on_envelope(self, envelope: Envelope) -> bool:
        """Handle one decoded envelope; False when the connection was closed for it."""
        raise NotImplementedError

    def _violation(self, reason: str) -> bool:
        logger.warning("rpc protocol violation; closing peer=%s error=%r", self.peer_name, reason)
        self.abort()
        return False

    def send(self, frame: bytes) -> None:
        self._outbox.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        transport = self._transport
        if transport is None or self._lost or transport.is_closing():
            self._outbox.clear()  # never written: connection_lost decides what that means
            return
        frames = self._outbox
        self._outbox = []
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        self._on_flushed()

    def _on_flushed(self) -> None:
        """Hook: every frame sent so far has been handed to the transport."""

    @property
    def is_lost(self) -> bool:
        return self._lost

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _ServerConnection(_FramedProtocol):
    """The server side of one connection: runs a handler task per request."""

    def __init__(self, server: RpcServer) -> None:
        super().__init__(server.frame_bytes_max)
        self._server = server
        self.inflight = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # Handlers already running finish (a half-done write is theirs to finish);
        # their replies are dropped. RpcServer.close() cancels them.
        self._lost = True
        self._server._connections.discard(self)

    def pause_writing(self) -> None:
        # The peer is not reading our replies: stop reading its requests until it does.
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def _on_envelope(self, envelope: Envelope) -> bool:
        if envelope.is_reply:
            return self._violation(f"reply {envelope.request_id} sent to a server")
        server = self._server
        if self.inflight >= server.inflight_max:
            overloaded = Overloaded(resource="rpc_server_inflight", limit=server.inflight_max)
            self._reply(envelope.request_id, error_reply(overloaded))
            return True
        request_id, request = envelope.request_id, envelope.body
        try:
            result = server._handler(request)
        except Exception as exc:
            self._reply(request_id, server._failure_reply(exc, request, self.peer_name))
            return True
        if isinstance(result, Message):
            self._reply(request_id, result)
            return True
        self.inflight += 1
        if isinstance(result, asyncio.Future):
            server._futures.add(result)
            result.add_done_callback(
                lambda future: self._on_future_done(request_id, request, future))
            return True
        task = self._loop.create_task(self._serve(request_id, request, result))
        server._tasks.add(task)
        task.add_done_callback(self._on_served)
        return True

    def _on_future_done(self, request_id: int, request: Message,
                        future: asyncio.Future[Message]) -> None:
        self.inflight -= 1
        self._server._futures.discard(future)
        if future.cancelled():
            return
        error = future.exception()
        reply: Message
        if error is not None:
            reply = self._server._failure_reply(error, request, self.peer_name)
        else:
            reply = self._server._checked_reply(future.result())
        self._reply(request_id, reply)

    def _on_served(self, task: asyncio.Task[None]) -> None:
        self.inflight -= 1
        self._server._tasks.discard(task)

    async def _serve(self, request_id: int, request: Message,
                     awaitable: Awaitable[Message]) -> None:
        reply = await self._server._run_handler(awaitable, request, self.peer_name)
        self._reply(request_id, reply)

    def _reply(self, request_id: int, body: Message) -> None:
        if self._lost:
            return
        try:
            frame = encode_frame(Envelope(request_id, True, body), self._frame_bytes_max)
        except DynakvError as exc:  # LocalProtocolError: the reply is too large
            frame = encode_frame(Envelope(request_id, True, error_reply(exc)))
        except Exception as exc:
            logger.exception("rpc reply not encodable peer=%s", self.peer_name)
            internal = ErrorReply(code="InternalError", message=f"reply not encodable: {exc!r}")
            frame = encode_frame(Envelope(request_id, True, internal))
        self.send(frame)


class RpcServer:
    """Listens on ``host:port`` and answers each request with ``handler(request)``."""

    def __init__(
        self,
        handler: Handler,
        *,
        host: str,
        port: int,
        inflight_max: int = _LIMITS.rpc_inflight_max,
        frame_bytes_max: int = _LIMITS.rpc_frame_bytes_max,
    ) -> None:
        assert inflight_max > 0 and frame_bytes_max > 0
        self._handler = handler
        self._host = host
        self._port = port
        self.inflight_max = inflight_max
        self.frame_bytes_max = frame_bytes_max
        self._server: asyncio.Server | None = None
        self._connections: set[_ServerConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._futures: set[asyncio.Future[Message]] = set()

    async def start(self) -> None:
        assert self._server is None, "started twice"
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ServerConnection(self), self._host, self._port, reuse_address=True
        )
        logger.info("rpc server listening host=%s port=%d", self._host, self.bound_port)

    @property
    def bound_port(self) -> int:
        assert self._server is not None and self._server.sockets, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def close(self) -> None:
        """Stop listening, close every connection, cancel running handlers."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            connection.close()
        for future in list(self._futures):
            future.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _run_handler(
        self, awaitable: Awaitable[Message], request: Message, peer_name: str
    ) -> Message:
        try:
            reply = await awaitable
        except Exception as exc:
            return self._failure_reply(exc, request, peer_name)
        return self._checked_reply(reply)

    @staticmethod
    def _failure_reply(exc: BaseException, request: Message, peer_name: str) -> ErrorReply:
        if isinstance(exc, DynakvError):
            return error_reply(exc)
        logger.error(
            "rpc handler failed peer=%s request=%s", peer_name, type(request).__name__,
            exc_info=exc,
        )
        return ErrorReply(code="InternalError", message=f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _checked_reply(reply: object) -> Message:
        if not isinstance(reply, Message):
            logger.error("rpc handler returned a non-message type=%s", type(reply).__name__)
            return ErrorReply(code="InternalError", message="handler returned a non-message")
        return reply


class _Call:
    """One outstanding request: the caller's future and its deadline timer."""

    __slots__ = ("future", "timeout_ms", "timer")

    def __init__(
        self, future: asyncio.Future[Message], timer: asyncio.TimerHandle, timeout_ms: int
    ) -> None:
        self.future = future
        self.timer = timer
        self.timeout_ms = timeout_ms

    def resolve(self, body: Message, peer: str) -> None:
        self.timer.cancel()
        if self.future.done():  # the caller was cancelled and has not cleaned up yet
            return
        if isinstance(body, ErrorReply):
            error = RemoteError(peer=peer, remote_code=body.code, message=body.message,
                                remote_facts=dict(body.facts))
            self.future.set_exception(error)
        else:
            self.future.set_result(body)

    def fail(self, error: Exception) -> None:
        self.timer.cancel()
        if not self.future.done():
            self.future.set_exception(error)


class _ClientConnection(_FramedProtocol):
    """The client side of one connection: the calls waiting for a reply on it."""

    def __init__(self, client: PeerClient) -> None:
        super().__init__(client.frame_bytes_max)
        self._client = client
        self.calls: dict[int, _Call] = {}
        self._unflushed_request_ids: list[int] = []
        self.lost_future: asyncio.Future[None] = self._loop.create_future()

    def start_call(self, request_id: int, frame: bytes, timeout_s: float, timeout_ms: int) -> _Call:
        """Register and queue a request; its reply or failure resolves ``future``.

        ``timeout_s`` is what is left of the caller's ``timeout_ms`` (reported in errors).
        """
        if self._lost:
            raise PeerUnreachable(peer=self._client.name, reason="connection lost before sending")
        assert request_id not in self.calls
        future: asyncio.Future[Message] = self._loop.create_future()
        timer = self._loop.call_later(timeout_s, self._expire, request_id)
        call = _Call(future, timer, timeout_ms)
        self.calls[request_id] = call
        self._unflushed_request_ids.append(request_id)
        self.send(frame)
        return call

    def forget(self, request_id: int) -> None:
        call = self.calls.pop(request_id, None)
        if call is not None:
            call.timer.cancel()

    def _expire(self, request_id: int) -> None:
        call = self.calls.pop(request_id, None)
        if call is not None:
            call.fail(RpcTimeout(peer=self._client.name, timeout_ms=call.timeout_ms))

    def _on_flushed(self) -> None:
        self._unflushed_request_ids.clear()

    def _on_envelope(self, envelope: Envelope) -> bool:
        if not envelope.is_reply:
            return self._violation(f"request {envelope.request_id} sent to a client")
        call = self.calls.pop(envelope.request_id, None)
        if call is None:
            logger.debug(
                "rpc late reply dropped peer=%s id=%d", self.peer_name, envelope.request_id
            )
            return True
        call.resolve(envelope.body, self._client.name)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        reason = f"connection lost: {exc!r}" if exc is not None else "connection closed"
        self._client._on_connection_lost(self, reason)
        name = self._client.name
        unflushed = set(self._unflushed_request_ids)
        calls = self.calls
        self.calls = {}
        for request_id, call in calls.items():
            if request_id in unflushed:
                call.fail(PeerUnreachable(peer=name, reason=f"{reason} (before sending)"))
            else:  # written: the peer may have applied it
                error = RpcTimeout(peer=name, timeout_ms=call.timeout_ms)
                error.__cause__ = ConnectionError(f"{reason} after sending, before the reply")
                call.fail(error)
        if not self.lost_future.done():
            self.lost_future.set_result(None)


class PeerClient:
    """One persistent, lazily (re)connected, pipelined connection to one peer."""

    def __init__(
        self,
        address: str,
        *,
        name: str | None = None,
        connect_timeout_ms: int = _TIMING.connect_timeout_ms,
        reconnect_backoff_ms_max: int = _TIMING.reconnect_backoff_ms_max,
        inflight_max: int = _LIMITS.rpc_inflight_max,
        frame_bytes_max: int = _LIMITS.rpc_frame_bytes_max,
        local_host: str | None = None,
    ) -> None:
        assert connect_timeout_ms > 0 and reconnect_backoff_ms_max > 0 and inflight_max > 0
        self.address = address
        self._host, self._port = split_address(address)
        self.name = name if name is not None else address
        self.connect_timeout_ms = connect_timeout_ms
        self.reconnect_backoff_ms_max = reconnect_backoff_ms_max
        self.inflight_max = inflight_max
        self.frame_bytes_max = frame_bytes_max
        self.local_host = local_host
        self.last_error: str | None = None
        self._connection: _ClientConnection | None = None
        self._connect_task: asyncio.Task[_ClientConnection | None] | None = None
        self._failures = 0
        self._retry_at_s = 0.0  # time.monotonic() before which we do not reconnect
        self._calls_active = 0  # calls inside call(), connecting ones included
        self._request_ids = itertools.count(1)
        self._closed = False

    @property
    def is_up(self) -> bool:
        """Connected, or free to try connecting (not in backoff after a failure)."""
        return self._connection is not None or time.monotonic() >= self._retry_at_s

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    @property
    def inflight(self) -> int:
        return self._calls_active

    def start_call(self, message: Message, timeout_ms: int) -> asyncio.Future[Message]:
        """``call`` as a Future, with no task when the connection is up (the hot path).

        Same semantics and errors as ``call``; errors arrive through the Future.
        Cancelling the Future forgets the call.
        """
        connection = self._connection
        if connection is None or self._calls_active >= self.inflight_max:
            return asyncio.ensure_future(self.call(message, timeout_ms))
        request_id = next(self._request_ids)
        try:
            frame = encode_frame(Envelope(request_id, False, message), self.frame_bytes_max)
            call = connection.start_call(request_id, frame, timeout_ms / 1000, timeout_ms)
        except DynakvError as exc:
            failed: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed
        self._calls_active += 1
        future = call.future

        def on_done(_: asyncio.Future[Message]) -> None:
            self._calls_active -= 1
            if future.cancelled():
                connection.forget(request_id)

        future.add_done_callback(on_done)
        return future

    async def call(self, message: Message, timeout_ms: int) -> Message:
        """Send ``message`` and return the reply; see the module docstring for errors."""
        assert timeout_ms > 0, timeout_ms
        if self._calls_active >= self.inflight_max:
            raise Overloaded(
                resource=f"rpc calls in flight to {self.name}", limit=self.inflight_max
            )
        self._calls_active += 1
        try:
            connection = self._connection
            timeout_s = timeout_ms / 1000
            if connection is None:  # the connect counts against the call's timeout
                started_s = time.monotonic()
                connection = await self._connected(timeout_ms)
                timeout_s = max(0.001, timeout_s - (time.monotonic() - started_s))
            request_id = next(self._request_ids)
            frame = encode_frame(Envelope(request_id, False, message), self.frame_bytes_max)
            call = connection.start_call(request_id, frame, timeout_s, timeout_ms)
            try:
                return await call.future
            except asyncio.CancelledError:
                connection.forget(request_id)
                raise
        finally:
            self._calls_active -= 1

    async def _connected(self, timeout_ms: int) -> _ClientConnection:
        if self._closed:
            raise PeerUnreachable(peer=self.name, reason="client closed")
        task = self._connect_task
        if task is None:
            wait_s = self._retry_at_s - time.monotonic()
            if wait_s > 0:
                reason = f"reconnect backoff for {int(wait_s * 1000)} ms after: {self.last_error}"
                raise PeerUnreachable(peer=self.name, reason=reason)
            task = asyncio.get_running_loop().create_task(self._connect())
            self._connect_task = task
        try:
            # Not wait_for: on 3.11 it can swallow a cancel that races with the result.
            async with asyncio.timeout(timeout_ms / 1000):
                connection = await asyncio.shield(task)
        except TimeoutError:
            reason = f"connect to {self.address} unfinished at the call's {timeout_ms} ms timeout"
            raise PeerUnreachable(peer=self.name, reason=reason) from None
        if connection is None:
            reason = "client closed" if self._closed else self.last_error or "connect failed"
            raise PeerUnreachable(peer=self.name, reason=reason)
        return connection

    async def _connect(self) -> _ClientConnection | None:
        """One connect attempt, shared by every call waiting for it; never raises."""
        loop = asyncio.get_running_loop()
        local_addr = (self.local_host, 0) if self.local_host is not None else None
        try:
            async with asyncio.timeout(self.connect_timeout_ms / 1000):
                _, connection = await loop.create_connection(
                    lambda: _ClientConnection(self), self._host, self._port, local_addr=local_addr
                )
        except asyncio.CancelledError:
            if self._closed:  # close() cancelled us: waiters get PeerUnreachable, not a cancel
                return None
            raise
        except (OSError, TimeoutError) as exc:
            self._on_connect_failed(f"connect to {self.address} failed: {exc!r}")
            return None
        finally:
            self._connect_task = None
        if self._closed:
            connection.abort()
            return None
        if connection.is_lost:  # the peer hung up before we resumed: no connection_lost to come
            self._on_connect_failed(f"connection to {self.address} closed right after connecting")
            return None
        self._connection = connection
        self._failures = 0
        logger.info("rpc connected peer=%s address=%s", self.name, self.address)
        return connection

    def _on_connect_failed(self, reason: str) -> None:
        self._failures += 1
        backoff_ms = min(
            RECONNECT_BACKOFF_MS_MIN * 2 ** min(self._failures - 1, 30),
            self.reconnect_backoff_ms_max,
        )
        self._retry_at_s = time.monotonic() + backoff_ms / 1000
        self.last_error = reason
        logger.info(
            "rpc connect failed peer=%s failures=%d backoff_ms=%d reason=%r",
            self.name,
            self._failures,
            backoff_ms,
            reason,
        )

    def _on_connection_lost(self, connection: _ClientConnection, reason: str) -> None:
        if self._connection is connection:
            self._connection = None
            self.last_error = reason
            logger.info("rpc connection lost peer=%s reason=%r", self.name, reason)

    def status(self) -> dict[str, object]:
        return {
            "address": self.address,
            "up": self.is_up,
            "connected": self.is_connected,
            "last_error": self.last_error,
            "inflight": self.inflight,
        }

    async def close(self) -> None:
        """Drop the connection (its calls fail as if it were lost); refuse new calls."""
        self._closed = True
        task = self._connect_task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        connection = self._connection
        if connection is not None:
            connection.abort()
            await connection.lost_future


class PeerPool:
    """A ``PeerClient`` per peer node, by node id."""

    def __init__(
        self,
        peers: Mapping[str, str],
        *,
        connect_timeout_ms: int = _TIMING.connect_timeout_ms,
        reconnect_backoff_ms_max: int = _TIMING.reconnect_backoff_ms_max,
        inflight_max: int = _LIMITS.rpc_inflight_max,
        frame_bytes_max: int = _LIMITS.rpc_frame_bytes_max,
        local_host: str | None = None,
    ) -> None:
        self._clients = {
            node_id: PeerClient(
                address,
                name=node_id,
                connect_timeout_ms=connect_timeout_ms,
                reconnect_backoff_ms_max=reconnect_backoff_ms_max,
                inflight_max=inflight_max,
                frame_bytes_max=frame_bytes_max,
                local_host=local_host,
            )
            for node_id, address in sorted(peers.items())
        }

    def get(self, node_id: str) -> PeerClient:
        """The client for ``node_id``; an unknown id is a programmer error (KeyError)."""
        return self._clients[node_id]

    async def call(self, node_id: str, message: Message, timeout_ms: int) -> Message:
        return await self._clients[node_id].call(message, timeout_ms)

    def start_call(self, node_id: str, message: Message, timeout_ms: int
                   ) -> asyncio.Future[Message]:
        return self._clients[node_id].start_call(message, timeout_ms)

    def is_up(self, node_id: str) -> bool:
        return self._clients[node_id].is_up

    def status(self) -> dict[str, dict[str, object]]:
        return {node_id: client.status() for node_id, client in self._clients.items()}

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self._clients.values()))

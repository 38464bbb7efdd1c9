"""The RPC server: authenticates each connection, then runs a handler per
request, many in flight per connection.

A handler answers at once, with a Future, or as a coroutine (the only case
that costs a task). Before that, each connection must pass ``net.handshake``
within ``handshake_timeout_ms``; the server also bounds its connections
(``connections_max``), the time a frame may take to arrive once begun
(``frame_timeout_ms``), and the bytes of incomplete frames held across all
connections (``buffered_bytes_total_max``). Each refusal closes that connection
only, is counted in ``status()`` and logged (rate-limited) with the peer's
address. See ``net.rpc`` for the contract."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable
from typing import cast

from dynakv.errors import (
    DynakvError,
    Overloaded,
)
from dynakv.net.codec import Envelope, encode_frame
from dynakv.net.framed import (
    _LIMITS,
    _TIMING,
    Handler,
    RateLimitedWarnings,
    _FramedProtocol,
    error_reply,
    logger,
)
from dynakv.net.handshake import (
    HANDSHAKE_FRAME_BYTES_MIN,
    NONCE_BYTES,
    HandshakeMessage,
    HandshakeRefused,
    ServerHandshake,
    check_node_id,
    check_secret,
)
from dynakv.net.messages import ErrorReply, Message


class _ServerConnection(_FramedProtocol):
    """The server side of one connection: the handshake, then a handler per request."""

    def __init__(self, server: RpcServer) -> None:
        super().__init__(
            server.frame_bytes_max, server.handshake_frame_bytes_max, server.handshake_timeout_ms
        )
        self._server = server
        self._handshake = ServerHandshake(
            secret=server._secret,
            node_id=server.node_id,
            nonce=secrets.token_bytes(NONCE_BYTES),
            accepted=server._secrets_accepted,
        )
        self.sender = ""  # the client's node id, once it has proven the secret
        self.inflight = 0
        self._over_limit = False  # refused by connections_max: never counted as a connection
        self._buffered_accounted = 0  # our share of server.buffered_bytes
        self._partial_started_s: float | None = None  # when the incomplete frame began
        self._frame_timer: asyncio.TimerHandle | None = None
        self._frame_timer_for_s: float | None = None  # the start the timer was armed for
        self._reading_paused = False

    @property
    def is_authenticated(self) -> bool:
        return bool(self.sender)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        if len(server._connections) >= server.connections_max:
            self._over_limit = True
            peername = transport.get_extra_info("peername")
            server._refuse_connection(f"{peername[0]}:{peername[1]}" if peername else "?")
            self._transport = cast(asyncio.Transport, transport)
            self.abort()
            return
        super().connection_made(transport)
        server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # Handlers already running finish (a half-done write is theirs to finish);
        # their replies are dropped. RpcServer.close() cancels them.
        if self._over_limit:
            self._lost = True
            return
        super().connection_lost(exc)
        self._server._connections.discard(self)
        self._server.buffered_bytes -= self._buffered_accounted
        self._buffered_accounted = 0
        if self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None

    def pause_writing(self) -> None:
        # The peer is not reading our replies: stop reading its requests until it does.
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()
            self._reading_paused = True

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
            self._reading_paused = False
            if self._partial_started_s is not None:  # our pause is not the peer's delay
                self._partial_started_s = self._loop.time()
                self._arm_frame_timer()

    # -- the handshake ---------------------------------------------------------

    def _on_handshake_message(self, message: HandshakeMessage) -> bool:
        self.send_handshake(self._handshake.receive(message))
        return self._handshake.peer_node_id is not None

    def _on_handshake_complete(self) -> None:
        sender = self._handshake.peer_node_id
        assert sender is not None
        self.sender = sender
        logger.info("rpc peer authenticated peer=%s node=%s", self.peer_name, sender)

    def _on_handshake_failed(self, error: HandshakeRefused) -> None:
        self._server._refuse_handshake(self.peer_name, error)

    # -- bounds on incomplete frames -------------------------------------------

    def _after_feed(self, frames_completed: bool) -> bool:
        server = self._server
        buffered = self.buffered_bytes
        grown = buffered - self._buffered_accounted
        if grown:
            server.buffered_bytes += grown
            self._buffered_accounted = buffered
            if grown > 0 and server.buffered_bytes > server.buffered_bytes_total_max:
                server._refuse_buffered(self.peer_name, buffered)
                self.abort()
                return False
        if not buffered:
            self._partial_started_s = None  # an armed timer finds nothing and stops
        elif self._handshake_decoder is None and (
            frames_completed or self._partial_started_s is None
        ):
            # A new frame began in this chunk (the decoder holds at most one).
            self._partial_started_s = self._loop.time()
            self._arm_frame_timer()
        return True

    def _arm_frame_timer(self) -> None:
        if self._frame_timer is None and not self._reading_paused:
            started_s = self._partial_started_s
            assert started_s is not None
            self._frame_timer_for_s = started_s
            self._frame_timer = self._loop.call_at(
                started_s + self._server.frame_timeout_ms / 1000, self._on_frame_timer
            )

    def _on_frame_timer(self) -> None:
        self._frame_timer = None
        started_s = self._partial_started_s
        if self._lost or started_s is None or self._reading_paused:
            return
        if started_s != self._frame_timer_for_s:  # that frame arrived; time the current one
            self._arm_frame_timer()
            return
        self._server._refuse_slow_frame(self.peer_name, self.buffered_bytes)
        self.abort()

    # -- requests ----------------------------------------------------------------

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
            result = server._handler(request, self.sender)
        except Exception as exc:
            self._reply(request_id, server._failure_reply(exc, request, self.sender))
            return True
        if isinstance(result, Message):
            self._reply(request_id, result)
            return True
        self.inflight += 1
        if isinstance(result, asyncio.Future):
            server._futures.add(result)
            result.add_done_callback(
                lambda future: self._on_future_done(request_id, request, future)
            )
            return True
        task = self._loop.create_task(self._serve(request_id, request, result))
        server._tasks.add(task)
        task.add_done_callback(self._on_served)
        return True

    def _on_future_done(
        self, request_id: int, request: Message, future: asyncio.Future[Message]
    ) -> None:
        self.inflight -= 1
        self._server._futures.discard(future)
        if future.cancelled():
            return
        error = future.exception()
        reply: Message
        if error is not None:
            reply = self._server._failure_reply(error, request, self.sender)
        else:
            reply = self._server._checked_reply(future.result())
        self._reply(request_id, reply)

    def _on_served(self, task: asyncio.Task[None]) -> None:
        self.inflight -= 1
        self._server._tasks.discard(task)

    async def _serve(
        self, request_id: int, request: Message, awaitable: Awaitable[Message]
    ) -> None:
        reply = await self._server._run_handler(awaitable, request, self.sender)
        self._reply(request_id, reply)

    def _reply(self, request_id: int, body: Message) -> None:
        if self._lost:
            return
        try:
            frame = encode_frame(Envelope(request_id, True, body), self._frame_bytes_max)
        except DynakvError as exc:  # LocalProtocolError: the reply is too large
            frame = encode_frame(Envelope(request_id, True, error_reply(exc)))
        except Exception as exc:
            logger.exception("rpc reply not encodable peer=%s", self.sender)
            internal = ErrorReply(code="InternalError", message=f"reply not encodable: {exc!r}")
            frame = encode_frame(Envelope(request_id, True, internal))
        self.send(frame)


class RpcServer:
    """Listens on ``host:port`` and answers each request from a proven member
    with ``handler(request, sender)``, ``sender`` being that member's node id."""

    def __init__(
        self,
        handler: Handler,
        *,
        host: str,
        port: int,
        secret: bytes,
        secrets_accepted: tuple[bytes, ...] = (),
        node_id: str,
        inflight_max: int = _LIMITS.rpc_inflight_max,
        frame_bytes_max: int = _LIMITS.rpc_frame_bytes_max,
        connections_max: int = _LIMITS.rpc_connections_max,
        handshake_frame_bytes_max: int = _LIMITS.rpc_handshake_frame_bytes_max,
        handshake_timeout_ms: int = _TIMING.rpc_handshake_timeout_ms,
        frame_timeout_ms: int = _TIMING.rpc_frame_timeout_ms,
        buffered_bytes_total_max: int = _LIMITS.rpc_buffered_bytes_total_max,
    ) -> None:
        check_secret(secret)
        check_node_id(node_id)
        assert inflight_max > 0 and connections_max > 0
        assert HANDSHAKE_FRAME_BYTES_MIN <= handshake_frame_bytes_max <= frame_bytes_max, (
            f"handshake_frame_bytes_max must be {HANDSHAKE_FRAME_BYTES_MIN}..frame_bytes_max"
        )
        assert handshake_timeout_ms > 0 and frame_timeout_ms > 0 and buffered_bytes_total_max > 0
        self._handler = handler
        self._host = host
        self._port = port
        self._secret = secret
        self._secrets_accepted = secrets_accepted
        self.node_id = node_id
        self.inflight_max = inflight_max
        self.frame_bytes_max = frame_bytes_max
        self.connections_max = connections_max
        self.handshake_frame_bytes_max = handshake_frame_bytes_max
        self.handshake_timeout_ms = handshake_timeout_ms
        self.frame_timeout_ms = frame_timeout_ms
        self.buffered_bytes_total_max = buffered_bytes_total_max
        self.buffered_bytes = 0  # of incomplete frames, across every connection
        self.handshakes_refused_total = 0
        self.connections_refused_total = 0
        self.frames_timed_out_total = 0
        self.buffer_overflows_total = 0
        self._warnings = RateLimitedWarnings()
        self._closing = False
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

    def status(self) -> dict[str, int]:
        """Counts for operators; nothing secret."""
        return {
            "connections": len(self._connections),
            "authenticated": sum(1 for c in self._connections if c.is_authenticated),
            "handshakes_refused_total": self.handshakes_refused_total,
            "connections_refused_total": self.connections_refused_total,
            "frames_timed_out_total": self.frames_timed_out_total,
            "buffer_overflows_total": self.buffer_overflows_total,
            "buffered_bytes": self.buffered_bytes,
        }

    # -- refusals: counted, and logged at most once a second per reason --------

    def _warn(self, key: str, message: str, *args: object) -> None:
        self._warnings.warning(asyncio.get_running_loop().time(), key, message, *args)

    def _refuse_connection(self, peer: str) -> None:
        self.connections_refused_total += 1
        self._warn(
            "connections_max",
            "rpc connection refused; over connections_max peer=%s connections_max=%d",
            peer,
            self.connections_max,
        )

    def _refuse_handshake(self, peer: str, error: HandshakeRefused) -> None:
        if self._closing:  # our own close, not the peer's failure
            return
        self.handshakes_refused_total += 1
        self._warn(
            f"handshake_{error.reason}",
            "rpc handshake refused; closing peer=%s reason=%s detail=%r",
            peer,
            error.reason,
            error.detail,
        )

    def _refuse_slow_frame(self, peer: str, buffered: int) -> None:
        self.frames_timed_out_total += 1
        self._warn(
            "frame_timeout",
            "rpc frame incomplete after frame_timeout_ms; closing peer=%s buffered_bytes=%d"
            " frame_timeout_ms=%d",
            peer,
            buffered,
            self.frame_timeout_ms,
        )

    def _refuse_buffered(self, peer: str, buffered: int) -> None:
        self.buffer_overflows_total += 1
        self._warn(
            "buffered_total",
            "rpc incomplete frames over buffered_bytes_total_max; closing peer=%s"
            " buffered_bytes=%d buffered_bytes_total_max=%d",
            peer,
            buffered,
            self.buffered_bytes_total_max,
        )

    async def close(self) -> None:
        """Stop listening, close every connection, cancel running handlers."""
        if self._server is None:
            return
        self._closing = True
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
        self, awaitable: Awaitable[Message], request: Message, sender: str
    ) -> Message:
        try:
            reply = await awaitable
        except Exception as exc:
            return self._failure_reply(exc, request, sender)
        return self._checked_reply(reply)

    @staticmethod
    def _failure_reply(exc: BaseException, request: Message, sender: str) -> ErrorReply:
        if isinstance(exc, DynakvError):
            return error_reply(exc)
        logger.error(
            "rpc handler failed peer=%s request=%s",
            sender,
            type(request).__name__,
            exc_info=exc,
        )
        return ErrorReply(code="InternalError", message=f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _checked_reply(reply: object) -> Message:
        if not isinstance(reply, Message):
            logger.error("rpc handler returned a non-message type=%s", type(reply).__name__)
            return ErrorReply(code="InternalError", message="handler returned a non-message")
        return reply

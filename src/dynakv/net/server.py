"""The RPC server: runs a handler per request, many in flight per connection.

A handler answers at once, with a Future, or as a coroutine (the only case
that costs a task). See ``net.rpc`` for the contract."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from dynakv.errors import (
    DynakvError,
    Overloaded,
)
from dynakv.net.codec import Envelope, encode_frame
from dynakv.net.framed import (
    _LIMITS,
    Handler,
    _FramedProtocol,
    error_reply,
    logger,
)
from dynakv.net.messages import ErrorReply, Message


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
            result = server._handler(request, self.peer_name)
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
            reply = self._server._failure_reply(error, request, self.peer_name)
        else:
            reply = self._server._checked_reply(future.result())
        self._reply(request_id, reply)

    def _on_served(self, task: asyncio.Task[None]) -> None:
        self.inflight -= 1
        self._server._tasks.discard(task)

    async def _serve(
        self, request_id: int, request: Message, awaitable: Awaitable[Message]
    ) -> None:
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
            "rpc handler failed peer=%s request=%s",
            peer_name,
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

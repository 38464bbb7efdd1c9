"""The RPC client: one pipelined, lazily reconnected connection per peer,
and a pool of them by node id. See ``net.rpc`` for the error contract."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping

from dynakv.errors import (
    DynakvError,
    Overloaded,
    PeerUnreachable,
    RemoteError,
    RpcTimeout,
)
from dynakv.net.codec import Envelope, encode_frame
from dynakv.net.framed import (
    _LIMITS,
    _TIMING,
    RECONNECT_BACKOFF_MS_MIN,
    _FramedProtocol,
    logger,
    split_address,
)
from dynakv.net.messages import ErrorReply, Message


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
            error = RemoteError(
                peer=peer,
                remote_code=body.code,
                message=body.message,
                remote_facts=dict(body.facts),
            )
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

    def start_call(
        self, node_id: str, message: Message, timeout_ms: int
    ) -> asyncio.Future[Message]:
        return self._clients[node_id].start_call(message, timeout_ms)

    def is_up(self, node_id: str) -> bool:
        return self._clients[node_id].is_up

    def status(self) -> dict[str, dict[str, object]]:
        return {node_id: client.status() for node_id, client in self._clients.items()}

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self._clients.values()))

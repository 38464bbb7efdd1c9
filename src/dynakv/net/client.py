"""The RPC client: one pipelined, lazily reconnected connection per peer
(``net.rpc.PeerPool`` keeps one per peer node).

Connecting is a TCP connect and then the ``net.handshake`` (within
``connect_timeout_ms``, the handshake also within ``handshake_timeout_ms``):
a connection is used for calls only once the server has proven the cluster
secret. Time is the event loop's clock (``loop.time()``), so a virtual loop
drives backoff too. See ``net.rpc`` for the error contract.

Each client counts its calls and how they failed (``RpcCounters``, read by the
node's metrics): plain ints bumped on the loop thread where a failure is
decided, so the hot path pays one increment per call and nothing else. A
failure is counted once, by the error its caller sees: ``RpcTimeout`` (timeout),
``PeerUnreachable`` (unreachable), ``RemoteError`` (remote), ``Overloaded``
(overloaded).

Deadlines: a call whose deadline is not earlier than the last one queued on
its connection (the common case: one timeout for every call) joins that
connection's deadline queue, swept by one timer, instead of arming a timer of
its own (a uvloop timer armed and cancelled cost ~7 µs per call, measured on
the bench machine). The sweep expires every call past its deadline and re-arms
at the next one, no sooner than ``DEADLINE_SWEEP_S`` later, so such a call
times out at most that much late. A call with an earlier deadline than the
queue's last (a shorter timeout) gets a timer of its own. The queue holds one
entry per call started in the last timeout, and is compacted when it passes
``DEADLINES_MAX`` (answered calls dropped)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
from dataclasses import dataclass
from typing import Final

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
from dynakv.net.handshake import (
    NONCE_BYTES,
    REASON_CLOSED,
    ClientHandshake,
    HandshakeMessage,
    HandshakeRefused,
    check_node_id,
    check_secret,
)
from dynakv.net.messages import ErrorReply, Message

DEADLINE_SWEEP_S: Final = 0.01  # how late a queued call may time out, at most
DEADLINES_MAX: Final = 65536  # queued deadlines per connection before a compaction


@dataclass(frozen=True, slots=True)
class RpcCounters:
    """One peer's calls since this client was made, and how they failed."""

    calls_total: int
    timeouts_total: int
    unreachable_total: int
    remote_errors_total: int
    overloaded_total: int


class _Call:
    """One outstanding request: the caller's future and its own deadline timer
    (None when the connection's deadline queue times it)."""

    __slots__ = ("future", "timeout_ms", "timer")

    def __init__(
        self, future: asyncio.Future[Message], timer: asyncio.TimerHandle | None, timeout_ms: int
    ) -> None:
        self.future = future
        self.timer = timer
        self.timeout_ms = timeout_ms

    def resolve(self, body: Message, peer: str) -> bool:
        """Settle the call with ``body``; True if the peer answered an error."""
        if self.timer is not None:
            self.timer.cancel()
        if self.future.done():  # the caller was cancelled and has not cleaned up yet
            return False
        if isinstance(body, ErrorReply):
            error = RemoteError(
                peer=peer,
                remote_code=body.code,
                message=body.message,
                remote_facts=dict(body.facts),
            )
            self.future.set_exception(error)
            return True
        self.future.set_result(body)
        return False

    def fail(self, error: Exception) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.future.done():
            self.future.set_exception(error)


class _ClientConnection(_FramedProtocol):
    """The client side of one connection: the calls waiting for a reply on it."""

    def __init__(self, client: PeerClient) -> None:
        super().__init__(
            client.frame_bytes_max,
            _LIMITS.rpc_handshake_frame_bytes_max,
            client.handshake_timeout_ms,
        )
        self._client = client
        self._handshake = ClientHandshake(
            secret=client._secret,
            node_id=client.node_id,
            nonce=secrets.token_bytes(NONCE_BYTES),
            expected_peer=client.expected_node_id,
        )
        # The server's proven node id, or HandshakeRefused.
        self.handshake_done: asyncio.Future[str] = self._loop.create_future()
        self.handshake_done.add_done_callback(_retrieve)
        self.calls: dict[int, _Call] = {}
        # (deadline in loop time, request id), deadlines never decreasing; swept by one timer.
        self._deadlines: collections.deque[tuple[float, int]] = collections.deque()
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._unflushed_request_ids: list[int] = []
        self.lost_future: asyncio.Future[None] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.send_handshake(self._handshake.start())

    def _on_handshake_message(self, message: HandshakeMessage) -> bool:
        reply = self._handshake.receive(message)
        if reply is None:
            return True
        self.send_handshake(reply)
        return False

    def _on_handshake_complete(self) -> None:
        peer_node_id = self._handshake.peer_node_id
        assert peer_node_id is not None
        if not self.handshake_done.done():
            self.handshake_done.set_result(peer_node_id)

    def _on_handshake_failed(self, error: HandshakeRefused) -> None:
        if error.reason == REASON_CLOSED:
            error = HandshakeRefused(
                REASON_CLOSED,
                "the server closed the connection after our proof (a different cluster secret?)"
                if self._handshake.proof_sent
                else "the server closed the connection before proving itself"
                " (over its connections_max, or not a dynakv RPC port?)",
            )
        if not self.handshake_done.done():
            self.handshake_done.set_exception(error)

    def start_call(self, request_id: int, frame: bytes, timeout_s: float, timeout_ms: int) -> _Call:
        """Register and queue a request; its reply or failure resolves ``future``.

        ``timeout_s`` is what is left of the caller's ``timeout_ms`` (reported in errors).
        """
        if self._lost:
            self._client.unreachable_total += 1
            raise PeerUnreachable(peer=self._client.name, reason="connection lost before sending")
        assert request_id not in self.calls
        future: asyncio.Future[Message] = self._loop.create_future()
        deadline_s = self._loop.time() + timeout_s
        deadlines = self._deadlines
        timer = None
        if not deadlines or deadline_s >= deadlines[-1][0]:
            if len(deadlines) >= DEADLINES_MAX:
                self._compact_deadlines()
            deadlines.append((deadline_s, request_id))
            if self._sweep_timer is None:
                self._sweep_timer = self._loop.call_at(deadline_s, self._sweep)
        else:  # a shorter timeout than the queue's last: its own timer
            timer = self._loop.call_at(deadline_s, self._expire, request_id)
        call = _Call(future, timer, timeout_ms)
        self.calls[request_id] = call
        self._unflushed_request_ids.append(request_id)
        self.send(frame)
        return call

    def forget(self, request_id: int) -> None:
        call = self.calls.pop(request_id, None)
        if call is not None and call.timer is not None:
            call.timer.cancel()

    def _expire(self, request_id: int) -> None:
        call = self.calls.pop(request_id, None)
        if call is not None:
            self._client.timeouts_total += 1
            call.fail(RpcTimeout(peer=self._client.name, timeout_ms=call.timeout_ms))

    def _sweep(self) -> None:
        """Expire every queued call past its deadline; re-arm for the next one."""
        self._sweep_timer = None
        if self._lost:
            return
        deadlines = self._deadlines
        now_s = self._loop.time()
        while deadlines and deadlines[0][0] <= now_s:
            self._expire(deadlines.popleft()[1])  # a no-op for a call already answered
        if deadlines:
            next_s = max(deadlines[0][0], now_s + DEADLINE_SWEEP_S)
            self._sweep_timer = self._loop.call_at(next_s, self._sweep)

    def _compact_deadlines(self) -> None:
        """Drop the queued deadlines of calls already settled (order is kept)."""
        calls = self.calls
        kept = [entry for entry in self._deadlines if entry[1] in calls]
        self._deadlines = collections.deque(kept)

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
        if call.resolve(envelope.body, self._client.name):
            self._client.remote_errors_total += 1
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        self._deadlines.clear()
        reason = f"connection lost: {exc!r}" if exc is not None else "connection closed"
        self._client._on_connection_lost(self, reason)
        name = self._client.name
        unflushed = set(self._unflushed_request_ids)
        calls = self.calls
        self.calls = {}
        client = self._client
        for request_id, call in calls.items():
            if request_id in unflushed:
                client.unreachable_total += 1
                call.fail(PeerUnreachable(peer=name, reason=f"{reason} (before sending)"))
            else:  # written: the peer may have applied it
                client.timeouts_total += 1
                error = RpcTimeout(peer=name, timeout_ms=call.timeout_ms)
                error.__cause__ = ConnectionError(f"{reason} after sending, before the reply")
                call.fail(error)
        if not self.lost_future.done():
            self.lost_future.set_result(None)


def _retrieve(future: asyncio.Future[str]) -> None:
    """Mark a failed handshake's error as seen: nobody may be waiting for it any more."""
    if not future.cancelled():
        future.exception()


class PeerClient:
    """One persistent, lazily (re)connected, pipelined connection to one peer.

    ``node_id`` and ``secret`` are what this node proves in the handshake; with
    ``expected_node_id``, a server that proves another node id is refused.
    """

    def __init__(
        self,
        address: str,
        *,
        secret: bytes,
        node_id: str,
        name: str | None = None,
        expected_node_id: str | None = None,
        connect_timeout_ms: int = _TIMING.connect_timeout_ms,
        reconnect_backoff_ms_max: int = _TIMING.reconnect_backoff_ms_max,
        inflight_max: int = _LIMITS.rpc_inflight_max,
        frame_bytes_max: int = _LIMITS.rpc_frame_bytes_max,
        local_host: str | None = None,
        handshake_timeout_ms: int = _TIMING.rpc_handshake_timeout_ms,
    ) -> None:
        assert connect_timeout_ms > 0 and reconnect_backoff_ms_max > 0 and inflight_max > 0
        # A compaction keeps the outstanding calls only: they must fit the queue's bound.
        assert inflight_max < DEADLINES_MAX, (inflight_max, DEADLINES_MAX)
        assert handshake_timeout_ms > 0
        check_secret(secret)
        check_node_id(node_id)
        self._secret = secret
        self.node_id = node_id
        self.expected_node_id = expected_node_id
        self.handshake_timeout_ms = handshake_timeout_ms
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
        self._retry_at_s = 0.0  # loop.time() before which we do not reconnect
        self._calls_active = 0  # calls inside call(), connecting ones included
        self._request_ids = itertools.count(1)
        self._closed = False
        self.calls_total = 0
        self.timeouts_total = 0
        self.unreachable_total = 0
        self.remote_errors_total = 0
        self.overloaded_total = 0

    @property
    def is_up(self) -> bool:
        """Connected, or free to try connecting (not in backoff after a failure)."""
        if self._connection is not None or self._failures == 0:
            return True
        return _now_s() >= self._retry_at_s

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
        self.calls_total += 1
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
        self.calls_total += 1
        if self._calls_active >= self.inflight_max:
            self.overloaded_total += 1
            raise Overloaded(
                resource=f"rpc calls in flight to {self.name}", limit=self.inflight_max
            )
        self._calls_active += 1
        try:
            connection = self._connection
            timeout_s = timeout_ms / 1000
            if connection is None:  # the connect counts against the call's timeout
                started_s = _now_s()
                try:
                    connection = await self._connected(timeout_ms)
                except PeerUnreachable:
                    self.unreachable_total += 1
                    raise
                timeout_s = max(0.001, timeout_s - (_now_s() - started_s))
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
            wait_s = self._retry_at_s - _now_s()
            if wait_s > 0:
                reason = f"reconnect backoff for {int(wait_s * 1000)} ms after: {self.last_error}"
                raise PeerUnreachable(peer=self.name, reason=reason)
            task = asyncio.get_running_loop().create_task(self._connect())
            self._connect_task = task
        # Not wait_for (on 3.11 it can swallow a cancel that races with the
        # result) and not asyncio.timeout (it needs a current task, and the HTTP
        # layer steps a request's coroutine eagerly, outside any task).
        done, _ = await asyncio.wait((task,), timeout=timeout_ms / 1000)
        if not done:
            reason = f"connect to {self.address} unfinished at the call's {timeout_ms} ms timeout"
            raise PeerUnreachable(peer=self.name, reason=reason)
        connection = task.result()
        if connection is None:
            reason = "client closed" if self._closed else self.last_error or "connect failed"
            raise PeerUnreachable(peer=self.name, reason=reason)
        return connection

    async def _connect(self) -> _ClientConnection | None:
        """One connect attempt and handshake, shared by every call waiting for it;
        never raises."""
        loop = asyncio.get_running_loop()
        local_addr = (self.local_host, 0) if self.local_host is not None else None
        connection: _ClientConnection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_ms / 1000):
                _, connection = await loop.create_connection(
                    lambda: _ClientConnection(self), self._host, self._port, local_addr=local_addr
                )
                await asyncio.shield(connection.handshake_done)
        except asyncio.CancelledError:
            if connection is not None:
                connection.abort()
            if self._closed:  # close() cancelled us: waiters get PeerUnreachable, not a cancel
                return None
            raise
        except HandshakeRefused as exc:
            self._on_connect_failed(f"handshake failed: {exc.message}")
            return None
        except (OSError, TimeoutError) as exc:
            if connection is None:
                self._on_connect_failed(f"connect to {self.address} failed: {exc!r}")
            else:  # connected, but the handshake did not finish in time
                connection.abort()
                self._on_connect_failed(
                    f"handshake failed: unfinished at connect_timeout_ms={self.connect_timeout_ms}"
                )
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
        logger.info(
            "rpc connected peer=%s address=%s node=%s",
            self.name,
            self.address,
            connection.handshake_done.result(),
        )
        return connection

    def _on_connect_failed(self, reason: str) -> None:
        self._failures += 1
        backoff_ms = min(
            RECONNECT_BACKOFF_MS_MIN * 2 ** min(self._failures - 1, 30),
            self.reconnect_backoff_ms_max,
        )
        self._retry_at_s = _now_s() + backoff_ms / 1000
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

    def counters(self) -> RpcCounters:
        return RpcCounters(
            calls_total=self.calls_total,
            timeouts_total=self.timeouts_total,
            unreachable_total=self.unreachable_total,
            remote_errors_total=self.remote_errors_total,
            overloaded_total=self.overloaded_total,
        )

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


def _now_s() -> float:
    return asyncio.get_running_loop().time()

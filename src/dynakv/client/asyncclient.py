"""``dynakv.AsyncClient``: the asyncio client, a small HTTP/1.1 client of our own.

Each endpoint keeps a bounded pool of idle keep-alive connections
(``asyncio`` streams); concurrent calls each take their own connection, so
requests on one connection never interleave. Responses are framed by
Content-Length (the API always sends it), or by the connection closing.
Failover and error mapping follow ``dynakv.client.common``. A call cancelled
mid-flight closes its connection: its state is unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final

from dynakv.client.common import (
    BATCH_GETS_MAX,
    BATCH_WRITES_MAX,
    IDLE_CONNECTIONS_MAX,
    RESPONSE_BYTES_MAX,
    SESSION_LEVEL,
    UPDATE_RETRIES_MAX_DEFAULT,
    AnswerLost,
    Attempt,
    BatchWrite,
    ConnectFailed,
    HttpRequest,
    HttpResponse,
    Item,
    Resolver,
    Rotation,
    SessionState,
    Updater,
    batch_request,
    chunks,
    delete_request,
    encode_request,
    get_operations,
    get_request,
    local_record_request,
    parse_batch_gets,
    parse_batch_writes,
    parse_get,
    parse_header_line,
    parse_json,
    parse_status_line,
    parse_written,
    put_request,
    retrying_unknown,
    status_request,
    update_condition,
    update_input,
    write_operations,
)
from dynakv.errors import DynakvError, PreconditionFailed, RemoteProtocolError

_HEADERS_MAX: Final = 100
_LINE_BYTES_MAX: Final = 64 * 1024


class _Unanswered(Exception):
    """The connection ended before the first byte of an answer."""


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class AsyncClient:
    """An asyncio dynakv client with failover across ``endpoints`` (``host:port`` each)."""

    def __init__(
        self,
        endpoints: Sequence[str] = ("127.0.0.1:8001",),
        *,
        timeout_s: float = 5.0,
        resolver: Resolver | None = None,
        retry_unknown_writes: bool = False,
    ) -> None:
        """``retry_unknown_writes``: resend a weak write whose outcome is unknown (504,
        lost answer) to the next endpoint under the same ``Idempotency-Key``."""
        assert timeout_s > 0
        self._retry_unknown_writes = retry_unknown_writes
        self._rotation = Rotation(endpoints)
        self._timeout_s = timeout_s
        self._resolver = resolver
        self._idle: list[list[_Connection]] = [[] for _ in self._rotation.endpoints]
        self._busy: set[_Connection] = set()

    @property
    def resolver(self) -> Resolver | None:
        return self._resolver

    # --- the API ---------------------------------------------------------------------------------

    async def get(self, key: bytes | str, consistency: str = "quorum") -> Item:
        """The value under ``key`` (``Item.value`` None when absent), siblings, context, ETag."""
        return parse_get(await self._call(get_request(key, consistency)), self._resolver)

    async def put(
        self,
        key: bytes | str,
        value: bytes | bytearray | memoryview,
        *,
        consistency: str = "quorum",
        ttl_s: int | None = None,
        context: str | None = None,
        if_match: str | None = None,
        if_absent: bool = False,
        idempotency_key: str | None = None,
    ) -> str:
        """Store ``value``; returns the new version's context. With ``if_match`` (an
        ``Item.etag``) or ``if_absent=True`` the write happens only if the key's
        current version is that one, or has no value (else ``PreconditionFailed``,
        HTTP 412, naming the current ETag), linearizably whatever ``consistency``.
        A weak, unconditional put carries an ``Idempotency-Key`` (``idempotency_key``
        or a fresh one) and is retried at the next endpoint after an unknown outcome."""
        request = put_request(
            key,
            value,
            consistency,
            ttl_s,
            context,
            if_match=if_match,
            if_absent=if_absent,
            idempotency_key=idempotency_key,
        )
        if self._retry_unknown_writes:
            request = retrying_unknown(request)
        return parse_written(await self._call(request))

    async def delete(
        self,
        key: bytes | str,
        *,
        consistency: str = "quorum",
        context: str | None = None,
        if_match: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Write a tombstone; returns its context. ``if_match`` and ``idempotency_key``
        as for ``put``."""
        request = delete_request(
            key, consistency, context, if_match=if_match, idempotency_key=idempotency_key
        )
        if self._retry_unknown_writes:
            request = retrying_unknown(request)
        return parse_written(await self._call(request))

    async def get_many(
        self, keys: Sequence[bytes | str], consistency: str = "quorum"
    ) -> list[Item | DynakvError]:
        """Each key's ``Item`` (as ``get`` gives it), or that key's own typed error,
        in the order given: one ``POST /v1/batch`` per 100 keys."""
        results: list[Item | DynakvError] = []
        for part in chunks(keys, BATCH_GETS_MAX):
            request = batch_request(get_operations(part), consistency)
            response = await self._call(request)
            results.extend(parse_batch_gets(response, len(part), self._resolver))
        return results

    async def put_many(
        self,
        items: Sequence[BatchWrite],
        *,
        consistency: str = "quorum",
        ttl_s: int | None = None,
    ) -> list[str | DynakvError]:
        """Write each ``(key, value)`` or ``(key, value, context)`` (value None: a
        delete, which needs the context it supersedes, as ``delete`` does): each
        key's new context, or its own typed error, in the order given; one
        ``POST /v1/batch`` per 25 items. The writes of one request run
        concurrently: give a key once per call."""
        results: list[str | DynakvError] = []
        for part in chunks(items, BATCH_WRITES_MAX):
            request = batch_request(write_operations(part, ttl_s), consistency)
            results.extend(parse_batch_writes(await self._call(request), len(part)))
        return results

    async def update(
        self,
        key: bytes | str,
        fn: Updater,
        *,
        retries_max: int = UPDATE_RETRIES_MAX_DEFAULT,
        ttl_s: int | None = None,
    ) -> bytes | None:
        """Read-modify-write ``key`` linearizably and return what was written.

        Reads at ``strong``, calls ``fn(current value or None)`` for the new value
        (None deletes), and writes it only if the key is still the version read.
        When another writer came first (412) it starts over, at most
        ``retries_max`` more times, then raises that ``PreconditionFailed``.
        ``fn`` may run more than once: keep it free of side effects.
        """
        assert retries_max >= 0, retries_max
        failed: PreconditionFailed | None = None
        for _ in range(retries_max + 1):
            item = await self.get(key, "strong")
            value = fn(update_input(item))
            try:
                if value is not None:
                    condition = update_condition(item)
                    await self.put(key, value, consistency="strong", ttl_s=ttl_s, **condition)
                elif item.etag is not None:
                    await self.delete(key, consistency="strong", if_match=item.etag)
            except PreconditionFailed as exc:
                failed = exc
                continue
            return value
        assert failed is not None
        raise failed

    def session(self, token: str = "") -> AsyncSession:
        """A session on this client (resumed from ``token``, e.g. another session's
        ``token``): its reads see its own writes and never go back in time."""
        return AsyncSession(self, token)

    async def status(self) -> dict[str, Any]:
        return parse_json(await self._call(status_request()))

    async def local_record(self, key: bytes | str) -> dict[str, Any]:
        """The record the answering node stores for ``key`` (no quorum; for debugging)."""
        return parse_json(await self._call(local_record_request(key)))

    async def close(self) -> None:
        connections = [c for idle in self._idle for c in idle] + list(self._busy)
        for idle in self._idle:
            idle.clear()
        self._busy.clear()
        for connection in connections:
            connection.close()
        for connection in connections:
            with contextlib.suppress(OSError):  # a reset connection is closed either way
                await connection.writer.wait_closed()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # --- transport -------------------------------------------------------------------------------

    async def _call(self, request: HttpRequest) -> HttpResponse:
        attempt = Attempt(self._rotation, request)
        for index in self._rotation.order():
            try:
                response = await self._exchange(index, request)
            except ConnectFailed as exc:
                attempt.connect_failed(index, exc.__cause__ or exc)
                continue
            except AnswerLost as exc:
                attempt.answer_lost(index, exc.__cause__ or exc)
                continue
            if attempt.answered(index, response):
                return response
        return attempt.exhausted()

    async def _exchange(self, index: int, request: HttpRequest) -> HttpResponse:
        idle = self._idle[index]
        while idle:
            connection = idle.pop()
            if not connection.usable():
                connection.close()
                continue
            try:
                return await self._round_trip(index, connection, request)
            except _Unanswered:
                break  # the server closed this idle connection: nothing was processed
        connection = await self._connect(index)
        try:
            return await self._round_trip(index, connection, request)
        except _Unanswered as exc:
            raise AnswerLost() from exc.__cause__

    async def _connect(self, index: int) -> _Connection:
        endpoint = self._rotation.endpoints[index]
        try:
            async with asyncio.timeout(self._timeout_s):
                reader, writer = await asyncio.open_connection(
                    endpoint.host, endpoint.port, limit=_LINE_BYTES_MAX
                )
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed() from exc
        return _Connection(reader, writer)

    async def _round_trip(
        self, index: int, connection: _Connection, request: HttpRequest
    ) -> HttpResponse:
        endpoint = self._rotation.endpoints[index]
        self._busy.add(connection)
        keep = False
        try:
            connection.writer.write(encode_request(request, str(endpoint)))
            async with asyncio.timeout(self._timeout_s):
                await connection.writer.drain()
                response, keep = await _read_response(connection.reader, request.method)
            return response
        except _Unanswered:
            raise
        except (
            OSError,
            TimeoutError,
            asyncio.IncompleteReadError,
            ValueError,
            RemoteProtocolError,
        ) as exc:
            # ValueError: asyncio's LimitOverrunError for an endless line
            raise AnswerLost() from exc
        finally:
            self._busy.discard(connection)
            idle = self._idle[index]
            if keep and len(idle) < IDLE_CONNECTIONS_MAX:
                idle.append(connection)
            else:
                connection.close()


async def _read_response(reader: asyncio.StreamReader, method: str) -> tuple[HttpResponse, bool]:
    """One response from ``reader``: (response, whether the connection may be reused)."""
    first = True
    while True:
        try:
            line = await reader.readline()
        except ConnectionError as exc:
            if first:
                raise _Unanswered() from exc
            raise
        if not line:
            if first:
                raise _Unanswered() from ConnectionResetError("closed before answering")
            raise RemoteProtocolError("the connection closed inside a response")
        first = False
        version, status = parse_status_line(line)
        headers: dict[str, str] = {}
        for _ in range(_HEADERS_MAX):
            line = await reader.readline()
            if line in (b"\r\n", b"\n"):
                break
            if not line.endswith(b"\n"):
                raise RemoteProtocolError("the connection closed inside the headers")
            name, value = parse_header_line(line)
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        else:
            raise RemoteProtocolError(f"more than {_HEADERS_MAX} response headers")
        if status >= 200:
            break  # 1xx are interim answers: the real one follows
    keep = version == b"HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if status in (204, 304) or method == "HEAD":
        return HttpResponse(status, headers, b""), keep
    if "transfer-encoding" in headers:
        raise RemoteProtocolError("chunked responses are not supported")
    length_text = headers.get("content-length")
    if length_text is None:
        body = await reader.read(RESPONSE_BYTES_MAX + 1)  # framed by the connection closing
        while body and not reader.at_eof() and len(body) <= RESPONSE_BYTES_MAX:
            more = await reader.read(RESPONSE_BYTES_MAX + 1 - len(body))
            if not more:
                break
            body += more
        if len(body) > RESPONSE_BYTES_MAX:
            raise RemoteProtocolError(f"response body over {RESPONSE_BYTES_MAX} bytes")
        return HttpResponse(status, headers, body), False
    if not length_text.isdigit() or int(length_text) > RESPONSE_BYTES_MAX:
        raise RemoteProtocolError(f"bad Content-Length {length_text[:40]!r}")
    body = await reader.readexactly(int(length_text))
    return HttpResponse(status, headers, body), keep


class AsyncSession:
    """Session consistency (``consistency=session``) over a ``AsyncClient``.

    Keeps the ``X-Dynakv-Session`` token each response returns and sends it with
    the next request: a read is answered by one replica that holds everything
    this session wrote or read of the key (else by a quorum), so the session
    reads its own writes and never goes back in time. Writes go at quorum. One
    session is one causal thread: do not share it between concurrent callers.
    """

    __slots__ = ("_client", "_state")

    def __init__(self, client: AsyncClient, token: str = "") -> None:
        self._client = client
        self._state = SessionState(token)

    @property
    def token(self) -> str:
        """The session's causal context so far (opaque; resume with ``client.session(token)``)."""
        return self._state.token

    async def get(self, key: bytes | str) -> Item:
        request = get_request(key, SESSION_LEVEL)
        return parse_get(await self._exchange(request), self._client.resolver)

    async def put(
        self,
        key: bytes | str,
        value: bytes | bytearray | memoryview,
        *,
        ttl_s: int | None = None,
        context: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        request = put_request(
            key, value, SESSION_LEVEL, ttl_s, context, idempotency_key=idempotency_key
        )
        return parse_written(await self._exchange(request))

    async def delete(
        self, key: bytes | str, *, context: str | None = None, idempotency_key: str | None = None
    ) -> str:
        request = delete_request(key, SESSION_LEVEL, context, idempotency_key=idempotency_key)
        return parse_written(await self._exchange(request))

    async def _exchange(self, request: HttpRequest) -> HttpResponse:
        client = self._client
        if request.method != "GET" and client._retry_unknown_writes:
            request = retrying_unknown(request)
        response = await client._call(self._state.prepare(request))
        self._state.learn(response)
        return response

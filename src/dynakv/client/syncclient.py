"""``dynakv.Client``: the blocking client, on ``http.client`` keep-alive connections.

One ``HTTPConnection`` per endpoint, opened on first use and kept open. Calls
are serialized by a lock, so a client may be shared between threads, but
each call waits for the one before it: give each busy thread its own client.
Failover and error mapping follow ``dynakv.client.common``.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from dynakv.client.common import (
    BATCH_GETS_MAX,
    BATCH_WRITES_MAX,
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
    get_operations,
    get_request,
    local_record_request,
    parse_batch_gets,
    parse_batch_writes,
    parse_get,
    parse_json,
    parse_written,
    put_request,
    retrying_unknown,
    status_request,
    update_condition,
    update_input,
    write_operations,
)
from dynakv.errors import DynakvError, PreconditionFailed


class _Unsent(Exception):
    """The request could not be written: the server cannot have a complete copy."""


class _Unanswered(Exception):
    """The connection ended before the first byte of an answer."""


class Client:
    """A blocking dynakv client with failover across ``endpoints`` (``host:port`` each)."""

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
        self._connections: list[http.client.HTTPConnection | None] = [None] * len(
            self._rotation.endpoints
        )
        self._lock = threading.Lock()

    @property
    def resolver(self) -> Resolver | None:
        return self._resolver

    # --- the API ---------------------------------------------------------------------------------

    def get(self, key: bytes | str, consistency: str = "quorum") -> Item:
        """The value under ``key`` (``Item.value`` None when absent), siblings, context, ETag."""
        return parse_get(self._call(get_request(key, consistency)), self._resolver)

    def put(
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
        return parse_written(self._call(request))

    def delete(
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
        return parse_written(self._call(request))

    def get_many(
        self, keys: Sequence[bytes | str], consistency: str = "quorum"
    ) -> list[Item | DynakvError]:
        """Each key's ``Item`` (as ``get`` gives it), or that key's own typed error,
        in the order given: one ``POST /v1/batch`` per 100 keys."""
        results: list[Item | DynakvError] = []
        for part in chunks(keys, BATCH_GETS_MAX):
            request = batch_request(get_operations(part), consistency)
            response = self._call(request)
            results.extend(parse_batch_gets(response, len(part), self._resolver))
        return results

    def put_many(
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
            results.extend(parse_batch_writes(self._call(request), len(part)))
        return results

    def update(
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
            item = self.get(key, "strong")
            value = fn(update_input(item))
            try:
                if value is not None:
                    condition = update_condition(item)
                    self.put(key, value, consistency="strong", ttl_s=ttl_s, **condition)
                elif item.etag is not None:
                    self.delete(key, consistency="strong", if_match=item.etag)
            except PreconditionFailed as exc:
                failed = exc
                continue
            return value
        assert failed is not None
        raise failed

    def session(self, token: str = "") -> Session:
        """A session on this client (resumed from ``token``, e.g. another session's
        ``token``): its reads see its own writes and never go back in time."""
        return Session(self, token)

    def status(self) -> dict[str, Any]:
        return parse_json(self._call(status_request()))

    def local_record(self, key: bytes | str) -> dict[str, Any]:
        """The record the answering node stores for ``key`` (no quorum; for debugging)."""
        return parse_json(self._call(local_record_request(key)))

    def close(self) -> None:
        with self._lock:
            for index, connection in enumerate(self._connections):
                if connection is not None:
                    connection.close()
                    self._connections[index] = None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- transport -------------------------------------------------------------------------------

    def _call(self, request: HttpRequest) -> HttpResponse:
        with self._lock:
            attempt = Attempt(self._rotation, request)
            for index in self._rotation.order():
                try:
                    response = self._exchange(index, request)
                except ConnectFailed as exc:
                    attempt.connect_failed(index, exc.__cause__ or exc)
                    continue
                except AnswerLost as exc:
                    attempt.answer_lost(index, exc.__cause__ or exc)
                    continue
                if attempt.answered(index, response):
                    return response
            return attempt.exhausted()

    def _exchange(self, index: int, request: HttpRequest) -> HttpResponse:
        connection = self._connections[index]
        if connection is not None and connection.sock is not None:
            try:
                return self._round_trip(connection, request)
            except (_Unsent, _Unanswered):
                pass  # the server closed this idle connection: nothing was processed
        connection = self._connect(index)
        try:
            return self._round_trip(connection, request)
        except _Unsent as exc:
            raise ConnectFailed() from exc.__cause__
        except _Unanswered as exc:
            raise AnswerLost() from exc.__cause__

    def _connect(self, index: int) -> http.client.HTTPConnection:
        endpoint = self._rotation.endpoints[index]
        connection = http.client.HTTPConnection(
            endpoint.host, endpoint.port, timeout=self._timeout_s
        )
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            raise ConnectFailed() from exc
        self._connections[index] = connection
        return connection

    @staticmethod
    def _round_trip(connection: http.client.HTTPConnection, request: HttpRequest) -> HttpResponse:
        try:
            connection.request(
                request.method, request.target, body=request.body, headers=request.headers
            )
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise _Unsent() from exc
        try:
            response = connection.getresponse()
        except ConnectionError as exc:
            connection.close()
            raise _Unanswered() from exc
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise AnswerLost() from exc
        try:
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise AnswerLost() from exc
        headers = {name.lower(): value for name, value in response.getheaders()}
        if response.will_close:
            connection.close()
        return HttpResponse(response.status, headers, body)


class Session:
    """Session consistency (``consistency=session``) over a ``Client``.

    Keeps the ``X-Dynakv-Session`` token each response returns and sends it with
    the next request: a read is answered by one replica that holds everything
    this session wrote or read of the key (else by a quorum), so the session
    reads its own writes and never goes back in time. Writes go at quorum. One
    session is one causal thread: do not share it between concurrent callers.
    """

    __slots__ = ("_client", "_state")

    def __init__(self, client: Client, token: str = "") -> None:
        self._client = client
        self._state = SessionState(token)

    @property
    def token(self) -> str:
        """The session's causal context so far (opaque; resume with ``client.session(token)``)."""
        return self._state.token

    def get(self, key: bytes | str) -> Item:
        request = get_request(key, SESSION_LEVEL)
        return parse_get(self._exchange(request), self._client.resolver)

    def put(
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
        return parse_written(self._exchange(request))

    def delete(
        self, key: bytes | str, *, context: str | None = None, idempotency_key: str | None = None
    ) -> str:
        request = delete_request(key, SESSION_LEVEL, context, idempotency_key=idempotency_key)
        return parse_written(self._exchange(request))

    def _exchange(self, request: HttpRequest) -> HttpResponse:
        client = self._client
        if request.method != "GET" and client._retry_unknown_writes:
            request = retrying_unknown(request)
        response = client._call(self._state.prepare(request))
        self._state.learn(response)
        return response

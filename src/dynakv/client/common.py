"""What the sync and asyncio clients share: requests, responses, errors, failover.

Both clients speak the native HTTP API (docs/api.md). Everything here is
I/O-free: building a request, turning a response into a result or a typed
error, and the failover bookkeeping. The two clients only move bytes.

Failover policy (both clients):

- A client starts at one endpoint (instances rotate their starting point so
  many clients spread over a cluster) and sticks to the last one that
  answered.
- A connection that cannot be made (refused, reset, unreachable, connect
  timeout) moves on to the next endpoint. When every endpoint failed this
  way the call raises ``NoEndpointReachable``.
- A reused keep-alive connection that the server had already closed is
  reopened once on the same endpoint (nothing was answered, so nothing was
  processed).
- A request that was sent but got no answer (reset or timeout while
  waiting) moves on only if it is a read; a write raises ``ResponseLost``
  (an ``OutcomeUnknown``): it may or may not have been applied.
- 503 (``UnavailableError``: ``QuorumNotReached``, ``Overloaded``, ...) tries
  each other endpoint once, then raises the last one's typed error.
- Every other answer, 4xx (412 ``PreconditionFailed`` too) and 504, is final,
  except for a write that carries an ``Idempotency-Key``: see below.

Idempotent retries: every weak put and delete (``one``, ``quorum``, ``all``,
``session``) carries an ``Idempotency-Key`` (a fresh random token per call,
or the caller's ``idempotency_key``: pass the same one to retry a call by
hand after an unknown outcome). With ``retry_unknown_writes=True`` the client
retries for you: such a write whose answer was lost or was 504 (outcome
unknown) is sent again, same key, to the next endpoint, each endpoint at
most once; the cluster applies it at most once within its window, so the
retry cannot add a duplicate. When every endpoint was tried, the unknown
outcome is raised. Strong and conditional writes carry no key (their
condition or consensus decides) and are not retried this way.

Sessions (``client.session()``): a ``Session`` keeps the
``X-Dynakv-Session`` token the server returns on every response and sends it
with every request, at ``consistency=session``: reads see the session's own
writes and never go back in time, at about the cost of a ``one`` read.

Batches (``get_many``, ``put_many``, ``delete_many``): one ``POST /v1/batch``
per ``BATCH_GETS_MAX`` keys read or ``BATCH_WRITES_MAX`` keys written (larger
calls go as several requests, one after another). Each key gets its own
result, in the order given: an ``Item`` or a context, or the typed error of
that key alone (returned, not raised). A batch write carries no
``Idempotency-Key``: a lost answer raises ``ResponseLost`` for the whole
request, as a single write's does.

Conditional writes: ``Item.etag`` names the version a read saw; ``put`` and
``delete`` take ``if_match=<etag>`` (``If-Match``) or ``if_absent=True``
(``If-None-Match: *``), and then run linearizably on the server whatever
the level. ``update`` (both clients) is a read-modify-write on top of
them: read at ``strong``, apply the function, write with the read's ETag as
the condition, and on 412 start over, at most ``retries_max`` times.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import msgspec

import dynakv.api.errors  # noqa: F401 - registers the HTTP-layer error codes for rebuild_error
from dynakv.errors import (
    DynakvError,
    OutcomeUnknown,
    RemoteProtocolError,
    UnavailableError,
    rebuild_error,
)

Resolver = Callable[[list[bytes]], bytes]
Updater = Callable[[bytes | None], bytes | None]  # current value -> new value (None: delete)
CONTEXT_HEADER: Final = "X-Dynakv-Context"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
SESSION_HEADER: Final = "X-Dynakv-Session"
SESSION_LEVEL: Final = "session"
WEAK_WRITE_LEVELS: Final = frozenset({"one", "quorum", "all", SESSION_LEVEL})
UPDATE_RETRIES_MAX_DEFAULT: Final = 8
RESPONSE_BYTES_MAX: Final = 64 * 1024 * 1024  # far above any value; bounds a broken server
IDLE_CONNECTIONS_MAX: Final = 16  # per endpoint, asyncio client
BATCH_GETS_MAX: Final = 100  # the server's bounds on one POST /v1/batch (api.routes)
BATCH_WRITES_MAX: Final = 25
_DEFAULT_CODE_BY_STATUS: Final = {
    400: "InvalidRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    412: "PreconditionFailed",
    413: "RequestError",
    500: "InternalError",
    503: "Unavailable",
}


class NoEndpointReachable(UnavailableError):
    """No endpoint could be reached (every connection failed). Nothing was sent."""

    code = "NoEndpointReachable"

    def __init__(self, *, endpoints: list[str], reasons: list[str]) -> None:
        super().__init__(
            f"no endpoint reachable among {', '.join(endpoints)}: {'; '.join(reasons)}",
            endpoints=endpoints,
            reasons=reasons,
        )
        self.endpoints = endpoints
        self.reasons = reasons


class ResponseLost(OutcomeUnknown):
    """A write was sent but its answer never came: it may or may not have been applied."""

    code = "ResponseLost"

    def __init__(self, *, endpoint: str, reason: str) -> None:
        DynakvError.__init__(
            self,
            f"no answer from {endpoint} after the request was sent ({reason}); "
            "the write may or may not have been applied",
            endpoint=endpoint,
            reason=reason,
        )
        self.endpoint = endpoint
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Item:
    """A read's result.

    ``value`` is None when the key is absent, or when there are siblings and
    no resolver; ``siblings`` lists every concurrent value (empty unless there
    are two or more). ``context`` goes back into the next put or delete;
    ``etag`` (None when absent) into a conditional one (``if_match=``).
    """

    value: bytes | None
    siblings: list[bytes]
    context: str
    etag: str | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """``host:port``, ``[v6]:port`` or ``http://host:port``."""
    address = text.strip().removeprefix("http://").rstrip("/")
    if address.startswith("["):
        host, _, port_text = address[1:].partition("]:")
    else:
        host, _, port_text = address.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"endpoint must be host:port, got {text!r}")
    return Endpoint(host, int(port_text))


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    idempotent: bool = True  # safe to send again to another endpoint after a lost answer
    # a 504 (outcome unknown) may be retried at the next endpoint (an idempotent write)
    retry_unknown: bool = False


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # names lower-case
    body: bytes


# --- requests ----------------------------------------------------------------------------------


def key_bytes(key: bytes | str) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def _kv_target(key: bytes | str, params: list[tuple[str, str]]) -> str:
    target = "/v1/kv/" + quote(key_bytes(key), safe="")
    if params:
        target += "?" + "&".join(f"{name}={quote(value, safe='')}" for name, value in params)
    return target


def _consistency_text(consistency: str) -> str:
    return str(getattr(consistency, "value", consistency))  # accepts Consistency members too


def _context_headers(context: str | None) -> dict[str, str]:
    return {CONTEXT_HEADER: context} if context else {}


def _write_headers(context: str | None, if_match: str | None, if_absent: bool) -> dict[str, str]:
    if if_match is not None and if_absent:
        raise ValueError("a write takes if_match or if_absent, not both")
    headers = _context_headers(context)
    if if_match is not None:
        if not if_match or '"' in if_match or "\r" in if_match or "\n" in if_match:
            raise ValueError(f"if_match must be an ETag a read returned; got {if_match!r}")
        headers["If-Match"] = f'"{if_match}"'
    elif if_absent:
        headers["If-None-Match"] = "*"
    return headers


def new_idempotency_key() -> str:
    """A fresh ``Idempotency-Key`` token: 24 URL-safe characters, 144 random bits."""
    return secrets.token_urlsafe(18)


def _idempotent_write(
    request: HttpRequest, consistency: str, conditional: bool, idempotency_key: str | None
) -> HttpRequest:
    """``request`` with an ``Idempotency-Key``, if it is a weak, unconditional write
    (the only kind the server applies at most once by key)."""
    if conditional or _consistency_text(consistency) not in WEAK_WRITE_LEVELS:
        return request
    key = idempotency_key if idempotency_key is not None else new_idempotency_key()
    if not key or len(key) > 128 or not all(0x21 <= ord(c) <= 0x7E for c in key):
        raise ValueError("idempotency_key must be 1..128 printable ASCII characters")
    headers = {**request.headers, IDEMPOTENCY_HEADER: key}
    return HttpRequest(request.method, request.target, headers, request.body, idempotent=False)


def retrying_unknown(request: HttpRequest) -> HttpRequest:
    """``request`` allowed to go to the next endpoint after a lost answer or a 504,
    if it carries an ``Idempotency-Key`` (else unchanged)."""
    if IDEMPOTENCY_HEADER not in request.headers:
        return request
    return HttpRequest(
        request.method,
        request.target,
        request.headers,
        request.body,
        idempotent=True,
        retry_unknown=True,
    )


def with_session(request: HttpRequest, token: str) -> HttpRequest:
    """``request`` carrying a session token (none yet: the server starts one)."""
    if not token:
        return request
    headers = {**request.headers, SESSION_HEADER: token}
    return HttpRequest(
        request.method,
        request.target,
        headers,
        request.body,
        idempotent=request.idempotent,
        retry_unknown=request.retry_unknown,
    )


class SessionState:
    """A session's token: sent with each request, replaced by each response's."""

    __slots__ = ("token",)

    def __init__(self, token: str = "") -> None:
        self.token = token

    def prepare(self, request: HttpRequest) -> HttpRequest:
        return with_session(request, self.token)

    def learn(self, response: HttpResponse) -> None:
        token = response.headers.get(SESSION_HEADER.lower())
        if token:
            self.token = token


def get_request(key: bytes | str, consistency: str) -> HttpRequest:
    return HttpRequest("GET", _kv_target(key, [("consistency", _consistency_text(consistency))]))


def put_request(
    key: bytes | str,
    value: bytes | bytearray | memoryview,
    consistency: str,
    ttl_s: int | None,
    context: str | None,
    *,
    if_match: str | None = None,
    if_absent: bool = False,
    idempotency_key: str | None = None,
) -> HttpRequest:
    params = [("consistency", _consistency_text(consistency))]
    if ttl_s is not None:
        params.append(("ttl", str(int(ttl_s))))
    headers = _write_headers(context, if_match, if_absent)
    request = HttpRequest("PUT", _kv_target(key, params), headers, bytes(value), idempotent=False)
    conditional = if_match is not None or if_absent
    return _idempotent_write(request, consistency, conditional, idempotency_key)


def delete_request(
    key: bytes | str,
    consistency: str,
    context: str | None,
    *,
    if_match: str | None = None,
    if_absent: bool = False,
    idempotency_key: str | None = None,
) -> HttpRequest:
    target = _kv_target(key, [("consistency", _consistency_text(consistency))])
    headers = _write_headers(context, if_match, if_absent)
    request = HttpRequest("DELETE", target, headers, idempotent=False)
    conditional = if_match is not None or if_absent
    return _idempotent_write(request, consistency, conditional, idempotency_key)


def status_request() -> HttpRequest:
    return HttpRequest("GET", "/v1/status")


def local_record_request(key: bytes | str) -> HttpRequest:
    return HttpRequest("GET", "/v1/admin/local/" + quote(key_bytes(key), safe=""))


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``items`` in consecutive slices of at most ``size`` (none for no items)."""
    assert size > 0, size
    return [items[start : start + size] for start in range(0, len(items), size)]


def batch_request(operations: list[dict[str, Any]], consistency: str) -> HttpRequest:
    """One ``POST /v1/batch`` of ``operations`` (keys and values already base64).
    Only an all-gets batch may be resent elsewhere after a lost answer."""
    body = msgspec.json.encode({"ops": operations})
    target = "/v1/batch?consistency=" + quote(_consistency_text(consistency), safe="")
    headers = {"Content-Type": "application/json"}
    reads_only = all(operation["op"] == "get" for operation in operations)
    return HttpRequest("POST", target, headers, body, idempotent=reads_only)


def get_operations(keys: Sequence[bytes | str]) -> list[dict[str, Any]]:
    return [{"op": "get", "key": _b64encode(key_bytes(key))} for key in keys]


BatchWrite = tuple[bytes | str, bytes | None] | tuple[bytes | str, bytes | None, str | None]


def write_operations(items: Sequence[BatchWrite], ttl_s: int | None) -> list[dict[str, Any]]:
    """Puts (a value) and deletes (None), each on top of its context when one is
    given (``(key, value, context)``), with ``ttl_s`` on the puts."""
    operations: list[dict[str, Any]] = []
    for item in items:
        key, value = item[0], item[1]
        operation: dict[str, Any] = {"op": "delete", "key": _b64encode(key_bytes(key))}
        if value is not None:
            operation["op"] = "put"
            operation["value"] = _b64encode(bytes(value))
            if ttl_s is not None:
                operation["ttl"] = int(ttl_s)
        context = item[2] if len(item) > 2 else None
        if context:
            operation["context"] = context
        operations.append(operation)
    return operations


def parse_batch_gets(
    response: HttpResponse, count: int, resolver: Resolver | None
) -> list[Item | DynakvError]:
    """A batch of gets' results: an ``Item`` per key, or that key's typed error."""
    results: list[Item | DynakvError] = []
    for document in _batch_results(response, count):
        status = document.get("status")
        context = str(document.get("context", ""))
        etag = document.get("etag")
        etag = None if etag is None else str(etag)
        if status == 200:
            results.append(Item(_b64decode(document.get("value")), [], context, etag))
        elif status == 300:
            siblings = [_b64decode(value) for value in document.get("siblings", [])]
            value = resolver(list(siblings)) if resolver is not None else None
            results.append(Item(value, siblings, context, etag))
        elif status == 404:
            results.append(Item(None, [], context))
        else:
            results.append(_batch_error(document))
    return results


def parse_batch_writes(response: HttpResponse, count: int) -> list[str | DynakvError]:
    """A batch of writes' results: the new context per key, or that key's typed error."""
    return [
        str(document.get("context", ""))
        if document.get("status") == 204
        else _batch_error(document)
        for document in _batch_results(response, count)
    ]


def _batch_results(response: HttpResponse, count: int) -> list[dict[str, Any]]:
    if response.status != 200:
        raise error_from_response(response)
    results = _json(response).get("results")
    if not isinstance(results, list) or len(results) != count:
        raise RemoteProtocolError(f"a batch of {count} answered with {type(results).__name__}")
    if not all(isinstance(document, dict) for document in results):
        raise RemoteProtocolError("a batch result is not an object")
    return results


def _batch_error(document: dict[str, Any]) -> DynakvError:
    error = document.get("error")
    if not isinstance(error, dict):
        raise RemoteProtocolError(f"a batch result of status {document.get('status')} has no error")
    facts = {k: v for k, v in error.items() if k not in ("code", "message")}
    return rebuild_error(str(error.get("code")), str(error.get("message", "")), facts)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_request(request: HttpRequest, host: str) -> bytes:
    """The request as HTTP/1.1 bytes (the asyncio client's wire form)."""
    lines = [f"{request.method} {request.target} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in request.headers.items())
    body = request.body
    if body is not None or request.method in ("PUT", "POST"):
        lines.append(f"Content-Length: {len(body or b'')}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body else head


# --- responses ---------------------------------------------------------------------------------


def parse_status_line(line: bytes) -> tuple[bytes, int]:
    """(version, status) of ``HTTP/1.1 200 OK``; a malformed line is the server's error."""
    version, _, rest = line.rstrip(b"\r\n").partition(b" ")
    status_text = rest[:3]
    if not version.startswith(b"HTTP/1.") or not status_text.isdigit():
        raise RemoteProtocolError(f"malformed status line {line[:80]!r}")
    return version, int(status_text)


def parse_header_line(line: bytes) -> tuple[str, str]:
    name, colon, value = line.partition(b":")
    if not colon or not name.strip():
        raise RemoteProtocolError(f"malformed header line {line[:80]!r}")
    return name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")


def parse_get(response: HttpResponse, resolver: Resolver | None) -> Item:
    context = response.headers.get("x-dynakv-context", "")
    etag = parse_etag(response)
    if response.status == 200:
        return Item(response.body, [], context, etag)
    if response.status == 300:
        document = _json(response)
        siblings = [_b64decode(value) for value in document.get("siblings", [])]
        context = str(document.get("context", context))
        value = resolver(list(siblings)) if resolver is not None else None
        return Item(value, siblings, context, etag)
    if response.status == 404 and _error_code(response) == "KeyNotFound":
        return Item(None, [], context)
    raise error_from_response(response)


def parse_etag(response: HttpResponse) -> str | None:
    """The token inside the response's quoted ``ETag`` header, or None."""
    value = response.headers.get("etag")
    if value is None:
        return None
    if len(value) < 3 or value[0] != '"' or value[-1] != '"':
        raise RemoteProtocolError(f"the server sent a malformed ETag {value[:40]!r}")
    return value[1:-1]


def update_input(item: Item) -> bytes | None:
    """The value ``update`` hands to its function: siblings need a resolver first."""
    if item.value is None and item.siblings:
        raise ValueError("the key has siblings: give the client a resolver to update it")
    return item.value


def update_condition(item: Item) -> dict[str, Any]:
    """The condition ``update`` writes under: the version it read, or "still absent"."""
    return {"if_match": item.etag} if item.etag is not None else {"if_absent": True}


def parse_written(response: HttpResponse) -> str:
    if response.status in (200, 204):
        return response.headers.get("x-dynakv-context", "")
    raise error_from_response(response)


def parse_json(response: HttpResponse) -> dict[str, Any]:
    if response.status == 200:
        return _json(response)
    raise error_from_response(response)


def error_from_response(response: HttpResponse) -> DynakvError:
    """The typed ``dynakv.errors`` exception for an error response."""
    code, message, facts = None, "", {}
    try:
        document = msgspec.json.decode(response.body)
        error = document["error"]
        code = str(error["code"])
        message = str(error.get("message", ""))
        facts = {k: v for k, v in error.items() if k not in ("code", "message")}
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
        message = response.body[:200].decode("utf-8", "replace")
    if code is None:
        code = _DEFAULT_CODE_BY_STATUS.get(response.status, "DynakvError")
        facts = {"status": response.status}
        message = message or f"HTTP {response.status}"
    exc = rebuild_error(code, message, facts)
    retry_after = response.headers.get("retry-after", "")
    if isinstance(exc, UnavailableError) and retry_after.isdigit():
        exc.retry_after_s = int(retry_after)
    return exc


def _error_code(response: HttpResponse) -> str | None:
    try:
        return str(msgspec.json.decode(response.body)["error"]["code"])
    except (msgspec.DecodeError, KeyError, TypeError):
        return None


def _json(response: HttpResponse) -> dict[str, Any]:
    try:
        document = msgspec.json.decode(response.body)
    except msgspec.DecodeError as exc:
        raise RemoteProtocolError(f"the server sent invalid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise RemoteProtocolError("the server sent JSON that is not an object")
    return document


def _b64decode(text: object) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RemoteProtocolError("the server sent a sibling that is not base64") from exc


# --- failover ----------------------------------------------------------------------------------


class ConnectFailed(Exception):
    """Internal: the connection could not be made, so nothing was sent."""


class AnswerLost(Exception):
    """Internal: the request may have been sent, but no complete answer came back."""


_client_instances = itertools.count()


class Rotation:
    """Which endpoint to try first, and in what order to fail over."""

    __slots__ = ("_preferred", "endpoints")

    def __init__(self, endpoints: Sequence[str]) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ValueError("at least one endpoint is required")
        self.endpoints = [parse_endpoint(text) for text in endpoints]
        self._preferred = next(_client_instances) % len(self.endpoints)

    def order(self) -> list[int]:
        count = len(self.endpoints)
        return [(self._preferred + step) % count for step in range(count)]

    def answered(self, index: int) -> None:
        self._preferred = index


class Attempt:
    """The bookkeeping of one call across endpoints (see the module docstring)."""

    __slots__ = ("_lost", "_reasons", "_request", "_rotation", "_unavailable", "_unknown")

    def __init__(self, rotation: Rotation, request: HttpRequest) -> None:
        self._rotation = rotation
        self._request = request
        self._reasons: list[str] = []
        self._unavailable: HttpResponse | None = None
        self._unknown: HttpResponse | None = None  # a 504 to an idempotent write
        self._lost: ResponseLost | None = None  # an idempotent write's lost answer

    def connect_failed(self, index: int, exc: BaseException) -> None:
        self._reasons.append(f"{self._rotation.endpoints[index]}: {_describe(exc)}")

    def answer_lost(self, index: int, exc: BaseException) -> None:
        endpoint = str(self._rotation.endpoints[index])
        lost = ResponseLost(endpoint=endpoint, reason=_describe(exc))
        if not self._request.idempotent:
            raise lost from exc
        if self._request.retry_unknown:
            self._lost = lost
        self._reasons.append(f"{endpoint}: {_describe(exc)}")

    def answered(self, index: int, response: HttpResponse) -> bool:
        """True when ``response`` is final; False to try the next endpoint."""
        if response.status == 503 or (response.status == 504 and self._request.retry_unknown):
            if response.status == 503:
                self._unavailable = response
            else:
                self._unknown = response
            self._reasons.append(f"{self._rotation.endpoints[index]}: {response.status}")
            return False
        self._rotation.answered(index)
        return True

    def exhausted(self) -> HttpResponse:
        """Every endpoint was tried: an idempotent write's unknown outcome (504, or a
        lost answer) first, for it may have been applied; else the last 503 answer;
        else NoEndpointReachable."""
        if self._unknown is not None:
            return self._unknown
        if self._lost is not None:
            raise self._lost
        if self._unavailable is not None:
            return self._unavailable
        raise NoEndpointReachable(
            endpoints=[str(e) for e in self._rotation.endpoints], reasons=self._reasons
        )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

"""HTTP/1.1 messages as the API sees them, routing, and how responses become bytes.

``Request`` is what the connection hands to a router once a message is
complete; ``Response`` is what the router hands back. ``serialize`` adds the
framing headers (Content-Length, Connection) and joins everything into one
``bytes`` for a single ``transport.write``.

Routing is pluggable: a ``Dispatcher`` holds a default ``RequestRouter`` (the
native API) and any number of others (the DynamoDB API), and picks one per
request once its head is read: the first router that ``owns`` it, else the
default. A router declares the request headers it reads (``header_names``,
lower case); the connection keeps those and no others. Every error of a
request, including the connection's own (413, 431, 408, malformed bytes),
renders through the router that owns it, so each API keeps its own error
shape; before a request's head is complete the default router renders.
Routers never know of each other.

Invariants: every response carries Content-Length except 204 (RFC 9110
§8.6 forbids it there; the body is empty by definition). Header values we
emit are ASCII and never contain CR or LF: context tokens and ETags are
base64url and everything else is a constant or a number. The native error
bodies (``error_response``) have the shape
``{"error": {"code": ..., "message": ..., <facts>}}``. A request holds at
most one value per declared header name (repeats are joined with ","), so
its headers are bounded by the declared names and ``http_header_bytes_max``.

This module does no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, Protocol

import msgspec

from dynakv.api.errors import InternalError, MethodNotAllowed
from dynakv.errors import DynakvError, UnavailableError

logger = logging.getLogger(__name__)


class Request:
    """One parsed request. ``url`` is the raw request target (path and query, still encoded);
    ``headers`` holds the raw values of the headers its dispatcher's routers declared,
    by lower-case name (a repeated header's values joined by ",")."""

    __slots__ = ("body", "headers", "http10", "keep_alive", "method", "router", "url")

    def __init__(self) -> None:
        self.method: bytes = b""
        self.url: bytes = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: bytes = b""
        self.keep_alive: bool = True
        self.http10: bool = False
        self.router: RequestRouter | None = None  # set once the head is read

    def header(self, name: bytes) -> bytes | None:
        """The raw value of a declared header (``name`` in lower case), None if absent."""
        return self.headers.get(name)


@dataclass(slots=True)
class Response:
    """Status, extra header lines (each ending in CRLF, already encoded) and body."""

    status: int
    headers: bytes = b""
    body: bytes = b""
    close: bool = False  # the server must close the connection after this response


class RequestRouter(Protocol):
    """One API: the requests it owns, the headers it reads, how it answers and fails."""

    @property
    def header_names(self) -> frozenset[bytes]:
        """The lower-case names of the request headers ``handle`` reads."""
        ...

    def owns(self, request: Request) -> bool:
        """Is ``request`` (method, url and declared headers read; no body yet) ours?"""
        ...

    def early_refusal(self, request: Request, declared_bytes: int) -> DynakvError | None:
        """An error to answer at once instead of ``100 Continue`` for a body of
        ``declared_bytes`` (already within ``http_body_bytes_max``), or None."""
        ...

    def body_too_large(self, request: Request, size_bytes: int) -> DynakvError:
        """The error for a body of at least ``size_bytes``, past ``http_body_bytes_max``."""
        ...

    async def handle(self, request: Request) -> Response:
        """The answer to a complete request; never raises (CancelledError aside)."""
        ...

    def error_response(self, error: DynakvError) -> Response:
        """``error`` in this API's shape (connection-level errors come here too)."""
        ...

    def internal_error_response(self, exc: BaseException) -> Response:
        """A bug met while serving one of this router's requests: log it, answer 500."""
        ...


class Dispatcher:
    """Picks the router of each request: the first of ``routers`` that owns it, else
    ``default``. ``header_names`` is every name any of them reads."""

    __slots__ = ("default", "header_names", "routers")

    def __init__(self, default: RequestRouter, routers: Iterable[RequestRouter] = ()) -> None:
        self.default = default
        self.routers = tuple(routers)
        names = set(default.header_names)
        for router in self.routers:
            names.update(router.header_names)
        assert all(name == name.lower() for name in names), names
        self.header_names: frozenset[bytes] = frozenset(names)

    def route(self, request: Request) -> RequestRouter:
        for router in self.routers:
            if router.owns(request):
                return router
        return self.default


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("ascii")


_STATUS_LINES: Final = {status.value: _status_line(status.value) for status in HTTPStatus}
_CONNECTION_CLOSE: Final = b"connection: close\r\n"
_CONNECTION_KEEP_ALIVE: Final = b"connection: keep-alive\r\n"

JSON_HEADERS: Final = b"content-type: application/json\r\n"
OCTET_HEADERS: Final = b"content-type: application/octet-stream\r\n"
CONTINUE_RESPONSE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


def serialize(response: Response, keep_alive: bool, http10: bool) -> bytes:
    """The whole response as bytes, framed for a connection that stays open iff ``keep_alive``."""
    status = response.status
    status_line = _STATUS_LINES.get(status) or _status_line(status)
    length = b"" if status == 204 else b"content-length: %d\r\n" % len(response.body)
    if not keep_alive:
        connection = _CONNECTION_CLOSE
    elif http10:
        connection = _CONNECTION_KEEP_ALIVE
    else:
        connection = b""
    return b"".join((status_line, response.headers, length, connection, b"\r\n", response.body))


def _json_default(value: Any) -> Any:
    # Facts and status documents are plain data; anything exotic is shown, not dropped.
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


_json_encoder: Final = msgspec.json.Encoder(enc_hook=_json_default)


def json_body(document: Any) -> bytes:
    return _json_encoder.encode(document)


def json_response(status: int, document: Any, headers: bytes = b"") -> Response:
    return Response(status, JSON_HEADERS + headers, _json_encoder.encode(document))


def error_document(code: str, message: str, facts: dict[str, object]) -> dict[str, Any]:
    error: dict[str, object] = {"code": code, "message": message}
    for name, value in facts.items():
        if name not in error:
            error[name] = value
    return {"error": error}


def error_response(error: DynakvError, headers: bytes = b"") -> Response:
    """The JSON error response for ``error``, with Retry-After / Allow where they apply."""
    extra = headers
    if isinstance(error, UnavailableError):
        extra += b"retry-after: %d\r\n" % error.retry_after_s
    elif isinstance(error, MethodNotAllowed):
        extra += b"allow: " + ", ".join(error.allow).encode("ascii") + b"\r\n"
    document = error_document(error.code, error.message, error.facts())
    return Response(error.http_status, JSON_HEADERS + extra, _json_encoder.encode(document))


def internal_error_response(exc: BaseException) -> Response:
    """A bug surfaced while serving a request: log it with its traceback, answer 500."""
    logger.error("unexpected error serving request", exc_info=exc)
    return error_response(InternalError(f"internal error ({type(exc).__name__})"))

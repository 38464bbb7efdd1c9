"""HTTP/1.1 messages as the API sees them, and how responses become bytes.

``Request`` is what the connection hands to the router once a message is
complete; ``Response`` is what the router hands back. ``serialize`` adds the
framing headers (Content-Length, Connection) and joins everything into one
``bytes`` for a single ``transport.write``.

Invariants: every response carries Content-Length except 204 (RFC 9110
§8.6 forbids it there; the body is empty by definition). Header values we
emit are ASCII and never contain CR or LF: context tokens and ETags are
base64url and everything else is a constant or a number. Error bodies always have the shape
``{"error": {"code": ..., "message": ..., <facts>}}``.

This module does no I/O.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

import msgspec

from dynakv.api.errors import InternalError, MethodNotAllowed
from dynakv.errors import DynakvError, UnavailableError

logger = logging.getLogger(__name__)


class Request:
    """One parsed request. ``url`` is the raw request target (path and query, still encoded)."""

    __slots__ = (
        "body",
        "context",
        "http10",
        "if_match",
        "if_none_match",
        "keep_alive",
        "method",
        "url",
    )

    def __init__(self) -> None:
        self.method: bytes = b""
        self.url: bytes = b""
        self.context: bytes | None = None  # raw X-Dynakv-Context header
        self.if_match: bytes | None = None  # raw If-Match header (repeats joined by ",")
        self.if_none_match: bytes | None = None  # raw If-None-Match header
        self.body: bytes = b""
        self.keep_alive: bool = True
        self.http10: bool = False


@dataclass(slots=True)
class Response:
    """Status, extra header lines (each ending in CRLF, already encoded) and body."""

    status: int
    headers: bytes = b""
    body: bytes = b""
    close: bool = False  # the server must close the connection after this response


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

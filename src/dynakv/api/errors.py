"""Errors that only exist at the HTTP layer, beside the tree in ``dynakv.errors``.

They slot into that tree (all are ``RequestError`` or ``DynakvError``) so the
same rendering and the same client-side mapping apply::

    RequestError
    ├── InvalidRequest
    │   └── KeyReserved      400  the key begins with RESERVED_KEY_PREFIX (internal keys)
    ├── MethodNotAllowed     405  the route exists, the method does not (Allow header)
    ├── BodyTooLarge         413  Content-Length or body past http_body_bytes_max
    ├── HeadersTooLarge      431  request line + headers past http_header_bytes_max
    └── RequestTimeout       408  the request was not fully read within read_timeout_s
    DynakvError
    └── InternalError        500  a bug; logged on the server with its traceback

Importing this module must stay cheap: the client imports it to map codes
back to classes.

``RESERVED_KEY_PREFIX`` starts every key the node writes for itself through
the ``KvBackend`` (cluster metadata such as DynamoDB table definitions, and
DynamoDB items, whose bytes must only ever be written by that API); the
native API refuses to read or write such keys.
"""

from __future__ import annotations

from typing import Final

from dynakv.errors import DynakvError, InvalidRequest, RequestError

RESERVED_KEY_PREFIX: Final = b"\x00dynakv\x00"


class KeyReserved(InvalidRequest):
    code = "KeyReserved"
    http_status = 400

    def __init__(self, *, prefix: str = RESERVED_KEY_PREFIX.hex()) -> None:
        super().__init__(
            f"keys beginning with the bytes {prefix} (hex; \\x00dynakv\\x00) are reserved "
            "for cluster metadata and DynamoDB API items (reserved_key_prefix); "
            "use another key",
            field="key",
            limit="reserved_key_prefix",
            prefix=prefix,
        )


class MethodNotAllowed(RequestError):
    code = "MethodNotAllowed"
    http_status = 405

    def __init__(self, *, method: str, allow: list[str]) -> None:
        super().__init__(
            f"method {method} is not allowed here; allowed: {', '.join(allow)}",
            method=method,
            allow=allow,
        )
        self.method = method
        self.allow = allow


class BodyTooLarge(RequestError):
    code = "BodyTooLarge"
    http_status = 413

    def __init__(self, *, size: int, max: int) -> None:
        super().__init__(
            f"request body is at least {size} bytes; the limit is {max} bytes "
            "(http_body_bytes_max)",
            size=size,
            max=max,
            limit="http_body_bytes_max",
        )
        self.size = size
        self.max = max


class HeadersTooLarge(RequestError):
    code = "HeadersTooLarge"
    http_status = 431

    def __init__(self, *, size: int, max: int) -> None:
        super().__init__(
            f"request line and headers are at least {size} bytes; the limit is {max} bytes "
            "(http_header_bytes_max)",
            size=size,
            max=max,
            limit="http_header_bytes_max",
        )
        self.size = size
        self.max = max


class RequestTimeout(RequestError):
    code = "RequestTimeout"
    http_status = 408

    def __init__(self, *, timeout_s: float) -> None:
        super().__init__(
            f"the request was not received within {timeout_s:g} s", timeout_s=timeout_s
        )
        self.timeout_s = timeout_s


class InternalError(DynakvError):
    code = "InternalError"
    http_status = 500

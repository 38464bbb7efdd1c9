"""The DynamoDB API's ``RequestRouter``, and the dispatcher a node serves both APIs with.

``DynamoRouter`` owns requests for the path ``/`` (the native API has no
route there): ``GET /`` answers 200 ``healthy: ...`` as DynamoDB endpoints
do; ``POST /`` checks the signature (``sigv4``), reads ``X-Amz-Target`` and
the JSON body (``protocol``) and runs the operation (``service``). Every
answer, errors included, is in DynamoDB's shape; nothing of the native API's
shape or routes is known here, and the native router knows nothing of this.

``dynamo_router(backend, limits, clock, environ)`` is the router a node puts
in its ``Dispatcher`` beside the native one; ``build_dispatcher`` builds a
whole dispatcher (the native router as the default, this one beside it).

Never raises out of ``handle`` (CancelledError aside); a bug is logged with
its traceback and answered ``InternalServerError`` (500).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from dynakv.api.backend import KvBackend
from dynakv.api.errors import BodyTooLarge, MethodNotAllowed
from dynakv.api.routes import Router
from dynakv.api.wire import Dispatcher, Request, RequestRouter, Response
from dynakv.config import Limits
from dynakv.dynamo import protocol, sigv4
from dynakv.dynamo.errors import DynamoError, InternalServerError
from dynakv.dynamo.service import DynamoService
from dynakv.errors import DynakvError
from dynakv.node.clock import Clock

log = logging.getLogger(__name__)

_HEALTHY: Final = Response(
    200, b"content-type: text/plain\r\n", b"healthy: dynamodb.dynakv.amazonaws.com "
)
_TARGET: Final = b"x-amz-target"


class DynamoRouter:
    """Serves DynamoDB's JSON protocol on ``/`` over one ``DynamoService``."""

    __slots__ = ("_credentials", "_limits", "_now_ms", "_service")

    header_names: Final = sigv4.HEADER_NAMES

    def __init__(
        self,
        service: DynamoService,
        limits: Limits,
        *,
        now_ms: Callable[[], int],
        credentials: Mapping[str, str] | None = None,
    ) -> None:
        assert _TARGET in self.header_names
        self._service = service
        self._limits = limits
        self._now_ms = now_ms
        self._credentials = credentials

    def owns(self, request: Request) -> bool:
        url = request.url
        return url == b"/" or url.startswith(b"/?")

    def early_refusal(self, request: Request, declared_bytes: int) -> DynakvError | None:
        return None

    def body_too_large(self, request: Request, size_bytes: int) -> DynakvError:
        return BodyTooLarge(size=size_bytes, max=self._limits.http_body_bytes_max)

    def error_response(self, error: DynakvError) -> Response:
        return protocol.dynakv_error_response(error)

    def internal_error_response(self, exc: BaseException) -> Response:
        log.error("unexpected error serving a DynamoDB request", exc_info=exc)
        return protocol.error_response(
            InternalServerError(f"internal error ({type(exc).__name__})")
        )

    async def handle(self, request: Request) -> Response:
        try:
            if request.method == b"GET":
                return _HEALTHY
            if request.method != b"POST":
                method = request.method.decode("latin-1")
                raise MethodNotAllowed(method=method, allow=["GET", "POST"])
            sigv4.verify(
                request.method,
                request.url,
                request.headers,
                request.body,
                self._credentials,
                self._now_ms(),
            )
            operation = protocol.parse_target(request.header(_TARGET), self._service.operations)
            body = protocol.parse_body(request.body)
            return protocol.ok_response(await self._service.call(operation, body))
        except DynamoError as error:
            return protocol.error_response(error)
        except DynakvError as error:
            return protocol.dynakv_error_response(error)
        except Exception as exc:
            return self.internal_error_response(exc)


def dynamo_router(
    backend: KvBackend,
    limits: Limits,
    clock: Clock,
    environ: Mapping[str, str] | None = None,
) -> DynamoRouter:
    """The DynamoDB API over ``backend``, for a node's ``Dispatcher``. Signatures are
    verified when ``environ`` names a credentials file (``sigv4.CREDENTIALS_FILE_ENV``)."""
    service = DynamoService(backend, limits, now_ms=clock.now_ms, monotonic_ms=clock.monotonic_ms)
    credentials = sigv4.credentials_from_environment(environ or {})
    if credentials is not None:
        log.info("dynamodb api verifies signatures access_keys=%d", len(credentials))
    return DynamoRouter(service, limits, now_ms=clock.now_ms, credentials=credentials)


def build_dispatcher(
    backend: KvBackend,
    limits: Limits,
    clock: Clock,
    *,
    credentials: Mapping[str, str] | None = None,
    others: Iterable[RequestRouter] = (),
) -> Dispatcher:
    """The native API as the default, ``others``, and the DynamoDB API on ``/``."""
    service = DynamoService(backend, limits, now_ms=clock.now_ms, monotonic_ms=clock.monotonic_ms)
    dynamo = DynamoRouter(service, limits, now_ms=clock.now_ms, credentials=credentials)
    return Dispatcher(Router(backend, limits), [*others, dynamo])

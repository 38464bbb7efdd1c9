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

Metrics: with a ``RequestMetrics``, each ``POST`` is counted once as
``api="dynamodb"``, ``operation`` its DynamoDB operation (one the service
serves; a request refused before its operation is known, or naming another,
``other``), ``consistency`` ``strong`` when it asked ``ConsistentRead`` and
``default`` otherwise, and ``status`` the HTTP status answered. Each ``POST``
runs in a task of its own (``metrics.run_not_native``), so the backend calls
it makes are not counted again as native requests.

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
from dynakv.node.metrics import RequestMetrics, run_not_native

log = logging.getLogger(__name__)

_HEALTHY: Final = Response(
    200, b"content-type: text/plain\r\n", b"healthy: dynamodb.dynakv.amazonaws.com "
)
_TARGET: Final = b"x-amz-target"
API_LABEL: Final = "dynamodb"
OTHER_OPERATION: Final = "other"  # an unknown target, a bad signature, a malformed request
DEFAULT_CONSISTENCY: Final = "default"
STRONG_CONSISTENCY: Final = "strong"  # ConsistentRead=true


class DynamoRouter:
    """Serves DynamoDB's JSON protocol on ``/`` over one ``DynamoService``."""

    __slots__ = ("_credentials", "_limits", "_metrics", "_monotonic_ms", "_now_ms", "_service")

    header_names: Final = sigv4.HEADER_NAMES

    def __init__(
        self,
        service: DynamoService,
        limits: Limits,
        *,
        now_ms: Callable[[], int],
        credentials: Mapping[str, str] | None = None,
        metrics: RequestMetrics | None = None,
        monotonic_ms: Callable[[], float] | None = None,
    ) -> None:
        assert _TARGET in self.header_names
        assert metrics is None or monotonic_ms is not None, "metrics need a monotonic clock"
        self._service = service
        self._limits = limits
        self._now_ms = now_ms
        self._credentials = credentials
        self._metrics = metrics if metrics is not None and metrics.recording else None
        self._monotonic_ms = monotonic_ms

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
        if request.method != b"POST":
            response, _ = await self._answer(request)
            return response
        return await run_not_native(self._measured(request))

    async def _measured(self, request: Request) -> Response:
        if self._metrics is None:
            response, _ = await self._answer(request)
            return response
        assert self._monotonic_ms is not None
        started_ms = self._monotonic_ms()
        response, (operation, consistency) = await self._answer(request)
        seconds = (self._monotonic_ms() - started_ms) / 1000
        self._metrics.observe(operation, consistency, response.status, seconds, API_LABEL)
        return response

    async def _answer(self, request: Request) -> tuple[Response, tuple[str, str]]:
        """The response, and the (operation, consistency) labels it is counted under."""
        labels = (OTHER_OPERATION, DEFAULT_CONSISTENCY)
        try:
            if request.method == b"GET":
                return _HEALTHY, labels
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
            labels = (operation, DEFAULT_CONSISTENCY)
            body = protocol.parse_body(request.body)
            if body.get("ConsistentRead") is True:
                labels = (operation, STRONG_CONSISTENCY)
            answer = await self._service.call(operation, body)
            return protocol.ok_response(answer), labels
        except DynamoError as error:
            return protocol.error_response(error), labels
        except DynakvError as error:
            return protocol.dynakv_error_response(error), labels
        except Exception as exc:
            return self.internal_error_response(exc), labels


def dynamo_router(
    backend: KvBackend,
    limits: Limits,
    clock: Clock,
    environ: Mapping[str, str] | None = None,
    *,
    metrics: RequestMetrics | None = None,
) -> DynamoRouter:
    """The DynamoDB API over ``backend``, for a node's ``Dispatcher``. Signatures are
    verified when ``environ`` names a credentials file (``sigv4.CREDENTIALS_FILE_ENV``);
    requests are counted in ``metrics`` (the node's) when given."""
    credentials = sigv4.credentials_from_environment(environ or {})
    if credentials is not None:
        log.info("dynamodb api verifies signatures access_keys=%d", len(credentials))
    return _router(backend, limits, clock, credentials, metrics)


def _router(
    backend: KvBackend,
    limits: Limits,
    clock: Clock,
    credentials: Mapping[str, str] | None,
    metrics: RequestMetrics | None,
) -> DynamoRouter:
    service = DynamoService(backend, limits, now_ms=clock.now_ms, monotonic_ms=clock.monotonic_ms)
    return DynamoRouter(
        service,
        limits,
        now_ms=clock.now_ms,
        credentials=credentials,
        metrics=metrics,
        monotonic_ms=clock.monotonic_ms,
    )


def build_dispatcher(
    backend: KvBackend,
    limits: Limits,
    clock: Clock,
    *,
    credentials: Mapping[str, str] | None = None,
    others: Iterable[RequestRouter] = (),
    metrics: RequestMetrics | None = None,
) -> Dispatcher:
    """The native API as the default, ``others``, and the DynamoDB API on ``/``."""
    dynamo = _router(backend, limits, clock, credentials, metrics)
    return Dispatcher(Router(backend, limits), [*others, dynamo])

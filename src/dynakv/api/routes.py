"""The native HTTP API's routes: parsed request in, response out.

Routes (``{key}`` is the percent-encoded key, one path segment)::

    GET    /v1/kv/{key}?consistency=          200 value | 300 siblings | 404 KeyNotFound
    PUT    /v1/kv/{key}?consistency=&ttl=     204 | 412 PreconditionFailed, body = the value
    DELETE /v1/kv/{key}?consistency=          204 | 412 PreconditionFailed
    POST   /v1/batch?consistency=             200, one result per operation (see below)
    GET    /v1/admin/local/{key}              200, this node's stored record (no quorum)
    GET    /v1/status                         200, the backend's status document
    GET    /health                            200, the backend's health document

Every kv response carries ``X-Dynakv-Context`` (the 404 too, so a client can
overwrite a tombstone causally), and ``ETag: "<etag>"`` whenever the version
it names has a visible value (``core.etag``): a GET's (any level), a strong
write's, and a 412's current version. ``consistency=strong`` runs on the
per-key Paxos path (``KvBackend.write_strong`` for writes); so does every PUT
or DELETE with ``If-Match: "<etag>"`` or ``If-None-Match: *`` (create only),
whatever its level. A false condition is 412 with the current ETag; nothing
is written. Parsing and rendering are pure functions;
``Router.handle`` only adds the backend call and turns every exception into
a response: ``DynakvError`` into its own status, anything else into a logged
500. A request is validated completely before the backend sees it, so a
rejected request never stores anything; a malformed percent escape in the key
or the query is a 400 naming the field, never a literal ``%``. Keys that begin
with ``RESERVED_KEY_PREFIX`` (internal metadata and DynamoDB items) are a 400
``KeyReserved`` on every route: this API never reads or writes them.

``consistency=session`` (``core.session``) reads from one replica that holds
what the client's ``X-Dynakv-Session`` token has seen (else a quorum) and
writes at quorum. Every kv response to a request that carried a token or
asked for ``session`` carries the updated token, errors included (unchanged
then). ``Idempotency-Key`` on a weak PUT or DELETE (``core.idempotency``)
makes a retry of it apply at most once; a bad one is a 400 naming it.

``POST /v1/batch`` carries up to ``BATCH_GETS_MAX`` gets, or up to
``BATCH_WRITES_MAX`` puts and deletes (with gets, ``BATCH_GETS_MAX`` in all),
as JSON with base64 keys and values (``BatchBody``). The whole body is
validated first (any bad operation is a 400 naming ``ops[i].<field>``, and
nothing runs); then every operation runs concurrently through the same
``KvBackend`` calls as its single-key route, and each gets its own result
(status, value or context, or its error), in the order sent. Operations of
one batch are not ordered among themselves and not atomic together.

``Router`` is the ``RequestRouter`` (``api/wire.py``) of this API and the
dispatcher's default: it owns every request no other API claims, reads the
``X-Dynakv-Context``, ``X-Dynakv-Session``, ``Idempotency-Key``, ``If-Match``
and ``If-None-Match`` headers, and renders every error, the connection's
included, as ``{"error": {...}}``.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import re
from typing import Any, Final
from urllib.parse import unquote_to_bytes

import msgspec

from dynakv.api.backend import GetResult, KvBackend, WriteResult
from dynakv.api.connection import run_eagerly
from dynakv.api.errors import (
    RESERVED_KEY_PREFIX,
    BodyTooLarge,
    InternalError,
    KeyReserved,
    MethodNotAllowed,
)
from dynakv.api.wire import (
    JSON_HEADERS,
    OCTET_HEADERS,
    Request,
    Response,
    error_document,
    error_response,
    internal_error_response,
    json_body,
    json_response,
)
from dynakv.config import Limits
from dynakv.core.consistency import Consistency, parse_consistency
from dynakv.core.etag import Condition, IfAbsent, IfMatch
from dynakv.core.idempotency import parse_idempotency_key
from dynakv.core.record import Context, Record, context_of, decode_context, encode_context
from dynakv.core.session import LEVEL as SESSION_LEVEL
from dynakv.core.session import (
    SessionToken,
    decode_session,
    encode_session,
    observe,
    session_key_hash,
)
from dynakv.errors import (
    DynakvError,
    InvalidRequest,
    KeyTooLarge,
    NotFound,
    PreconditionFailed,
    ValueTooLarge,
)

logger = logging.getLogger(__name__)

KV_PREFIX: Final = b"/v1/kv/"
_BATCH_PATH: Final = b"/v1/batch"
BATCH_GETS_MAX: Final = 100  # operations of any kind in one batch
BATCH_WRITES_MAX: Final = 25  # puts and deletes in one batch
_BATCH_CONSISTENCY: Final = frozenset(
    {Consistency.ONE, Consistency.QUORUM, Consistency.ALL, Consistency.STRONG}
)
LOCAL_PREFIX: Final = b"/v1/admin/local/"
_STATUS_PATH: Final = b"/v1/status"
_REPAIR_PATH: Final = b"/v1/admin/repair"
_METRICS_PATH: Final = b"/metrics"
_METRICS_HEADERS: Final = b"content-type: text/plain; version=0.0.4; charset=utf-8\r\n"
_REPAIR_PARAMS: Final = frozenset({"partition"})
_HEALTH_PATH: Final = b"/health"

_KV_METHODS: Final = ["DELETE", "GET", "PUT"]
_GET_ONLY: Final = ["GET"]
_READ_PARAMS: Final = frozenset({"consistency"})
_WRITE_PARAMS: Final = frozenset({"consistency", "ttl"})
_NO_PARAMS: Final[frozenset[str]] = frozenset()

_CONSISTENCY_BY_TEXT: Final = {level.value.encode(): level for level in Consistency}
_CONTEXT_HEADER: Final = b"x-dynakv-context"
_IF_MATCH_HEADER: Final = b"if-match"
_IF_NONE_MATCH_HEADER: Final = b"if-none-match"
_SESSION_HEADER: Final = b"x-dynakv-session"
_IDEMPOTENCY_HEADER: Final = b"idempotency-key"
_HEADER_NAMES: Final = frozenset(
    {
        _CONTEXT_HEADER,
        _IF_MATCH_HEADER,
        _IF_NONE_MATCH_HEADER,
        _SESSION_HEADER,
        _IDEMPOTENCY_HEADER,
    }
)
_SESSION_HEADER_NAME: Final = b"x-dynakv-session: "
_SESSION_WORD: Final = SESSION_LEVEL.encode()  # a query without it is not a session's
_CONTEXT_HEADER_NAME: Final = b"x-dynakv-context: "
_ETAG_HEADER_NAME: Final = b"etag: "
# No ETag of ours is this long (they are 22 characters); a longer If-Match is refused
# rather than echoed back in a 412.
_IF_MATCH_TAG_CHARS_MAX: Final = 128
# a '%' not followed by two hex digits (RFC 3986 §2.1): never guessed at, always a 400
_MALFORMED_PERCENT: Final = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_KEY_NOT_FOUND_BODY: Final = json_body(
    {"error": {"code": "KeyNotFound", "message": "no value is stored under this key"}}
)


# --- parsing (pure) --------------------------------------------------------------------------


def split_target(url: bytes) -> tuple[bytes, bytes]:
    """(path, query) of a request target, both still percent-encoded."""
    if url[:1] != b"/":
        # absolute-form (RFC 9112 §3.2.2): drop scheme and authority.
        scheme_end = url.find(b"://")
        if scheme_end < 0:
            raise NotFound(f"no route for target {url[:64]!r}")
        path_start = url.find(b"/", scheme_end + 3)
        url = url[path_start:] if path_start >= 0 else b"/"
    if b"#" in url:
        url = url[: url.index(b"#")]
    query_start = url.find(b"?")
    if query_start < 0:
        return url, b""
    return url[:query_start], url[query_start + 1 :]


def percent_decode(data: bytes, field: str) -> bytes:
    """``data`` with its %XX escapes decoded; a malformed escape is the client's error.

    ``urllib`` would keep ``%GG``, ``%4`` or a trailing ``%`` literally, so two
    spellings would name one key; we refuse them instead (RFC 3986 §2.1).
    """
    if b"%" not in data:
        return data
    malformed = _MALFORMED_PERCENT.search(data)
    if malformed is not None:
        position = malformed.start()
        raise InvalidRequest(
            f"malformed percent-encoding in {field} at byte {position}: "
            f"{data[position : position + 3]!r} is not '%' and two hex digits",
            field=field,
        )
    return unquote_to_bytes(data)


def decode_key(segment: bytes, limits: Limits) -> bytes:
    """The key named by one percent-encoded path segment; 1..key_bytes_max bytes."""
    key = percent_decode(segment, "key")
    if not key:
        raise InvalidRequest("the key must not be empty", field="key")
    if len(key) > limits.key_bytes_max:
        raise KeyTooLarge(size=len(key), max=limits.key_bytes_max)
    if key.startswith(RESERVED_KEY_PREFIX):
        raise KeyReserved()
    return key


def parse_query(query: bytes, allowed: frozenset[str]) -> dict[str, str]:
    """Query parameters by name; unknown or repeated names are the client's error."""
    params: dict[str, str] = {}
    if not query:
        return params
    for pair in query.split(b"&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition(b"=")
        name = _query_text(raw_name, "query")
        if name not in allowed:
            raise InvalidRequest(
                f"unknown query parameter {name[:64]!r}; allowed: {sorted(allowed)}",
                field=name[:64],
            )
        if name in params:
            raise InvalidRequest(f"query parameter {name!r} is repeated", field=name)
        params[name] = _query_text(raw_value, name)
    return params


def _query_text(raw: bytes, field: str) -> str:
    # Parameter names and values are ASCII words; other bytes are shown, not guessed at.
    return percent_decode(raw, field[:64]).decode("utf-8", "replace")


def parse_ttl(text: str | None, limits: Limits) -> int:
    """Seconds until expiry, 1..ttl_s_max; 0 when no ttl was given."""
    if text is None:
        return 0
    if not (
        text.isascii() and text.isdigit() and len(text) <= 12 and 1 <= int(text) <= limits.ttl_s_max
    ):
        raise InvalidRequest(
            f"ttl must be a whole number of seconds in 1..{limits.ttl_s_max}; got {text[:32]!r}",
            field="ttl",
            max=limits.ttl_s_max,
        )
    return int(text)


def parse_context_header(raw: bytes | None) -> Context:
    return decode_context(raw.decode("latin-1") if raw else "")


def _consistency(query: bytes, allowed: frozenset[str]) -> tuple[Consistency, dict[str, str]]:
    if query.startswith(b"consistency=") and b"&" not in query:
        level = _CONSISTENCY_BY_TEXT.get(query[12:])  # the hot path: one known parameter
        if level is not None:
            return level, {}
    params = parse_query(query, allowed)
    return parse_consistency(params.get("consistency")), params


def parse_level(query: bytes, allowed: frozenset[str]) -> tuple[Consistency, bool, dict[str, str]]:
    """(level, is_session, params): ``consistency=session`` runs at quorum for
    writes and as a session read (``core.session``) for reads."""
    if _SESSION_WORD not in query:
        consistency, params = _consistency(query, allowed)
        return consistency, False, params
    params = parse_query(query, allowed)
    if params.get("consistency") == SESSION_LEVEL:
        return Consistency.QUORUM, True, params
    return parse_consistency(params.get("consistency")), False, params


def parse_condition(if_match: bytes | None, if_none_match: bytes | None) -> Condition | None:
    """The write's condition from its ``If-Match`` / ``If-None-Match`` headers, or None.

    ``If-Match`` is one quoted ETag as a GET returned it; ``If-None-Match`` only
    ``*`` (create only). Lists, weak tags, ``If-Match: *`` and both headers at
    once are refused (400) rather than guessed at. A well-formed tag that is not
    an ETag of ours simply never matches (412).
    """
    if if_match is not None and if_none_match is not None:
        raise InvalidRequest("send If-Match or If-None-Match, not both", field="If-Match")
    if if_none_match is not None:
        if if_none_match.strip() != b"*":
            raise InvalidRequest(
                "If-None-Match supports only * (create only: write if the key has no value)",
                field="If-None-Match",
            )
        return IfAbsent()
    if if_match is None:
        return None
    text = if_match.strip()
    tag = text[1:-1]
    if (
        len(text) < 3
        or text[:1] != b'"'
        or text[-1:] != b'"'
        or b'"' in tag
        or b"," in tag
        or len(tag) > _IF_MATCH_TAG_CHARS_MAX
    ):
        raise InvalidRequest(
            'If-Match must be one quoted ETag as GET returned it (If-Match: "<etag>"); '
            f"got {text[:64]!r}",
            field="If-Match",
        )
    return IfMatch(tag.decode("latin-1"))


class BatchOperation(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One operation of ``POST /v1/batch``: ``op`` is get, put or delete; ``key`` and
    ``value`` are base64 in the JSON; ``context`` is a context token, ``ttl`` seconds."""

    op: str
    key: bytes
    value: bytes | None = None
    context: str = ""
    ttl: int | None = None


class BatchBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    ops: list[BatchOperation]


_batch_decoder: Final = msgspec.json.Decoder(BatchBody)


def parse_batch(body: bytes, limits: Limits) -> list[BatchOperation]:
    """A batch request's operations, each checked as its single-key route checks it;
    any bad one is the client's error, naming ``ops[i].<field>``."""
    try:
        operations = _batch_decoder.decode(body).ops
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"batch body: {exc}", field="body") from exc
    writes = sum(1 for operation in operations if operation.op != "get")
    if not 1 <= len(operations) <= BATCH_GETS_MAX or writes > BATCH_WRITES_MAX:
        raise InvalidRequest(
            f"a batch holds 1..{BATCH_GETS_MAX} operations, at most {BATCH_WRITES_MAX} "
            f"of them puts or deletes; got {len(operations)} ({writes} writes)",
            field="ops",
            max=BATCH_GETS_MAX,
        )
    for index, operation in enumerate(operations):
        _check_batch_operation(index, operation, limits)
    return operations


def _check_batch_operation(index: int, operation: BatchOperation, limits: Limits) -> None:
    field = f"ops[{index}]"
    if operation.op not in ("get", "put", "delete"):
        raise InvalidRequest(
            f"{field}.op must be get, put or delete; got {operation.op[:32]!r}", field=field + ".op"
        )
    key = operation.key
    if not key:
        raise InvalidRequest(f"{field}.key must not be empty", field=field + ".key")
    if len(key) > limits.key_bytes_max:
        raise KeyTooLarge(size=len(key), max=limits.key_bytes_max)
    if key.startswith(RESERVED_KEY_PREFIX):
        raise KeyReserved()
    if (operation.value is None) == (operation.op == "put"):
        raise InvalidRequest(
            f"{field}.value is required for a put and refused otherwise", field=field + ".value"
        )
    if operation.value is not None and len(operation.value) > limits.value_bytes_max:
        raise ValueTooLarge(size=len(operation.value), max=limits.value_bytes_max)
    if operation.ttl is not None and operation.op != "put":
        raise InvalidRequest(f"{field}.ttl is for puts only", field=field + ".ttl")
    if operation.context and operation.op == "get":
        raise InvalidRequest(f"{field}.context is for puts and deletes", field=field + ".context")
    if operation.ttl is not None:
        parse_ttl(str(operation.ttl), limits)
    decode_context(operation.context)


def _batch_consistency(query: bytes) -> Consistency:
    consistency, session, _ = parse_level(query, _READ_PARAMS)
    if session or consistency not in _BATCH_CONSISTENCY:
        raise InvalidRequest("a batch runs at one, quorum, all or strong", field="consistency")
    return consistency


# --- rendering (pure) ------------------------------------------------------------------------


def context_header(context: Context) -> bytes:
    return _CONTEXT_HEADER_NAME + encode_context(context).encode("ascii") + b"\r\n"


def session_header(token: SessionToken) -> bytes:
    return _SESSION_HEADER_NAME + encode_session(token).encode("ascii") + b"\r\n"


def etag_header(etag: str | None) -> bytes:
    """The ``ETag`` header line for ``etag`` (a strong validator, quoted); none for None."""
    if etag is None:
        return b""
    return _ETAG_HEADER_NAME + b'"' + etag.encode("ascii") + b'"\r\n'


def render_get(result: GetResult) -> Response:
    values = result.values
    if len(values) == 1:
        headers = OCTET_HEADERS + context_header(result.context) + etag_header(result.etag)
        return Response(200, headers, values[0])
    if not values:
        return Response(404, JSON_HEADERS + context_header(result.context), _KEY_NOT_FOUND_BODY)
    token = encode_context(result.context)
    document = {"siblings": [_b64(value) for value in values], "context": token}
    headers = _CONTEXT_HEADER_NAME + token.encode("ascii") + b"\r\n" + etag_header(result.etag)
    return json_response(300, document, headers)


def render_written(context: Context, etag: str | None = None) -> Response:
    return Response(204, context_header(context) + etag_header(etag))


def render_strong_written(result: WriteResult) -> Response:
    return render_written(result.context, result.etag)


def batch_get_document(result: GetResult) -> dict[str, Any]:
    """One get's result in a batch: 200 and its value, 300 and the siblings, or 404."""
    document: dict[str, Any] = {"context": encode_context(result.context)}
    values = result.values
    if len(values) == 1:
        document["status"] = 200
        document["value"] = _b64(values[0])
    elif values:
        document["status"] = 300
        document["siblings"] = [_b64(value) for value in values]
    else:
        document["status"] = 404
    if result.etag is not None:
        document["etag"] = result.etag
    return document


def batch_error_document(error: DynakvError) -> dict[str, Any]:
    """One failed operation's result in a batch: its status and its error document."""
    return {"status": error.http_status, **error_document(error.code, error.message, error.facts())}


def local_record_document(key: bytes, record: Record | None) -> dict[str, Any]:
    if record is None:
        return {"key": _b64(key), "record": None}
    siblings = [
        {
            "value": None if sibling.value is None else _b64(sibling.value),
            "tombstone": sibling.is_tombstone,
            "dot": {"node": sibling.node, "counter": sibling.counter},
            "past": dict(sibling.past),
            "timestamp": sibling.timestamp,
            "expires_at_ms": sibling.expires_at_ms,
        }
        for sibling in record.siblings
    ]
    context = encode_context(context_of(record))
    return {"key": _b64(key), "record": {"siblings": siblings, "context": context}}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- dispatch --------------------------------------------------------------------------------


class Router:
    """Routes requests to a ``KvBackend``; never raises (CancelledError aside)."""

    __slots__ = ("_backend", "_limits", "_options")

    header_names: Final = _HEADER_NAMES

    def __init__(self, backend: KvBackend, limits: Limits) -> None:
        self._backend = backend
        self._limits = limits
        self._options = _offered_options(backend)

    def owns(self, request: Request) -> bool:
        return True  # the default: whatever no other API claims

    def early_refusal(self, request: Request, declared_bytes: int) -> DynakvError | None:
        if declared_bytes > self._limits.value_bytes_max and _is_kv_put(request):
            # the client waits for our word: refuse now rather than read a doomed value
            return ValueTooLarge(size=declared_bytes, max=self._limits.value_bytes_max)
        return None

    def body_too_large(self, request: Request, size_bytes: int) -> DynakvError:
        limits = self._limits
        if _is_kv_put(request):
            return ValueTooLarge(size=size_bytes, max=limits.value_bytes_max)
        return BodyTooLarge(size=size_bytes, max=limits.http_body_bytes_max)

    def error_response(self, error: DynakvError) -> Response:
        return error_response(error)

    def internal_error_response(self, exc: BaseException) -> Response:
        return internal_error_response(exc)

    async def handle(self, request: Request) -> Response:
        try:
            path, query = split_target(request.url)
            if path.startswith(KV_PREFIX):
                return await self._kv(request, path[len(KV_PREFIX) :], query)
            if path.startswith(LOCAL_PREFIX):
                self._require_get(request, _GET_ONLY)
                key = decode_key(self._segment(path[len(LOCAL_PREFIX) :]), self._limits)
                parse_query(query, _NO_PARAMS)
                record = self._backend.local_record(key)
                return json_response(200, local_record_document(key, record))
            if path == _STATUS_PATH:
                self._require_get(request, _GET_ONLY)
                parse_query(query, _NO_PARAMS)
                return json_response(200, await self._backend.status())
            if path == _HEALTH_PATH:
                self._require_get(request, _GET_ONLY)
                parse_query(query, _NO_PARAMS)
                return json_response(200, self._backend.health())
            if path == _METRICS_PATH:
                self._require_get(request, _GET_ONLY)
                parse_query(query, _NO_PARAMS)
                return Response(200, _METRICS_HEADERS, await self._backend.metrics())
            if path == _REPAIR_PATH:
                return await self._repair(request, query)
            if path == _BATCH_PATH:
                return await self._batch(request, query)
            raise NotFound(f"no route for {path[:200].decode('latin-1')}")
        except PreconditionFailed as error:
            return error_response(error, etag_header(error.current_etag))
        except DynakvError as error:
            return error_response(error)
        except Exception as exc:
            return internal_error_response(exc)

    async def _repair(self, request: Request, query: bytes) -> Response:
        """``POST /v1/admin/repair[?partition=P]``: one anti-entropy pass now, over
        every partition this node replicates (or P), and what it moved."""
        if request.method != b"POST":
            raise MethodNotAllowed(method=request.method.decode("latin-1"), allow=["POST"])
        text = parse_query(query, _REPAIR_PARAMS).get("partition")
        partitions = None
        if text is not None:
            if not (text.isascii() and text.isdigit() and len(text) <= 5):
                raise InvalidRequest(
                    f"partition must be a partition number; got {text[:32]!r}", field="partition"
                )
            partitions = [int(text)]
        return json_response(200, await self._backend.repair(partitions))

    async def _batch(self, request: Request, query: bytes) -> Response:
        """``POST /v1/batch``: every operation at once, each with its own result."""
        if request.method != b"POST":
            raise MethodNotAllowed(method=request.method.decode("latin-1"), allow=["POST"])
        consistency = _batch_consistency(query)
        operations = parse_batch(request.body, self._limits)
        results: list[dict[str, Any]] = [{}] * len(operations)
        # Each operation is stepped at once: one that never waits (a local read)
        # costs no task; only those that suspend run as tasks, all at once.
        waiting = [
            task
            for index, operation in enumerate(operations)
            if (task := run_eagerly(self._batch_into(results, index, operation, consistency)))
            is not None
        ]
        if waiting:
            await asyncio.gather(*waiting)
        return json_response(200, {"results": results})

    async def _batch_into(
        self,
        results: list[dict[str, Any]],
        index: int,
        operation: BatchOperation,
        consistency: Consistency,
    ) -> None:
        results[index] = await self._batch_operation(operation, consistency)

    async def _batch_operation(
        self, operation: BatchOperation, consistency: Consistency
    ) -> dict[str, Any]:
        """One checked batch operation through the backend; its result, never an exception."""
        backend = self._backend
        key = operation.key
        try:
            if operation.op == "get":
                return batch_get_document(await backend.get(key, consistency))
            ttl_s = 0 if operation.ttl is None else operation.ttl
            if consistency is Consistency.STRONG:
                written = await backend.write_strong(
                    key, operation.value, condition=None, ttl_s=ttl_s
                )
                document: dict[str, Any] = {
                    "status": 204,
                    "context": encode_context(written.context),
                }
                if written.etag is not None:
                    document["etag"] = written.etag
                return document
            context = decode_context(operation.context)
            if operation.value is not None:
                context = await backend.put(key, operation.value, consistency, ttl_s, context)
            else:
                context = await backend.delete(key, consistency, context)
            return {"status": 204, "context": encode_context(context)}
        except DynakvError as error:
            return batch_error_document(error)
        except Exception as exc:
            logger.error("batch operation failed op=%s", operation.op, exc_info=exc)
            return batch_error_document(InternalError(f"internal error ({type(exc).__name__})"))

    async def _kv(self, request: Request, segment: bytes, query: bytes) -> Response:
        raw_token = request.header(_SESSION_HEADER)
        if raw_token is None and _SESSION_WORD not in query:
            return (await self._kv_operation(request, segment, query, None))[0]
        token = decode_session(raw_token)
        try:
            response, seen = await self._kv_operation(request, segment, query, token)
        except PreconditionFailed as error:
            return error_response(error, etag_header(error.current_etag) + session_header(token))
        except DynakvError as error:
            return error_response(error, session_header(token))
        if seen is not None:
            key, context = seen
            key_hash = session_key_hash(key)
            token = observe(token, key_hash, context.clock, context.max_timestamp)
        response.headers += session_header(token)
        return response

    async def _kv_operation(
        self, request: Request, segment: bytes, query: bytes, token: SessionToken | None
    ) -> tuple[Response, tuple[bytes, Context] | None]:
        """The response, and (key, context) of the version it read or wrote."""
        method = request.method
        backend = self._backend
        if method == b"GET":
            key = decode_key(self._segment(segment), self._limits)
            consistency, session, _ = parse_level(query, _READ_PARAMS)
            if session and token is not None and "session" in self._options:
                result = await backend.get(key, consistency, session=token)
            else:
                result = await backend.get(key, consistency)
            return render_get(result), (key, result.context)
        if method == b"PUT":
            key = decode_key(self._segment(segment), self._limits)
            consistency, session, params = parse_level(query, _WRITE_PARAMS)
            ttl_s = parse_ttl(params.get("ttl"), self._limits)
            context = parse_context_header(request.header(_CONTEXT_HEADER))
            condition = _request_condition(request)
            value = request.body
            if len(value) > self._limits.value_bytes_max:
                raise ValueTooLarge(size=len(value), max=self._limits.value_bytes_max)
            extra = self._write_options(request, token if session else None)
            if consistency is Consistency.STRONG or condition is not None:
                # Linearizable: on top of whatever is current; the context is not needed.
                written = await backend.write_strong(key, value, condition=condition, ttl_s=ttl_s)
                return render_strong_written(written), (key, written.context)
            context = await backend.put(key, value, consistency, ttl_s, context, **extra)
            return render_written(context), (key, context)
        if method == b"DELETE":
            key = decode_key(self._segment(segment), self._limits)
            consistency, session, _ = parse_level(query, _READ_PARAMS)
            context = parse_context_header(request.header(_CONTEXT_HEADER))
            condition = _request_condition(request)
            extra = self._write_options(request, token if session else None)
            if consistency is Consistency.STRONG or condition is not None:
                written = await backend.write_strong(key, None, condition=condition, ttl_s=0)
                return render_strong_written(written), (key, written.context)
            context = await backend.delete(key, consistency, context, **extra)
            return render_written(context), (key, context)
        raise MethodNotAllowed(method=method.decode("latin-1"), allow=_KV_METHODS)

    def _write_options(self, request: Request, session: SessionToken | None) -> dict[str, Any]:
        """The optional arguments of a weak write, passed only when set (and offered).
        A strong or conditional write ignores the idempotency key (its condition
        makes a retry safe); a bad key is a 400 all the same."""
        options: dict[str, Any] = {}
        key_hash = parse_idempotency_key(request.header(_IDEMPOTENCY_HEADER))
        if key_hash and "idempotency_hash" in self._options:
            options["idempotency_hash"] = key_hash
        if session is not None and "session" in self._options:
            options["session"] = session
        return options

    @staticmethod
    def _segment(segment: bytes) -> bytes:
        if b"/" in segment:
            raise NotFound("a key is one path segment; send '/' inside a key as %2F")
        return segment

    @staticmethod
    def _require_get(request: Request, allow: list[str]) -> None:
        if request.method != b"GET":
            raise MethodNotAllowed(method=request.method.decode("latin-1"), allow=allow)


def _offered_options(backend: KvBackend) -> frozenset[str]:
    """Which optional arguments (``KvBackend``'s ``idempotency_hash``, ``session``)
    the backend takes. The node takes both; a test double may take neither, and
    then serves such requests as plain ones (a session read at quorum)."""
    offered: set[str] = set()
    for method in (backend.get, backend.put, backend.delete):
        offered.update(inspect.signature(method).parameters)
    return frozenset(offered & {"idempotency_hash", "session"})


def _request_condition(request: Request) -> Condition | None:
    return parse_condition(request.header(_IF_MATCH_HEADER), request.header(_IF_NONE_MATCH_HEADER))


def _is_kv_put(request: Request) -> bool:
    return request.method == b"PUT" and KV_PREFIX in request.url[:64]

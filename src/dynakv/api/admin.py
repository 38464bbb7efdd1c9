"""Ring changes over HTTP: ``POST /v1/admin/join``, ``/v1/admin/leave``, ``/v1/admin/remove``.

A router of its own beside the native one (``api.wire.Dispatcher``), in the
native API's JSON shapes. ``join`` and ``leave`` concern the node that
receives them (a new node asks to join; a member asks to be decommissioned);
``remove?node=ID`` may go to any member and names a dead node whose
partitions are re-replicated from the survivors. The answer is 202 with the
change once it is chosen (it then runs to its end by itself: watch
``/v1/status`` → ``ring_change``), 409 ``ChangeInProgress`` naming the change
in progress, 503 when no majority of the ring's members answered, or 400.

Errors defined here (in the tree of ``dynakv.errors``): ``ChangeInProgress``
(a ``RequestError``, 409) and ``ChangeRefused`` (400).
"""

from __future__ import annotations

import re
from typing import Final, Protocol

from dynakv.api.errors import MethodNotAllowed
from dynakv.api.wire import (
    Request,
    Response,
    error_response,
    internal_error_response,
    json_response,
)
from dynakv.core.claim import ChangeKind
from dynakv.core.claimant import Accepted, Busy, Outcome, Refused, Unavailable
from dynakv.errors import DynakvError, InvalidRequest, NotFound, RequestError, UnavailableError

PREFIX: Final = b"/v1/admin/"
KINDS: Final[dict[bytes, ChangeKind]] = {b"join": "join", b"leave": "leave", b"remove": "remove"}
NODE_ID_BYTES_MAX: Final = 128
_NODE_ID: Final = re.compile(rb"[A-Za-z0-9._-]{1,%d}" % NODE_ID_BYTES_MAX)


class ChangeInProgress(RequestError):
    """Another ring change is in progress; one runs at a time."""

    code = "ChangeInProgress"
    http_status = 409

    def __init__(self, *, change: str, description: str) -> None:
        super().__init__(
            f"another ring change is in progress: {description}; retry once it ends",
            change=change,
        )


class ChangeRefused(RequestError):
    code = "ChangeRefused"
    http_status = 400


class RingChangeUnavailable(UnavailableError):
    code = "RingChangeUnavailable"


class RingAdmin(Protocol):
    async def request_ring_change(self, kind: ChangeKind, node_id: str | None) -> Outcome: ...


def outcome_response(outcome: Outcome) -> Response:
    """202 with the chosen change, or the error that says why not."""
    if isinstance(outcome, Accepted):
        change = outcome.change
        return json_response(202, {"change": change.change_id, "accepted": change.describe()})
    if isinstance(outcome, Busy):
        error: DynakvError = ChangeInProgress(
            change=outcome.change.change_id, description=outcome.change.describe()
        )
    elif isinstance(outcome, Unavailable):
        error = RingChangeUnavailable(outcome.reason)
    else:
        assert isinstance(outcome, Refused), outcome
        error = ChangeRefused(outcome.reason)
    return error_response(error)


class RingAdminRouter:
    """Owns ``POST /v1/admin/{join,leave,remove}``; everything else is another router's."""

    header_names: frozenset[bytes] = frozenset()

    def __init__(self, admin: RingAdmin) -> None:
        self._admin = admin

    def owns(self, request: Request) -> bool:
        path = request.url.partition(b"?")[0]
        return path.startswith(PREFIX) and path[len(PREFIX) :] in KINDS

    def early_refusal(self, request: Request, declared_bytes: int) -> DynakvError | None:
        return None

    def body_too_large(self, request: Request, size_bytes: int) -> DynakvError:
        return InvalidRequest(f"a ring change takes no body; got {size_bytes} bytes", field="body")

    def error_response(self, error: DynakvError) -> Response:
        return error_response(error)

    def internal_error_response(self, exc: BaseException) -> Response:
        return internal_error_response(exc)

    async def handle(self, request: Request) -> Response:
        try:
            path, _, query = request.url.partition(b"?")
            kind = KINDS.get(path[len(PREFIX) :])
            if kind is None:
                raise NotFound("no such ring change")
            if request.method != b"POST":
                raise MethodNotAllowed(method=request.method.decode("latin-1"), allow=["POST"])
            node_id = _node_param(query) if kind == "remove" else None
            if kind != "remove" and query:
                raise InvalidRequest(f"{kind} takes no query parameters", field="query")
            return outcome_response(await self._admin.request_ring_change(kind, node_id))
        except DynakvError as error:
            return error_response(error)
        except Exception as exc:
            return internal_error_response(exc)


def _node_param(query: bytes) -> str:
    name, _, value = query.partition(b"=")
    if name != b"node" or _NODE_ID.fullmatch(value) is None:
        raise InvalidRequest(
            f"remove needs node=<node id> (1 to {NODE_ID_BYTES_MAX} letters, digits, "
            "'-', '_' or '.')",
            field="node",
        )
    return value.decode("ascii")

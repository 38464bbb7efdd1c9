"""Every error dynakv raises on purpose, with the facts that explain it.

The tree::

    DynakvError                      root; never raised itself
    ├── RequestError                 the caller's request is wrong (4xx); nothing was stored
    │   ├── InvalidRequest           malformed: bad field, bad encoding, bad query       400
    │   ├── KeyTooLarge              key longer than key_bytes_max (or empty)            400/413
    │   ├── ValueTooLarge            value longer than value_bytes_max                   413
    │   ├── NotFound                 unknown route (not an absent key: that is a 404 result)
    │   └── PreconditionFailed       If-Match / If-None-Match was false; names the
    │                                current ETag; nothing was written                   412
    ├── UnavailableError             the cluster could not serve it now (HTTP 503)
    │   ├── QuorumNotReached         fewer than `required` replicas answered `acked`
    │   ├── Contended                other strong operations on the key kept winning
    │   ├── Overloaded               a bounded queue is full; retry later
    │   └── InsufficientStorage      this node's disk is below its free-space reserve      507
    ├── OutcomeUnknown               timed out after some acks: may or may not be visible (504)
    ├── RpcError                     one node-to-node call did not get an answer
    │   ├── PeerUnreachable          not delivered: no connection (the call never left)
    │   ├── RpcTimeout               no reply in time: it may or may not have been applied
    │   └── RemoteError              the peer answered with an error (its code and message)
    └── ProtocolError                bytes from a peer or client that break the wire contract
        ├── RemoteProtocolError      the other side sent something invalid (their fault)
        └── LocalProtocolError       we tried to send something invalid (our bug)

Branches defined beside the code that raises them, in the same tree:
``storage.base`` (``StorageError``: ``StorageCorruption``, ``StorageLocked``,
``StorageClosed``, ``SyncFailed``, ``MetaTooLarge``, and ``StorageFull``, which is also an
``UnavailableError`` answered 507), ``api.errors`` (HTTP-only request errors:
405, 413 body, 431, 408, and ``InternalError`` 500) and ``client.common``
(``NoEndpointReachable``, an ``UnavailableError``; ``ResponseLost``, an
``OutcomeUnknown``).

Programmer errors are ``assert``s and are never caught. Each error carries its
facts as attributes and in ``facts()`` so the HTTP layer can put them in the
JSON body without string parsing.
"""

from __future__ import annotations

from typing import ClassVar


class DynakvError(Exception):
    """Root of all dynakv errors. ``code`` is stable and machine-readable."""

    code: ClassVar[str] = "DynakvError"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, **facts: object) -> None:
        super().__init__(message)
        self.message = message
        self._facts = facts

    def facts(self) -> dict[str, object]:
        return dict(self._facts)

    def __reduce__(self) -> tuple[object, ...]:  # keep errors picklable for test tooling
        return (_rebuild_error, (type(self), self.message, self._facts))


def _rebuild_error(cls: type[DynakvError], message: str, facts: dict[str, object]) -> DynakvError:
    error = cls.__new__(cls)
    DynakvError.__init__(error, message, **facts)
    for name, value in facts.items():
        # Restore the typed attributes (required, acked, size, ...) but never
        # shadow a method or class-level constant with wire data.
        if not hasattr(cls, name):
            setattr(error, name, value)
    return error


class RequestError(DynakvError):
    code = "RequestError"
    http_status = 400


class InvalidRequest(RequestError):
    code = "InvalidRequest"
    http_status = 400

    def __init__(self, message: str, *, field: str | None = None, **facts: object) -> None:
        if field is not None:
            facts["field"] = field
        super().__init__(message, **facts)
        self.field = field


class KeyTooLarge(RequestError):
    code = "KeyTooLarge"
    http_status = 413

    def __init__(self, *, size: int, max: int) -> None:
        super().__init__(
            f"key is {size} bytes; keys must be 1..{max} bytes (key_bytes_max)",
            size=size,
            max=max,
            limit="key_bytes_max",
        )
        self.size = size
        self.max = max


class ValueTooLarge(RequestError):
    code = "ValueTooLarge"
    http_status = 413

    def __init__(self, *, size: int, max: int) -> None:
        super().__init__(
            f"value is {size} bytes; the limit is {max} bytes (value_bytes_max)",
            size=size,
            max=max,
            limit="value_bytes_max",
        )
        self.size = size
        self.max = max


class NotFound(RequestError):
    code = "NotFound"
    http_status = 404


class PreconditionFailed(RequestError):
    """A conditional write's condition was false on the key's current version
    (linearizably: judged inside per-key Paxos). Nothing was written.
    ``current_etag`` is the current version's ETag, None when the key has no
    visible value."""

    code = "PreconditionFailed"
    http_status = 412

    def __init__(self, *, condition: str, current_etag: str | None) -> None:
        current = "no visible value" if current_etag is None else f"ETag {current_etag}"
        super().__init__(
            f"the condition {condition} is false: the key has {current}; nothing was written",
            condition=condition,
            current_etag=current_etag,
        )
        self.condition = condition
        self.current_etag = current_etag


class UnavailableError(DynakvError):
    code = "Unavailable"
    http_status = 503
    retry_after_s: int = 1


class QuorumNotReached(UnavailableError):
    """Fewer than ``required`` replicas acknowledged. Dynamo semantics: there is
    no rollback, so the ``acked`` replicas keep the write and it may surface later."""

    code = "QuorumNotReached"

    def __init__(self, *, required: int, acked: int, consistency: str) -> None:
        super().__init__(
            f"{consistency} needs {required} replica(s); {acked} answered",
            required=required,
            acked=acked,
            consistency=consistency,
        )
        self.required = required
        self.acked = acked
        self.consistency = consistency


class Contended(UnavailableError):
    """A strong operation lost ``rounds`` Paxos rounds in a row to other proposers
    on the same key and gave up; nothing of it was applied. Retry later."""

    code = "Contended"

    def __init__(self, *, rounds: int, reason: str = "other proposers kept winning") -> None:
        super().__init__(
            f"strong operation gave up after {rounds} round(s): {reason}; nothing was applied",
            rounds=rounds,
            reason=reason,
        )
        self.rounds = rounds
        self.reason = reason


class StaleRouting(UnavailableError):
    """A replica refused a Paxos request routed by an older ring or change than the one
    it knows for the key's partition (``core.homes``): nothing was applied. The
    proposer's node learns the change shortly; retry."""

    code = "StaleRouting"

    def __init__(self, *, reason: str) -> None:
        super().__init__(f"stale routing for a strong operation: {reason}", reason=reason)
        self.reason = reason


class Overloaded(UnavailableError):
    code = "Overloaded"

    def __init__(self, *, resource: str, limit: int) -> None:
        super().__init__(
            f"{resource} is full (limit {limit}); retry later", resource=resource, limit=limit
        )
        self.resource = resource
        self.limit = limit


class InsufficientStorage(UnavailableError):
    """The node's data directory is below its free-space reserve: it refuses new
    values (deletes, reads and tombstone replication go on) until space is freed."""

    code = "InsufficientStorage"
    http_status = 507
    retry_after_s = 30

    def __init__(self, *, node: str, free_bytes: int, reserve_bytes: int) -> None:
        super().__init__(
            f"node {node} has {free_bytes} bytes free, below its reserve of "
            f"{reserve_bytes} bytes (disk_reserve_bytes): writes are refused until "
            "space is freed",
            node=node,
            free_bytes=free_bytes,
            reserve_bytes=reserve_bytes,
        )
        self.node = node
        self.free_bytes = free_bytes
        self.reserve_bytes = reserve_bytes


class OutcomeUnknown(DynakvError):
    """Some replicas acknowledged, then the rest timed out: the write may or may
    not become visible. Never reported as failed; retrying with the same
    context is safe."""

    code = "OutcomeUnknown"
    http_status = 504

    def __init__(
        self,
        *,
        required: int,
        acked: int,
        consistency: str,
        timeout_ms: int,
        reason: str | None = None,
    ) -> None:
        why = reason or f"{acked} arrived before the {timeout_ms} ms timeout"
        super().__init__(
            f"{consistency} needs {required} ack(s); {why}: the outcome is unknown",
            required=required,
            acked=acked,
            consistency=consistency,
            timeout_ms=timeout_ms,
        )
        self.required = required
        self.acked = acked
        self.consistency = consistency
        self.timeout_ms = timeout_ms


class RpcError(DynakvError):
    code = "RpcError"
    http_status = 503


class PeerUnreachable(RpcError):
    code = "PeerUnreachable"

    def __init__(self, *, peer: str, reason: str) -> None:
        super().__init__(f"peer {peer} is unreachable: {reason}", peer=peer, reason=reason)
        self.peer = peer


class RpcTimeout(RpcError):
    code = "RpcTimeout"

    def __init__(self, *, peer: str, timeout_ms: int) -> None:
        super().__init__(
            f"peer {peer} did not answer within {timeout_ms} ms", peer=peer, timeout_ms=timeout_ms
        )
        self.peer = peer
        self.timeout_ms = timeout_ms


class RemoteError(RpcError):
    code = "RemoteError"

    def __init__(
        self,
        *,
        peer: str,
        remote_code: str,
        message: str,
        remote_facts: dict[str, object] | None = None,
    ) -> None:
        super().__init__(
            f"peer {peer} answered {remote_code}: {message}", peer=peer, remote_code=remote_code
        )
        self.peer = peer
        self.remote_code = remote_code
        self.remote_message = message
        self.remote_facts: dict[str, object] = dict(remote_facts or {})


class ProtocolError(DynakvError):
    code = "ProtocolError"
    http_status = 400


class RemoteProtocolError(ProtocolError):
    code = "RemoteProtocolError"


class LocalProtocolError(ProtocolError):
    code = "LocalProtocolError"
    http_status = 500


def _all_error_classes(root: type[DynakvError]) -> list[type[DynakvError]]:
    found = [root]
    for sub in root.__subclasses__():
        found.extend(_all_error_classes(sub))
    return found


def rebuild_error(code: str, message: str, facts: dict[str, object]) -> DynakvError:
    """The typed error for a code received from another node or from the HTTP API.

    Unknown codes become a plain ``DynakvError`` carrying the code in its facts,
    so nothing from the wire is ever trusted to pick an arbitrary class.
    """
    for cls in _all_error_classes(DynakvError):
        if cls.code == code:
            return _rebuild_error(cls, message, facts)
    return _rebuild_error(DynakvError, message, {**facts, "remote_code": code})

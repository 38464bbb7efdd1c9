"""What the HTTP API needs from a node: the ``KvBackend`` protocol.

The HTTP layer (``dynakv.api.http``) parses requests and renders responses;
everything it does to data goes through this protocol. The node runtime
implements it on top of the coordinator; the tests implement it in memory.

Contract for implementers:

- ``get`` returns every visible value (``[]`` when the key is absent, deleted
  or expired; more than one when there are siblings) and the causal context
  a writer should pass back to supersede what it read.
- ``get`` also returns the ETag (``core.etag``) of the version it read, None
  when no value is visible; with ``Consistency.STRONG`` the read is
  linearizable (per-key Paxos, ``node.strong``).
- ``put`` and ``delete`` write on top of the given context and return the
  context of the new version. They are never called with
  ``Consistency.STRONG``: those writes, and every conditional write, go to
  ``write_strong``.
- ``get`` with ``session`` (a ``core.session`` token) is a session read: any
  replica whose record is as new as what the token saw of the key may answer,
  else a quorum (``consistency`` is then ``QUORUM``, the fallback's level).
- ``put`` and ``delete`` with ``idempotency_hash`` (an ``Idempotency-Key``'s
  hash, ``core.idempotency``; 0 = none) are applied at most once per key and
  hash within the cluster's ``idempotency_window_s``: a retry answers the
  original write's context. With ``session`` they are session writes (at
  ``QUORUM``, stamped past every timestamp the token saw).
  The router passes these keyword arguments only when they are set.
- ``write_strong`` writes (``value`` None: deletes) linearizably, on top of
  whatever is current, if ``condition`` (``IfMatch``/``IfAbsent``) holds on
  the current version; a false condition raises ``PreconditionFailed`` with
  the current ETag and writes nothing.
- Failures are raised as ``dynakv.errors`` (``QuorumNotReached``,
  ``OutcomeUnknown``, ``Overloaded``, ``InvalidRequest``, ...); the HTTP layer
  maps each to its status code. Anything else is a bug and becomes a 500.
- ``read_range`` (``RangeBackend``, a separate protocol until every backend has
  it) reads one partition's keys in a range, merged over the asked replicas.
- Arguments are already validated: keys are 1..key_bytes_max bytes, values at
  most value_bytes_max bytes, ``ttl_s`` is 0 (no expiry) or 1..ttl_s_max.

This module owns no behaviour and does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from dynakv.core.consistency import Consistency
from dynakv.core.etag import Condition
from dynakv.core.record import Context, Record
from dynakv.core.session import SessionToken


@dataclass(frozen=True, slots=True)
class GetResult:
    """A read's answer: visible values (empty = absent), the context to write on top
    of, and the version's ETag (None when no value is visible)."""

    values: list[bytes]
    context: Context
    etag: str | None = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    """A strong write's answer: the new version's context and ETag (None for a delete)."""

    context: Context
    etag: str | None


@dataclass(frozen=True, slots=True)
class RangeQuery:
    """A range read of one partition: the keys in ``[low, high)`` (``high`` None: to
    the partition's end), in key order or (``reverse``) from the top, at most
    ``limit`` records and about ``bytes_max`` bytes. ``partition`` None: the
    partition ``low`` is placed in (``core.ring.partition_of``). ``consistency``
    is ``one``, ``quorum`` or ``all``: that many replicas are merged (``strong`` runs as
    ``quorum``: a range is not read through per-key Paxos)."""

    partition: int | None
    low: bytes
    high: bytes | None
    reverse: bool
    consistency: Consistency
    limit: int
    bytes_max: int


@dataclass(frozen=True, slots=True)
class RangePage:
    """A range read's answer: (key, visible values) in the order asked, keys with no
    visible value left out; ``resume`` is where the next page starts, exclusive (None:
    the range is exhausted); ``partition_count`` is the ring's Q."""

    entries: list[tuple[bytes, list[bytes]]]
    resume: bytes | None
    partition_count: int


@runtime_checkable
class RangeBackend(Protocol):
    """A backend that also serves range reads (the DynamoDB API's Query and Scan).
    An empty range (``high`` not above ``low``) is answered without asking a replica."""

    async def read_range(self, query: RangeQuery) -> RangePage: ...


class KvBackend(Protocol):
    async def get(
        self, key: bytes, consistency: Consistency, *, session: SessionToken | None = None
    ) -> GetResult: ...

    async def put(
        self,
        key: bytes,
        value: bytes,
        consistency: Consistency,
        ttl_s: int,
        context: Context,
        *,
        idempotency_hash: int = 0,
        session: SessionToken | None = None,
    ) -> Context: ...

    async def delete(
        self,
        key: bytes,
        consistency: Consistency,
        context: Context,
        *,
        idempotency_hash: int = 0,
        session: SessionToken | None = None,
    ) -> Context: ...

    async def write_strong(
        self, key: bytes, value: bytes | None, *, condition: Condition | None, ttl_s: int
    ) -> WriteResult: ...

    def local_record(self, key: bytes) -> Record | None: ...

    async def status(self) -> dict[str, Any]: ...

    async def metrics(self) -> bytes:
        """The Prometheus text exposition of this node's metrics."""
        ...

    async def repair(self, partitions: list[int] | None) -> dict[str, Any]:
        """One anti-entropy pass now (``None``: every partition this node replicates);
        the keys and bytes it moved. ``InvalidRequest`` for a partition not held here."""
        ...

    def health(self) -> dict[str, Any]: ...

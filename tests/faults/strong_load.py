"""A concurrent ``strong`` and conditional load on a few keys against real node
processes, recorded as a history for the linearizability checker
(``dynakv.sim.linearizability``).

Each client is a thread bound to one node. It loops over: a strong GET (which
remembers the ETag it read), a strong PUT, an If-Match PUT or DELETE with the
ETag it last read (a read-modify-write), an If-None-Match PUT (create only), and
a strong DELETE; every value is unique (``<client>-<sequence>``). Conditional
writes carry no ``consistency`` parameter: they must be linearizable whatever
the level. Each request is one operation, sent on a fresh connection and timed
on the test's monotonic clock from just before sending to just after the
answer (``time.monotonic_ns``: one clock for every thread).

What an answer means (``to_operation``; see the checker's table)::

    never sent (connect failed)      nothing happened: dropped
    GET 200 / 404                    OK, the value (ETag) or absent
    GET anything else, or no answer  a failed read says nothing: dropped
    write 204                        OK (a PUT's ETag is required)
    conditional write 412            PRECONDITION_FAILED, the ETag sent, or none = absent
    write 503                        definitely not applied (node.strong): dropped
    write 5xx else, or no answer     UNKNOWN: it may take effect at any later time
    anything else                    an anomaly: the test fails on it

Owns its threads (stopped and joined in ``stop``, bounded by ``ops_max`` and
by the HTTP timeout) and the records. Must never: count a write as applied
unless the node answered 204, or drop a write that was sent and not refused
for sure (that would hide a lost or a phantom write from the checker).
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from dynakv.sim.linearizability import ABSENT_ETAG, Kind, Operation, Status
from tests.faults.conftest import DEADLINE_S, HTTP_TIMEOUT_S, FaultCluster, NotSent, wait_for

OPS_MAX_DEFAULT: Final = 20_000
_VALUED: Final = frozenset({Kind.PUT, Kind.CAS_PUT, Kind.CREATE})
_CAS: Final = frozenset({Kind.CAS_PUT, Kind.CAS_DELETE})
# The mix, by weight: reads, blind writes, read-modify-writes, creates, deletes.
MIX: Final = (
    ("get", 30),
    ("put", 15),
    ("cas_put", 25),
    ("create", 10),
    ("delete", 10),
    ("cas_delete", 10),
)


@dataclass(frozen=True, slots=True)
class Call:
    """One request as sent."""

    client: str
    node: int
    key: bytes
    kind: Kind
    value: bytes | None = None  # put, cas_put, create
    expected_etag: str | None = None  # cas_put, cas_delete


@dataclass(frozen=True, slots=True)
class Record:
    """One request and what came back: ``status`` None means no HTTP answer."""

    call: Call
    invoke_ns: int
    return_ns: int
    status: int | None
    etag: str | None  # the ETag header, unquoted
    body: bytes
    error: str  # the exception's name when there was no answer
    sent: bool

    @property
    def elapsed_s(self) -> float:
        return (self.return_ns - self.invoke_ns) / 1e9


def request_of(call: Call) -> tuple[str, str, bytes | None, dict[str, str]]:
    """(method, path, body, headers) for ``call``."""
    path = "/v1/kv/" + quote(call.key, safe="")
    strong = path + "?consistency=strong"
    match call.kind:
        case Kind.GET:
            return "GET", strong, None, {}
        case Kind.PUT:
            return "PUT", strong, call.value, {}
        case Kind.DELETE:
            return "DELETE", strong, None, {}
        case Kind.CAS_PUT:
            return "PUT", path, call.value, {"If-Match": f'"{call.expected_etag}"'}
        case Kind.CAS_DELETE:
            return "DELETE", path, None, {"If-Match": f'"{call.expected_etag}"'}
        case Kind.CREATE:
            return "PUT", path, call.value, {"If-None-Match": "*"}


def anomaly(record: Record) -> str | None:
    """Why this answer should never happen, or None."""
    call, status = record.call, record.status
    if status is None or status >= 500:
        return None
    if call.kind is Kind.GET:
        return None if status in (200, 404) else f"GET answered {status}"
    if status == 204:
        if call.kind in (Kind.PUT, Kind.CAS_PUT, Kind.CREATE) and record.etag is None:
            return "a written value came back without its ETag"
        return None
    if status == 412 and call.kind in (Kind.CAS_PUT, Kind.CAS_DELETE, Kind.CREATE):
        return None
    return f"{call.kind.value} answered {status}: {record.body[:200]!r}"


def to_operation(record: Record) -> Operation | None:
    """The history operation for one request (the module's table); None: dropped."""
    call, status = record.call, record.status
    if not record.sent or anomaly(record) is not None:
        return None
    if call.kind is Kind.GET:
        if status == 200:
            value: bytes | None = record.body
        elif status == 404:
            value = None
        else:
            return None  # a failed read says nothing
        return Operation(
            call.client, call.key, Kind.GET, record.invoke_ns, record.return_ns,
            value=value, etag=record.etag if value is not None else None,
        )  # fmt: skip
    if status == 503:
        return None  # definitely not applied
    if status is None or status >= 500:
        return Operation(
            call.client, call.key, call.kind, record.invoke_ns, None, Status.UNKNOWN,
            value=call.value, expected_etag=call.expected_etag,
        )  # fmt: skip
    if status == 412:
        return Operation(
            call.client, call.key, call.kind, record.invoke_ns, record.return_ns,
            Status.PRECONDITION_FAILED, expected_etag=call.expected_etag,
            etag=record.etag if record.etag is not None else ABSENT_ETAG,
        )  # fmt: skip
    return Operation(
        call.client, call.key, call.kind, record.invoke_ns, record.return_ns,
        value=call.value, expected_etag=call.expected_etag, etag=record.etag,
    )  # fmt: skip


def send(cluster: FaultCluster, call: Call) -> Record:
    """Send one call and record it; never raises for a network error."""
    method, path, body, headers = request_of(call)
    invoke_ns = time.monotonic_ns()
    status, etag, reply, error, sent = None, None, b"", "", True
    try:
        response = cluster.request(call.node, method, path, body, HTTP_TIMEOUT_S, headers)
    except NotSent as exc:
        sent, error = False, str(exc)
    except (OSError, http.client.HTTPException) as exc:
        error = type(exc).__name__
    else:
        status, reply = response.status, response.body
        header = response.headers.get("etag")
        etag = header[1:-1] if header is not None and len(header) >= 2 else None
    return Record(call, invoke_ns, time.monotonic_ns(), status, etag, reply, error, sent)


class StrongLoad:
    """Client threads, one per entry of ``nodes`` (the node it talks to), on
    ``keys``, until stopped or ``ops_max`` requests in all."""

    def __init__(
        self,
        cluster: FaultCluster,
        nodes: Sequence[int],
        keys: Sequence[bytes],
        *,
        seed: int,
        pace_s: float = 0.01,
        ops_max: int = OPS_MAX_DEFAULT,
    ) -> None:
        assert nodes and keys and ops_max >= len(nodes)
        self._cluster = cluster
        self._keys = tuple(keys)
        self._seed = seed
        self._pace_s = pace_s
        self._per_thread_max = ops_max // len(nodes)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._records: list[Record] = []
        self._threads = [
            threading.Thread(
                target=self._run, args=(f"c{t + 1}@n{node + 1}", node), name=f"strong-{t}"
            )
            for t, node in enumerate(nodes)
        ]
        self.failures: list[str] = []  # a client thread that died: its exception

    def __enter__(self) -> StrongLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        deadline = time.monotonic() + HTTP_TIMEOUT_S + 5
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "a client thread did not stop"
        assert not self.failures, self.failures

    def _run(self, client: str, node: int) -> None:
        try:
            self._loop(client, node)
        except BaseException as exc:
            with self._lock:
                self.failures.append(f"{client}: {type(exc).__name__}: {exc}")
            raise

    def _loop(self, client: str, node: int) -> None:
        rng = random.Random(f"{self._seed}-{client}")
        seen: dict[bytes, str | None] = {}  # key -> the ETag last read (None: absent)
        kinds = [Kind(name) for name, _ in MIX]
        weights = [weight for _, weight in MIX]
        for sequence in range(self._per_thread_max):
            if self._stopping.is_set():
                return
            key = rng.choice(self._keys)
            kind = rng.choices(kinds, weights)[0]
            expected = seen.get(key)
            if kind in _CAS and expected is None:
                kind = Kind.GET  # read first: the next one may use its ETag
            call = Call(
                client, node, key, kind,
                value=f"{client}-{sequence}".encode() if kind in _VALUED else None,
                expected_etag=expected if kind in _CAS else None,
            )  # fmt: skip
            record = send(self._cluster, call)
            if record.status == 200 or (record.status == 204 and kind in _VALUED):
                seen[key] = record.etag
            elif record.status == 412:
                seen[key] = record.etag  # the current one (None: absent): retry on it
            elif record.status in (204, 404):
                seen.pop(key, None)  # deleted, or absent
            with self._lock:
                self._records.append(record)
            self._stopping.wait(self._pace_s)  # pacing, interruptible by stop()

    def records(self) -> list[Record]:
        with self._lock:
            return list(self._records)

    def count(self, predicate: _Predicate) -> int:
        with self._lock:
            return sum(1 for record in self._records if predicate(record))

    def wait_count(
        self, predicate: _Predicate, more: int, what: str, timeout_s: float = DEADLINE_S
    ) -> float:
        """Wait until ``more`` further records satisfy ``predicate``; the seconds it took."""
        target = self.count(predicate) + more
        return wait_for(lambda: self.count(predicate) >= target, what, timeout_s)


class _Predicate:
    """A filter over records, built from keyword facts (all must hold)."""

    def __init__(
        self,
        *,
        node: int | None = None,
        statuses: frozenset[int] | None = None,
        since_ns: int = 0,
    ) -> None:
        self.node, self.statuses, self.since_ns = node, statuses, since_ns

    def __call__(self, record: Record) -> bool:
        return (
            (self.node is None or record.call.node == self.node)
            and (self.statuses is None or record.status in self.statuses)
            and record.invoke_ns >= self.since_ns
        )


def where(
    *, node: int | None = None, statuses: Sequence[int] = (), since_ns: int = 0
) -> _Predicate:
    """Records through ``node`` (None: any node) answered with one of ``statuses``
    (empty: whatever the answer, or none), invoked at or after ``since_ns``."""
    return _Predicate(node=node, statuses=frozenset(statuses) or None, since_ns=since_ns)


def tally(records: Sequence[Record]) -> dict[str, int]:
    """Requests by kind and answer (``none:<error>`` / ``unsent``), sorted."""
    counts: dict[str, int] = {}
    for record in records:
        if not record.sent:
            answer = "unsent"
        elif record.status is None:
            answer = f"none:{record.error}"
        else:
            answer = str(record.status)
        name = f"{record.call.kind.value}:{answer}"
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def history(records: Sequence[Record]) -> list[Operation]:
    """The checker's operations for ``records`` (dropping what says nothing)."""
    return [op for op in map(to_operation, records) if op is not None]


def final_reads(cluster: FaultCluster, nodes: Sequence[int], keys: Sequence[bytes]) -> list[Record]:
    """A strong GET of every key through each of ``nodes``, one after another."""
    return [
        send(cluster, Call(f"final@n{node + 1}", node, key, Kind.GET))
        for node in nodes
        for key in keys
    ]


def planted_stale_read(operations: Sequence[Operation], key: bytes) -> Operation | None:
    """A read of ``key``, after everything, of a value an acknowledged write wrote
    and a later definite read saw overwritten: a lost write, as the checker must
    see it. None if the history has no such pair."""
    reads = [op for op in operations if op.key == key and op.kind is Kind.GET]
    if not reads:
        return None
    last = max(reads, key=lambda op: op.invoke_ns)
    overwritten = [
        op
        for op in operations
        if op.key == key
        and op.kind in _VALUED
        and op.status is Status.OK
        and op.value != last.value
        and op.return_ns is not None
        and op.return_ns < last.invoke_ns
    ]
    if not overwritten:
        return None
    write = overwritten[-1]
    end_ns = max(op.return_ns or op.invoke_ns for op in operations) + 1
    return Operation(
        "planted", key, Kind.GET, end_ns, end_ns + 1, value=write.value, etag=write.etag
    )

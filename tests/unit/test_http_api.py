"""The HTTP API over real sockets on 127.0.0.1, against an in-memory fake backend.

The server runs in a background thread with its own event loop (asyncio's
and uvloop's, every test on both); the tests speak raw HTTP/1.1 through
blocking sockets so they can send exactly the bytes they mean, malformed
ones included.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynakv.api import GetResult, HttpServer
from dynakv.api.backend import WriteResult
from dynakv.api.wire import Dispatcher
from dynakv.config import Limits
from dynakv.core.consistency import Consistency
from dynakv.core.etag import Condition, condition_holds, etag_of
from dynakv.core.record import (
    EMPTY_CONTEXT,
    ConflictPolicy,
    Context,
    Record,
    context_of,
    decode_context,
    encode_context,
    make_write,
)
from dynakv.errors import (
    InvalidRequest,
    OutcomeUnknown,
    Overloaded,
    PreconditionFailed,
    QuorumNotReached,
)

# --- the fake backend ------------------------------------------------------------------------


@dataclass
class Call:
    op: str
    key: bytes
    consistency: Consistency | None = None
    ttl_s: int | None = None
    context: Context | None = None
    value: bytes | None = None
    condition: Condition | None = None


class FakeBackend:
    """An in-memory KvBackend on the real record/merge code, with injectable failures."""

    def __init__(self, policy: ConflictPolicy = ConflictPolicy.SIBLINGS) -> None:
        self.policy = policy
        self.records: dict[bytes, Record] = {}
        self.calls: list[Call] = []
        self.fail_with: BaseException | None = None  # raised by every data call while set
        self.delays_s: dict[bytes, float] = {}  # simulated latency per key (suspends)
        self.gate: asyncio.Event | None = None  # when set up, gets of b"gated" wait on it
        self.now_ms = 1_700_000_000_000
        self._timestamp = 0
        self.status_document: dict[str, Any] = {"node_id": "fake", "ring": {"partitions": 8}}

    def _enter(self, call: Call) -> None:
        self.calls.append(call)
        if self.fail_with is not None:
            raise self.fail_with

    async def _latency(self, key: bytes) -> None:
        if key in self.delays_s:
            await asyncio.sleep(self.delays_s[key])
        if key == b"gated" and self.gate is not None:
            await self.gate.wait()

    async def get(self, key: bytes, consistency: Consistency) -> GetResult:
        self._enter(Call("get", key, consistency))
        await self._latency(key)
        record = self.records.get(key)
        values = record.visible_values(self.now_ms) if record is not None else []
        return GetResult(values, context_of(record), etag_of(record, self.now_ms))

    async def put(
        self, key: bytes, value: bytes, consistency: Consistency, ttl_s: int, context: Context
    ) -> Context:
        self._enter(Call("put", key, consistency, ttl_s, context, value))
        await self._latency(key)
        expires_at_ms = self.now_ms + ttl_s * 1000 if ttl_s else 0
        return self._write(key, value, context, expires_at_ms)

    async def delete(self, key: bytes, consistency: Consistency, context: Context) -> Context:
        self._enter(Call("delete", key, consistency, None, context))
        return self._write(key, None, context, self.now_ms + 3_600_000)

    async def write_strong(
        self, key: bytes, value: bytes | None, *, condition: Condition | None, ttl_s: int
    ) -> WriteResult:
        """A linearizable write in one process: the condition judged on the current
        version, the write on top of all of it (as the Paxos path does)."""
        self._enter(Call("write_strong", key, Consistency.STRONG, ttl_s, None, value, condition))
        await self._latency(key)
        current = self.records.get(key)
        etag = etag_of(current, self.now_ms)
        if not condition_holds(condition, etag):
            raise PreconditionFailed(condition=repr(condition), current_etag=etag)
        if value is None:
            expires_at_ms = self.now_ms + 3_600_000
        else:
            expires_at_ms = self.now_ms + ttl_s * 1000 if ttl_s else 0
        context = self._write(key, value, context_of(current), expires_at_ms)
        return WriteResult(context, etag_of(self.records[key], self.now_ms))

    def _write(
        self, key: bytes, value: bytes | None, context: Context, expires_at_ms: int
    ) -> Context:
        local = self.records.get(key)
        floor = max(context.max_timestamp, local.max_timestamp() if local else 0)
        self._timestamp = max(self._timestamp, floor) + 1
        record = make_write(
            local,
            node_id="fake",
            value=value,
            context=context,
            timestamp=self._timestamp,
            expires_at_ms=expires_at_ms,
            policy=self.policy,
        )
        self.records[key] = record
        return context_of(record)

    def local_record(self, key: bytes) -> Record | None:
        self._enter(Call("local", key))
        return self.records.get(key)

    async def status(self) -> dict[str, Any]:
        self._enter(Call("status", b""))
        return self.status_document

    def health(self) -> dict[str, Any]:
        return {"ok": True}


# --- the server in a thread ------------------------------------------------------------------


class ServerThread:
    """An HttpServer on its own loop in a daemon thread; a context manager."""

    def __init__(
        self,
        backend: FakeBackend,
        limits: Limits | None = None,
        *,
        loop_kind: str = "asyncio",
        read_timeout_s: float = 30.0,
        idle_timeout_s: float = 300.0,
        routes: Callable[[FakeBackend, Limits], Dispatcher] | None = None,
    ) -> None:
        self.backend = backend
        self.limits = limits or Limits()
        self.routes = routes  # builds the server's dispatcher; None: the native API alone
        self.loop_kind = loop_kind
        self.read_timeout_s = read_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: HttpServer | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.bound_port

    def _run(self) -> None:
        loop = uvloop.new_event_loop() if self.loop_kind == "uvloop" else asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced to the test in __exit__
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self.backend.gate = asyncio.Event()
        self.server = HttpServer(
            self.backend if self.routes is None else self.routes(self.backend, self.limits),
            self.limits,
            "127.0.0.1",
            0,
            read_timeout_s=self.read_timeout_s,
            idle_timeout_s=self.idle_timeout_s,
            linger_s=1.0,
        )
        await self.server.start()
        self._ready.set()
        await self._stop.wait()
        await self.server.close()

    def call_soon(self, callback: Callable[[], object]) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(callback)

    def open_gate(self) -> None:
        gate = self.backend.gate
        assert gate is not None
        self.call_soon(gate.set)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(10), "server did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._stop is not None and self.loop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "server did not stop"
        if self._error is not None:
            raise self._error


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``condition`` until true or fail at the deadline (never a bare sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.005)


# --- raw HTTP over a blocking socket ---------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", self.headers
        return json.loads(self.body)

    def error(self) -> dict[str, Any]:
        document = self.json()
        error: dict[str, Any] = document["error"]
        return error


class Raw:
    """One client connection speaking raw bytes."""

    def __init__(self, port: int, timeout_s: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def half_close(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def reply(self) -> Reply:
        status_line = self.reader.readline()
        assert status_line, "connection closed instead of answering"
        version, status, _ = status_line.decode("latin-1").split(" ", 2)
        assert version == "HTTP/1.1"
        reply = Reply(int(status))
        while True:
            line = self.reader.readline().decode("latin-1")
            assert line.endswith("\r\n"), f"truncated header line {line!r}"
            if line == "\r\n":
                break
            name, _, value = line.partition(":")
            reply.headers[name.strip().lower()] = value.strip()
        if reply.status == 204:
            assert "content-length" not in reply.headers
            return reply
        reply.body = self.reader.read(int(reply.headers["content-length"]))
        return reply

    def closed_by_server(self) -> bool:
        """True when the server closed (EOF or reset) with no further bytes."""
        try:
            return self.reader.read(1) == b""
        except ConnectionResetError:
            return True

    def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Reply:
        self.send(encode(method, target, body, headers))
        return self.reply()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def encode(
    method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: test"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("PUT", "POST"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def kv(key: bytes | str, query: str = "") -> str:
    raw = key.encode() if isinstance(key, str) else key
    return "/v1/kv/" + quote(raw, safe="") + (f"?{query}" if query else "")


# --- fixtures --------------------------------------------------------------------------------

SMALL = Limits(
    key_bytes_max=2048,
    value_bytes_max=1000,
    http_body_bytes_max=4000,
    http_header_bytes_max=4096,
    ttl_s_max=86400,
)


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def server(backend: FakeBackend, loop_kind: str) -> Iterator[ServerThread]:
    with ServerThread(backend, SMALL, loop_kind=loop_kind, read_timeout_s=0.5) as running:
        yield running


@pytest.fixture
def conn(server: ServerThread) -> Iterator[Raw]:
    with Raw(server.port) as raw:
        yield raw


def data_calls(backend: FakeBackend) -> list[str]:
    return [call.op for call in backend.calls if call.op in ("get", "put", "delete")]


# --- the kv routes ---------------------------------------------------------------------------


def test_put_get_delete_round_trip(conn: Raw, backend: FakeBackend) -> None:
    put = conn.request("PUT", kv("k"), b"v1")
    assert put.status == 204
    put_context = decode_context(put.headers["x-dynakv-context"])
    assert put_context.clock == (("fake", 1),)

    got = conn.request("GET", kv("k"))
    assert got.status == 200
    assert got.body == b"v1"
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-length"] == "2"
    assert decode_context(got.headers["x-dynakv-context"]) == put_context

    deleted = conn.request(
        "DELETE", kv("k"), headers={"X-Dynakv-Context": encode_context(put_context)}
    )
    assert deleted.status == 204
    assert backend.calls[-1].context == put_context
    assert "x-dynakv-context" in deleted.headers

    gone = conn.request("GET", kv("k"))
    assert gone.status == 404
    assert gone.error()["code"] == "KeyNotFound"
    # the tombstone's context, so a client can overwrite it causally
    assert decode_context(gone.headers["x-dynakv-context"]).clock == (("fake", 2),)


def test_get_absent_key_is_404_with_empty_context(conn: Raw) -> None:
    reply = conn.request("GET", kv("never"))
    assert reply.status == 404
    assert reply.error() == {"code": "KeyNotFound", "message": "no value is stored under this key"}
    assert decode_context(reply.headers["x-dynakv-context"]) == EMPTY_CONTEXT


def test_siblings_are_300_and_a_write_with_their_context_resolves_them(
    conn: Raw, backend: FakeBackend
) -> None:
    assert conn.request("PUT", kv("s"), b"left").status == 204
    assert conn.request("PUT", kv("s"), b"right").status == 204  # blind: concurrent
    reply = conn.request("GET", kv("s"))
    assert reply.status == 300
    document = reply.json()
    assert [base64.b64decode(v) for v in document["siblings"]] == [b"left", b"right"]
    assert document["context"] == reply.headers["x-dynakv-context"]

    merged = conn.request("PUT", kv("s"), b"both", {"X-Dynakv-Context": document["context"]})
    assert merged.status == 204
    final = conn.request("GET", kv("s"))
    assert (final.status, final.body) == (200, b"both")


def test_consistency_and_ttl_reach_the_backend(conn: Raw, backend: FakeBackend) -> None:
    assert conn.request("PUT", kv("t", "consistency=all&ttl=60"), b"x").status == 204
    assert conn.request("PUT", kv("t"), b"y").status == 204
    assert conn.request("GET", kv("t", "consistency=one")).status == 300  # two blind puts
    assert conn.request("DELETE", kv("t", "consistency=quorum")).status == 204
    puts = [c for c in backend.calls if c.op == "put"]
    assert (puts[0].consistency, puts[0].ttl_s) == (Consistency.ALL, 60)
    assert (puts[1].consistency, puts[1].ttl_s) == (Consistency.QUORUM, 0)
    assert puts[1].context == EMPTY_CONTEXT
    assert backend.calls[2].consistency is Consistency.ONE
    assert backend.calls[3].consistency is Consistency.QUORUM


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_bad_consistency_is_400_naming_the_field(
    conn: Raw, backend: FakeBackend, method: str
) -> None:
    reply = conn.request(method, kv("k", "consistency=strongest"), b"v" if method == "PUT" else b"")
    assert reply.status == 400
    error = reply.error()
    assert (error["code"], error["field"]) == ("InvalidRequest", "consistency")
    assert "strongest" in error["message"]
    assert backend.calls == []


@pytest.mark.parametrize("ttl", ["0", "-1", "abc", "1.5", "", "86401", "9" * 40, "%201"])
def test_bad_ttl_is_400_naming_the_field(conn: Raw, backend: FakeBackend, ttl: str) -> None:
    reply = conn.request("PUT", kv("k", f"ttl={ttl}"), b"v")
    assert reply.status == 400
    assert reply.error()["field"] == "ttl"
    assert backend.calls == []


def test_ttl_at_the_limit_is_accepted(conn: Raw, backend: FakeBackend) -> None:
    assert conn.request("PUT", kv("k", "ttl=86400"), b"v").status == 204
    assert backend.calls[0].ttl_s == 86400


@pytest.mark.parametrize("query", ["consistancy=all", "ttl=5", "consistency=one&consistency=all"])
def test_unknown_or_repeated_query_parameters_are_400(
    conn: Raw, backend: FakeBackend, query: str
) -> None:
    reply = conn.request("GET", kv("k", query))
    assert reply.status == 400
    assert reply.error()["code"] == "InvalidRequest"
    assert backend.calls == []


@pytest.mark.parametrize("token", ["!!!", "AAAA", encode_context(EMPTY_CONTEXT)[:-1]])
def test_bad_context_header_is_400_naming_it(conn: Raw, backend: FakeBackend, token: str) -> None:
    for method in ("PUT", "DELETE"):
        reply = conn.request(
            method, kv("k"), b"v" if method == "PUT" else b"", {"X-Dynakv-Context": token}
        )
        assert reply.status == 400
        assert reply.error()["field"] == "X-Dynakv-Context"
    assert backend.calls == []


def test_oversize_context_header_is_400_naming_it(backend: FakeBackend, loop_kind: str) -> None:
    with ServerThread(backend, loop_kind=loop_kind) as running, Raw(running.port) as raw:
        reply = raw.request("PUT", kv("k"), b"v", {"X-Dynakv-Context": "x" * 8193})
        assert reply.status == 400
        error = reply.error()
        assert (error["field"], error["max"]) == ("X-Dynakv-Context", 8192)
    assert backend.calls == []


def test_repeated_context_header_is_rejected(conn: Raw, backend: FakeBackend) -> None:
    token = encode_context(Context(clock=(("a", 1),), max_timestamp=5))
    head = (
        f"PUT {kv('k')} HTTP/1.1\r\nHost: t\r\n"
        f"X-Dynakv-Context: {token}\r\nX-Dynakv-Context: {token}\r\n"
    )
    conn.send(head.encode() + b"Content-Length: 1\r\n\r\nv")
    assert conn.reply().status == 400
    assert backend.calls == []


@pytest.mark.parametrize(
    "key",
    [b"\x00", b"\xff", b"a/b", b"with space", b"%41", b"?#&=+", bytes(range(256)), b"k" * 2048],
    ids=["nul", "ff", "slash", "space", "percent", "reserved", "all-bytes", "at-limit"],
)
def test_any_bytes_are_a_key(conn: Raw, backend: FakeBackend, key: bytes) -> None:
    assert conn.request("PUT", kv(key), b"value").status == 204
    assert backend.calls[-1].key == key
    reply = conn.request("GET", kv(key))
    assert (reply.status, reply.body) == (200, b"value")
    assert backend.calls[-1].key == key


def test_unencoded_safe_characters_in_a_key_are_taken_literally(
    conn: Raw, backend: FakeBackend
) -> None:
    assert conn.request("PUT", "/v1/kv/plain-key_1.2~", b"v").status == 204
    assert backend.calls[-1].key == b"plain-key_1.2~"


def test_key_over_the_limit_is_413_and_empty_key_is_400(conn: Raw, backend: FakeBackend) -> None:
    reply = conn.request("PUT", kv(b"k" * 2049), b"v")
    assert reply.status == 413
    error = reply.error()
    assert (error["code"], error["size"], error["max"]) == ("KeyTooLarge", 2049, 2048)
    assert error["limit"] == "key_bytes_max"
    empty = conn.request("GET", "/v1/kv/")
    assert empty.status == 400
    assert empty.error()["field"] == "key"
    assert backend.calls == []


@pytest.mark.parametrize(
    "target", ["/v1/kv/a/b", "/v1/kv", "/", "/v2/kv/a", "/v1/admin/local/a/b", "/v1/statusx", "*"]
)
def test_unknown_routes_are_404(conn: Raw, target: str) -> None:
    reply = conn.request("GET", target)
    assert reply.status == 404
    assert reply.error()["code"] == "NotFound"


@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [
        ("POST", "/v1/kv/a", "DELETE, GET, PUT"),
        ("PATCH", "/v1/kv/a", "DELETE, GET, PUT"),
        ("PUT", "/v1/status", "GET"),
        ("DELETE", "/health", "GET"),
        ("POST", "/v1/admin/local/a", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(conn: Raw, method: str, target: str, allow: str) -> None:
    reply = conn.request(method, target)
    assert reply.status == 405
    assert reply.headers["allow"] == allow
    assert reply.error()["code"] == "MethodNotAllowed"


def test_absolute_form_target_is_accepted(conn: Raw) -> None:
    assert conn.request("PUT", "http://test:1" + kv("abs"), b"v").status == 204
    assert conn.request("GET", "http://test:1" + kv("abs")).body == b"v"


# --- limits ----------------------------------------------------------------------------------


def test_value_at_the_limit_is_stored_one_more_byte_is_413(conn: Raw, backend: FakeBackend) -> None:
    assert conn.request("PUT", kv("big"), b"x" * 1000).status == 204
    reply = conn.request("PUT", kv("big"), b"y" * 1001)
    assert reply.status == 413
    error = reply.error()
    assert (error["code"], error["limit"], error["size"], error["max"]) == (
        "ValueTooLarge",
        "value_bytes_max",
        1001,
        1000,
    )
    assert "value_bytes_max" in error["message"]
    assert len(data_calls(backend)) == 1  # the oversize value never reached the backend
    # the connection stays usable
    assert conn.request("GET", kv("big")).body == b"x" * 1000


def test_content_length_over_the_body_limit_is_rejected_before_the_body(
    conn: Raw, backend: FakeBackend
) -> None:
    conn.send(f"PUT {kv('big')} HTTP/1.1\r\nHost: t\r\nContent-Length: 4001\r\n\r\n".encode())
    reply = conn.reply()  # answered without sending a single body byte
    assert reply.status == 413
    assert reply.error()["code"] == "ValueTooLarge"
    assert reply.headers["connection"] == "close"
    assert conn.closed_by_server()
    assert backend.calls == []


def test_expect_continue_gets_100_or_an_early_413(server: ServerThread) -> None:
    with Raw(server.port) as raw:
        raw.send(
            f"PUT {kv('e')} HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            "Content-Length: 2\r\n\r\n".encode()
        )
        assert raw.reader.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert raw.reader.readline() == b"\r\n"
        raw.send(b"ok")
        assert raw.reply().status == 204
    with Raw(server.port) as raw:
        raw.send(
            b"POST /v1/status HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Content-Length: 9999\r\n\r\n"
        )
        reply = raw.reply()
        assert (reply.status, reply.error()["code"]) == (413, "BodyTooLarge")
        assert reply.error()["limit"] == "http_body_bytes_max"


def test_chunked_bodies_are_accepted_and_bounded(conn: Raw, server: ServerThread) -> None:
    conn.send(
        f"PUT {kv('c')} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert conn.reply().status == 204
    assert conn.request("GET", kv("c")).body == b"abcde"
    with Raw(server.port) as raw:
        chunk = b"x" * 1500
        raw.send(
            f"PUT {kv('c')} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + (b"5dc\r\n" + chunk + b"\r\n") * 3
        )
        reply = raw.reply()
        assert reply.status == 413
        assert raw.closed_by_server()


def test_headers_over_the_limit_are_431(server: ServerThread, backend: FakeBackend) -> None:
    with Raw(server.port) as raw:
        raw.send(b"GET /health HTTP/1.1\r\nX-Filler: " + b"f" * 5000 + b"\r\n\r\n")
        reply = raw.reply()
        assert reply.status == 431
        assert reply.error()["limit"] == "http_header_bytes_max"
        assert raw.closed_by_server()
    with Raw(server.port) as raw:  # an endless header that never ends its line
        raw.send(b"GET /health HTTP/1.1\r\nX-Filler: " + b"f" * 9000)
        assert raw.reply().status == 431
    with Raw(server.port) as raw:
        assert raw.request("GET", "/health").status == 200


def test_connections_over_the_limit_get_503_when_none_is_idle(
    backend: FakeBackend, loop_kind: str
) -> None:
    limits = Limits(http_connections_max=2)
    with (
        ServerThread(backend, limits, loop_kind=loop_kind) as running,
        Raw(running.port) as first,
        Raw(running.port) as second,
    ):
        for raw in (first, second):  # both busy: their requests wait on the gate
            raw.send(encode("GET", kv("gated")))
        wait_until(lambda: len(backend.calls) == 2)
        with Raw(running.port) as third:
            reply = third.reply()
            assert reply.status == 503
            assert reply.error()["code"] == "Overloaded"
            assert reply.error()["resource"] == "http_connections"
            assert reply.headers["retry-after"] == "1"
            assert third.closed_by_server()
        running.open_gate()
        assert first.reply().status == 404
        assert second.reply().status == 404
        second.close()
        wait_until(lambda: running.server is not None and len(running.server.connections) < 2)
        with Raw(running.port) as fourth:
            assert fourth.request("GET", "/health").status == 200


# --- bad and partial input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /health HTTP/9.9\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03",
        b"GET /health HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET /health HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ],
)
def test_malformed_requests_get_400_then_close(
    server: ServerThread, backend: FakeBackend, garbage: bytes
) -> None:
    with Raw(server.port) as raw:
        raw.send(garbage)
        reply = raw.reply()
        assert reply.status == 400
        assert reply.error()["code"] == "RemoteProtocolError"
        assert reply.headers["connection"] == "close"
        assert raw.closed_by_server()
    with Raw(server.port) as raw:
        assert raw.request("GET", "/health").status == 200
    assert backend.calls == []


def test_answers_queued_before_a_malformed_request_still_go_out(conn: Raw) -> None:
    conn.send(encode("PUT", kv("a"), b"1") + encode("GET", kv("a")) + b"BOGUS\r\n\r\n")
    assert conn.reply().status == 204
    assert conn.reply().body == b"1"
    assert conn.reply().status == 400
    assert conn.closed_by_server()


def test_truncated_body_then_half_close_is_400_and_nothing_stored(
    server: ServerThread, backend: FakeBackend
) -> None:
    with Raw(server.port) as raw:
        raw.send(
            f"PUT {kv('t')} HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n".encode() + b"x" * 10
        )
        raw.half_close()
        reply = raw.reply()
        assert reply.status == 400
        assert "truncated body" in reply.error()["message"]
        assert "10 of 100" in reply.error()["message"]
        assert raw.closed_by_server()
    with Raw(server.port) as raw:
        assert raw.request("GET", kv("t")).status == 404
    assert data_calls(backend) == ["get"]
    assert backend.records == {}


def test_truncated_body_on_an_open_socket_is_400_after_the_read_timeout(
    server: ServerThread, backend: FakeBackend
) -> None:
    with Raw(server.port) as raw:
        started = time.monotonic()
        raw.send(
            f"PUT {kv('t')} HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n".encode() + b"x" * 10
        )
        reply = raw.reply()  # the client keeps the socket open; the server gives up
        assert time.monotonic() - started >= 0.5
        assert reply.status == 400
        assert "truncated body" in reply.error()["message"]
        assert raw.closed_by_server()
    assert backend.calls == []


def test_a_head_that_never_ends_is_408(server: ServerThread) -> None:
    with Raw(server.port) as raw:
        raw.send(b"GET /health HTTP/1.1\r\nHost: slow")
        reply = raw.reply()
        assert reply.status == 408
        assert reply.error()["code"] == "RequestTimeout"
        assert raw.closed_by_server()


def test_idle_keep_alive_connections_are_closed(backend: FakeBackend, loop_kind: str) -> None:
    with (
        ServerThread(backend, loop_kind=loop_kind, idle_timeout_s=0.2) as running,
        Raw(running.port) as raw,
    ):
        assert raw.request("GET", "/health").status == 200
        assert raw.closed_by_server()


def test_half_close_after_complete_requests_gets_every_answer(conn: Raw) -> None:
    conn.send(encode("PUT", kv("h"), b"1") + encode("GET", kv("h")))
    conn.half_close()
    assert conn.reply().status == 204
    assert conn.reply().body == b"1"
    assert conn.closed_by_server()


def test_upgrade_requests_are_answered_as_plain_http_then_closed(conn: Raw) -> None:
    conn.send(
        b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    reply = conn.reply()
    assert reply.status == 200
    assert reply.headers["connection"] == "close"
    assert conn.closed_by_server()


# --- connection behaviour --------------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(conn: Raw, server: ServerThread) -> None:
    for index in range(50):
        assert conn.request("PUT", kv(f"k{index}"), b"v").status == 204
        assert "connection" not in conn.request("GET", kv(f"k{index}")).headers
    assert server.server is not None
    assert len(server.server.connections) == 1


def test_pipelined_requests_are_answered_in_order(conn: Raw, backend: FakeBackend) -> None:
    keys = [f"p{index}".encode() for index in range(12)]
    for index, key in enumerate(keys):
        backend.records[key] = make_write(
            None,
            node_id="fake",
            value=key,
            context=EMPTY_CONTEXT,
            timestamp=1,
            expires_at_ms=0,
            policy=backend.policy,
        )
        if index % 3 == 0:  # some requests suspend, later ones would be ready first
            backend.delays_s[key] = 0.02 * (12 - index) / 12
    conn.send(b"".join(encode("GET", kv(key)) for key in keys))
    bodies = [conn.reply().body for _ in keys]
    assert bodies == keys


def test_pipeline_past_its_bound_sheds_with_503_in_order(
    backend: FakeBackend, loop_kind: str
) -> None:
    limits = Limits(http_pipeline_max=4)
    with ServerThread(backend, limits, loop_kind=loop_kind) as running, Raw(running.port) as raw:
        backend.records[b"gated"] = make_write(
            None,
            node_id="fake",
            value=b"g",
            context=EMPTY_CONTEXT,
            timestamp=1,
            expires_at_ms=0,
            policy=backend.policy,
        )
        raw.send(encode("GET", kv("gated")) + encode("GET", "/health") * 9)
        wait_until(lambda: bool(backend.calls))  # the first request is waiting on the gate
        running.open_gate()
        replies = [raw.reply() for _ in range(10)]
        assert replies[0].body == b"g"
        statuses = [reply.status for reply in replies]
        assert set(statuses) <= {200, 503}
        assert statuses[:4] == [200] * 4
        for reply in replies:
            if reply.status == 503:
                assert reply.error()["resource"] == "http_pipeline"
        assert raw.request("GET", "/health").status == 200


def _big_value_server(backend: FakeBackend, loop_kind: str, **options: Any) -> ServerThread:
    backend.records[b"big"] = make_write(
        None,
        node_id="fake",
        value=bytes(range(256)) * 1600,  # 400 KiB
        context=EMPTY_CONTEXT,
        timestamp=1,
        expires_at_ms=0,
        policy=backend.policy,
    )
    return ServerThread(backend, loop_kind=loop_kind, **options)


def test_a_slow_reader_pauses_the_answers_without_losing_any(
    backend: FakeBackend, loop_kind: str
) -> None:
    # 64 x 400 KiB is far more than the socket buffers: the server must wait for us.
    with _big_value_server(backend, loop_kind) as running, Raw(running.port) as raw:
        raw.send(
            b"".join(
                encode("GET", kv("big", f"consistency={level}"))
                for level in ["one", "quorum", "all", "one"] * 16
            )
        )
        for _ in range(64):
            reply = raw.reply()
            assert (reply.status, len(reply.body)) == (200, 409600)
        assert raw.request("GET", "/health").status == 200


def test_a_client_that_stops_reading_is_dropped(backend: FakeBackend, loop_kind: str) -> None:
    with (
        _big_value_server(backend, loop_kind, idle_timeout_s=0.3) as running,
        Raw(running.port) as raw,
    ):
        raw.send(encode("GET", kv("big")) * 64)
        wait_until(lambda: len(backend.calls) > 1)
        wait_until(lambda: running.server is not None and not running.server.connections)


def test_connection_close_is_honoured(conn: Raw) -> None:
    conn.send(encode("GET", "/health", headers={"Connection": "close"}) + encode("GET", "/health"))
    reply = conn.reply()
    assert (reply.status, reply.headers["connection"]) == (200, "close")
    assert conn.closed_by_server()


def test_http10_closes_unless_keep_alive_is_asked(server: ServerThread) -> None:
    with Raw(server.port) as raw:
        raw.send(b"GET /health HTTP/1.0\r\n\r\n")
        assert raw.reply().headers["connection"] == "close"
        assert raw.closed_by_server()
    with Raw(server.port) as raw:
        raw.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert raw.reply().headers["connection"] == "keep-alive"
        raw.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert raw.reply().status == 200


def test_server_close_closes_open_connections(backend: FakeBackend, loop_kind: str) -> None:
    running = ServerThread(backend, loop_kind=loop_kind)
    with running, Raw(running.port) as raw:
        assert raw.request("GET", "/health").status == 200
        backend.records[b"gated"] = make_write(
            None,
            node_id="fake",
            value=b"g",
            context=EMPTY_CONTEXT,
            timestamp=1,
            expires_at_ms=0,
            policy=backend.policy,
        )
        raw.send(encode("GET", kv("gated")))  # in flight when the server closes
        wait_until(lambda: len(backend.calls) == 1)
        running.__exit__(None, None, None)
        assert raw.closed_by_server()


# --- backend errors --------------------------------------------------------------------------


def test_quorum_not_reached_is_503_with_facts_and_retry_after(
    conn: Raw, backend: FakeBackend
) -> None:
    backend.fail_with = QuorumNotReached(required=2, acked=1, consistency="quorum")
    reply = conn.request("PUT", kv("q"), b"v")
    assert reply.status == 503
    assert reply.headers["retry-after"] == "1"
    error = reply.error()
    assert (error["code"], error["required"], error["acked"], error["consistency"]) == (
        "QuorumNotReached",
        2,
        1,
        "quorum",
    )
    backend.fail_with = Overloaded(resource="coordinator", limit=10)
    reply = conn.request("GET", kv("q"))
    assert (reply.status, reply.error()["code"], reply.headers["retry-after"]) == (
        503,
        "Overloaded",
        "1",
    )


def test_outcome_unknown_is_504(conn: Raw, backend: FakeBackend) -> None:
    backend.fail_with = OutcomeUnknown(required=2, acked=1, consistency="all", timeout_ms=2000)
    reply = conn.request("DELETE", kv("q"))
    assert reply.status == 504
    error = reply.error()
    assert (error["code"], error["acked"], error["timeout_ms"]) == ("OutcomeUnknown", 1, 2000)
    assert "retry-after" not in reply.headers


def test_invalid_request_from_the_backend_is_400(conn: Raw, backend: FakeBackend) -> None:
    backend.fail_with = InvalidRequest("no such thing", field="thing")
    reply = conn.request("GET", kv("q"))
    assert (reply.status, reply.error()["field"]) == (400, "thing")


def test_unexpected_exceptions_are_500_logged_and_the_connection_keeps_serving(
    conn: Raw, backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend.fail_with = ZeroDivisionError("boom")
    with caplog.at_level(logging.ERROR, logger="dynakv.api.wire"):
        reply = conn.request("GET", kv("q"))
        wait_until(lambda: any(r.exc_info for r in caplog.records))
    assert reply.status == 500
    assert reply.error()["code"] == "InternalError"
    assert "boom" not in reply.body.decode()  # no internals on the wire
    backend.fail_with = None
    assert conn.request("GET", "/health").status == 200
    assert conn.request("GET", kv("q")).status == 404


# --- admin and status ------------------------------------------------------------------------


def test_admin_local_record(conn: Raw, backend: FakeBackend) -> None:
    absent = conn.request("GET", "/v1/admin/local/" + quote(b"\x00k", safe=""))
    assert absent.json() == {"key": base64.b64encode(b"\x00k").decode(), "record": None}

    assert conn.request("PUT", kv(b"\x00k", "ttl=10"), b"val").status == 204
    record = conn.request("GET", "/v1/admin/local/%00k").json()["record"]
    [sibling] = record["siblings"]
    assert sibling == {
        "value": base64.b64encode(b"val").decode(),
        "tombstone": False,
        "dot": {"node": "fake", "counter": 1},
        "past": {},
        "timestamp": 1,
        "expires_at_ms": backend.now_ms + 10_000,
    }
    assert decode_context(record["context"]).clock == (("fake", 1),)

    assert (
        conn.request("DELETE", kv(b"\x00k"), headers={"X-Dynakv-Context": record["context"]}).status
        == 204
    )
    [tombstone] = conn.request("GET", "/v1/admin/local/%00k").json()["record"]["siblings"]
    assert (tombstone["value"], tombstone["tombstone"], tombstone["past"]) == (
        None,
        True,
        {"fake": 1},
    )


def test_status_and_health(conn: Raw, backend: FakeBackend) -> None:
    status = conn.request("GET", "/v1/status")
    assert (status.status, status.json()) == (200, backend.status_document)
    health = conn.request("GET", "/health")
    assert (health.status, health.json()) == (200, {"ok": True})


# --- fuzz ------------------------------------------------------------------------------------

_VALID = [
    encode("GET", kv("k")),
    encode("PUT", kv("k", "ttl=5"), b"value"),
    encode("DELETE", kv("k")),
    encode("GET", "/v1/status"),
    b"GET /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_VALID)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        else:
            del data[position:]
    return bytes(data)


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerThread]:
    with ServerThread(FakeBackend(), SMALL, loop_kind="uvloop", read_timeout_s=0.5) as running:
        yield running


def _read_all(raw: Raw) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := raw.sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.one_of(st.binary(max_size=300), _mutated()))
def test_fuzzed_requests_never_break_the_server(fuzz_server: ServerThread, data: bytes) -> None:
    with Raw(fuzz_server.port) as raw:
        raw.send(data)
        raw.half_close()
        answer = _read_all(raw)  # the server always ends the connection after EOF
    for status_line in answer.split(b"\r\n"):
        if status_line.startswith(b"HTTP/1.1 "):
            assert int(status_line[9:12]) < 500, answer[:300]
    assert not answer or answer.startswith(b"HTTP/1.1 ")
    with Raw(fuzz_server.port) as raw:
        assert raw.request("GET", "/health").status == 200

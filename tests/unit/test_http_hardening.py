"""The HTTP server under hostile clients (issue 5): caps, silent sockets, descriptors, bad heads.

Real sockets on 127.0.0.1 against the fake backend of ``test_http_api``, on
asyncio's loop and uvloop's. The open-file tests run the server in a child
process whose ``RLIMIT_NOFILE`` is lowered, so the test process keeps its own.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynakv.api.routes import percent_decode
from dynakv.config import Limits
from dynakv.errors import InvalidRequest
from dynakv.node.resources import fit_connection_caps
from tests.unit.test_http_api import (
    SMALL,
    FakeBackend,
    Raw,
    Reply,
    ServerThread,
    data_calls,
    encode,
    kv,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def server(backend: FakeBackend, loop_kind: str) -> Iterator[ServerThread]:
    with ServerThread(backend, SMALL, loop_kind=loop_kind, read_timeout_s=2.0) as running:
        yield running


@pytest.fixture
def conn(server: ServerThread) -> Iterator[Raw]:
    with Raw(server.port) as raw:
        yield raw


def connection_count(running: ServerThread) -> int:
    assert running.server is not None
    return len(running.server.connections)


def idle_count(running: ServerThread) -> int:
    assert running.server is not None
    return len(running.server.idle)


# --- the connection cap ----------------------------------------------------------------------


def test_at_the_cap_the_connection_idle_longest_is_closed_to_admit_a_new_one(
    backend: FakeBackend, loop_kind: str
) -> None:
    with ServerThread(backend, Limits(http_connections_max=3), loop_kind=loop_kind) as running:
        first, second, third = (Raw(running.port) for _ in range(3))
        for raw in (first, second, third, first):  # idle longest: second, then third, then first
            assert raw.request("GET", "/health").status == 200
        with Raw(running.port) as fourth:
            assert fourth.request("GET", "/health").status == 200
            assert second.closed_by_server()
            assert connection_count(running) == 3
            assert first.request("GET", "/health").status == 200
            assert third.request("GET", "/health").status == 200
        for raw in (first, second, third):
            raw.close()


def test_many_idle_keep_alive_connections_never_lock_a_new_client_out(
    backend: FakeBackend, loop_kind: str
) -> None:
    cap = 24
    with ServerThread(backend, Limits(http_connections_max=cap), loop_kind=loop_kind) as running:
        old = [Raw(running.port) for _ in range(cap)]
        for raw in old:
            assert raw.request("GET", "/health").status == 200
        new: list[Raw] = []
        for index in range(cap):
            raw = Raw(running.port)
            new.append(raw)
            assert raw.request("GET", kv("k")).status == 404  # served, not 503
            assert old[index].closed_by_server()  # oldest first
            assert connection_count(running) <= cap
        for raw in new:  # every newcomer is still open
            assert raw.request("GET", "/health").status == 200
        assert connection_count(running) == cap
        for raw in old + new:
            raw.close()


def test_a_connection_that_has_not_spoken_yet_is_idle_too(
    backend: FakeBackend, loop_kind: str
) -> None:
    with (
        ServerThread(backend, Limits(http_connections_max=2), loop_kind=loop_kind) as running,
        Raw(running.port) as silent,
    ):
        wait_until(lambda: idle_count(running) == 1)
        with Raw(running.port) as talker:
            assert talker.request("GET", "/health").status == 200
            with Raw(running.port) as newcomer:
                assert newcomer.request("GET", "/health").status == 200
                assert silent.closed_by_server()
                assert talker.request("GET", "/health").status == 200


def test_when_every_connection_is_busy_newcomers_get_503_and_one_warning(
    backend: FakeBackend, loop_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dynakv.api.http")
    with ServerThread(backend, Limits(http_connections_max=2), loop_kind=loop_kind) as running:
        busy = [Raw(running.port) for _ in range(2)]
        for raw in busy:
            raw.send(encode("GET", kv("gated")))
        wait_until(lambda: len(backend.calls) == 2)
        for _ in range(5):
            with Raw(running.port) as refused:
                reply = refused.reply()
                assert (reply.status, reply.error()["resource"]) == (503, "http_connections")
                assert reply.error()["limit"] == 2
                assert refused.closed_by_server()
        assert connection_count(running) == 2
        warnings = [r.getMessage() for r in caplog.records if "connections full" in r.getMessage()]
        assert len(warnings) == 1, warnings  # rate-limited: one line for the burst
        assert "refused=1" in warnings[0] and "http_connections_max=2" in warnings[0]
        running.open_gate()
        for raw in busy:
            assert raw.reply().status == 404
            raw.close()


# --- silent connections ----------------------------------------------------------------------


@pytest.mark.parametrize("preamble", [b"", b"\r\n"], ids=["nothing", "blank-line"])
def test_a_connection_that_sends_no_request_is_closed_after_the_read_timeout(
    backend: FakeBackend, loop_kind: str, preamble: bytes
) -> None:
    with ServerThread(backend, loop_kind=loop_kind, read_timeout_s=0.3, idle_timeout_s=60) as run:
        started = time.monotonic()  # before connecting: the server's clock starts later
        with Raw(run.port, timeout_s=10) as silent:
            silent.send(preamble)
            assert silent.reader.read(1) == b""  # closed without an answer
            elapsed_s = time.monotonic() - started
        assert 0.3 <= elapsed_s < 5
        wait_until(lambda: connection_count(run) == 0)


def test_a_keep_alive_connection_between_requests_gets_the_idle_timeout(
    backend: FakeBackend, loop_kind: str
) -> None:
    with (
        ServerThread(backend, loop_kind=loop_kind, read_timeout_s=0.2, idle_timeout_s=60) as run,
        Raw(run.port) as raw,
    ):
        assert raw.request("GET", "/health").status == 200
        raw.sock.settimeout(1.0)  # five read timeouts
        with pytest.raises(TimeoutError):
            raw.sock.recv(1)
        raw.sock.settimeout(5.0)
        assert raw.request("GET", "/health").status == 200


# --- malformed percent-encoding --------------------------------------------------------------


@pytest.mark.parametrize("segment", ["a%GGb", "%GG", "%4", "abc%", "%%41", "%4g", "%g4", "%%"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_malformed_percent_encoding_in_a_key_is_400(
    conn: Raw, backend: FakeBackend, segment: str, method: str
) -> None:
    reply = conn.request(method, "/v1/kv/" + segment, b"v" if method == "PUT" else b"")
    assert reply.status == 400
    assert (reply.error()["code"], reply.error()["field"]) == ("InvalidRequest", "key")
    assert data_calls(backend) == []
    local = conn.request("GET", "/v1/admin/local/" + segment)
    assert (local.status, local.error()["field"]) == (400, "key")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("consistency=%GG", "consistency"),
        ("consistency=one%", "consistency"),
        ("ttl=%4", "ttl"),
        ("consistency=one&ttl=5%2", "ttl"),
        ("%GG=one", "query"),
    ],
)
def test_malformed_percent_encoding_in_the_query_is_400(
    conn: Raw, backend: FakeBackend, query: str, field: str
) -> None:
    reply = conn.request("PUT", kv("k", query), b"v")
    assert reply.status == 400
    assert (reply.error()["code"], reply.error()["field"]) == ("InvalidRequest", field)
    assert data_calls(backend) == []


def test_well_formed_escapes_still_decode(conn: Raw, backend: FakeBackend) -> None:
    assert conn.request("PUT", "/v1/kv/a%2Fb%00%ff%41?consistency=%6fne", b"v").status == 204
    assert backend.calls[-1].key == b"a/b\x00\xffA"
    assert conn.request("GET", "/v1/kv/a%2fb%00%FF%41").body == b"v"


def _reference_decode(data: bytes) -> bytes | None:
    """The dumb model: every '%' must start '%' and two hex digits; None when one does not."""
    decoded = bytearray()
    index = 0
    while index < len(data):
        if data[index : index + 1] == b"%":
            digits = data[index + 1 : index + 3]
            if len(digits) < 2 or any(d not in b"0123456789abcdefABCDEF" for d in digits):
                return None
            decoded.append(int(digits, 16))
            index += 3
        else:
            decoded.append(data[index])
            index += 1
    return bytes(decoded)


_ESCAPE_SOUP = st.text(alphabet="%0123456789abcdefgABCDEFG/", max_size=16).map(str.encode)


@given(data=st.one_of(st.binary(max_size=40), _ESCAPE_SOUP))
def test_percent_decode_matches_the_reference_model(data: bytes) -> None:
    expected = _reference_decode(data)
    if expected is None:
        with pytest.raises(InvalidRequest) as raised:
            percent_decode(data, "key")
        assert raised.value.field == "key"
    else:
        assert percent_decode(data, "key") == expected


@given(raw=st.binary(max_size=40))
def test_percent_decode_inverts_quote(raw: bytes) -> None:
    assert percent_decode(quote(raw, safe="").encode(), "key") == raw


# --- Host ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"GET /health HTTP/1.1\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /health HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        b"PUT /v1/kv/k HTTP/1.1\r\nContent-Length: 1\r\n\r\nv",
    ],
    ids=["http11-none", "http11-two", "http10-two", "put-none"],
)
def test_a_request_without_exactly_one_host_is_400(
    server: ServerThread, backend: FakeBackend, head: bytes
) -> None:
    with Raw(server.port) as raw:
        raw.send(head)
        reply = raw.reply()
        assert reply.status == 400
        assert (reply.error()["code"], reply.error()["field"]) == ("InvalidRequest", "host")
        assert "RFC 9112" in reply.error()["message"]
        assert raw.closed_by_server()
    assert backend.calls == []


@pytest.mark.parametrize(
    "head",
    [b"GET /health HTTP/1.0\r\n\r\n", b"GET /health HTTP/1.1\r\nHost:\r\n\r\n"],
    ids=["http10-none", "http11-empty"],
)
def test_http10_may_omit_host_and_an_empty_host_is_valid(server: ServerThread, head: bytes) -> None:
    with Raw(server.port) as raw:
        raw.send(head)
        assert raw.reply().status == 200


# --- Expect: 100-continue --------------------------------------------------------------------


def _expect_head(target: str, length: int, version: str = "1.1") -> bytes:
    return (
        f"PUT {target} HTTP/{version}\r\nHost: t\r\nExpect: 100-continue\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("length", "code"),
    [(1001, "ValueTooLarge"), (3999, "ValueTooLarge"), (4001, "ValueTooLarge")],
    ids=["over-value", "under-body", "over-body"],
)
def test_expect_continue_with_an_oversize_value_gets_413_and_no_100(
    server: ServerThread, backend: FakeBackend, length: int, code: str
) -> None:
    with Raw(server.port) as raw:
        raw.send(_expect_head(kv("big"), length))
        reply = raw.reply()  # the very first line is the 413: no "100 Continue" before it
        assert (reply.status, reply.error()["code"]) == (413, code)
        assert (reply.error()["size"], reply.error()["max"]) == (length, 1000)
        assert raw.closed_by_server()
    assert backend.calls == []


def test_expect_continue_over_the_body_limit_elsewhere_is_413_body_too_large(
    server: ServerThread,
) -> None:
    with Raw(server.port) as raw:
        raw.send(_expect_head("/v1/status", 4001))
        reply = raw.reply()
        assert (reply.status, reply.error()["code"]) == (413, "BodyTooLarge")


def test_expect_continue_on_http10_is_ignored(server: ServerThread, backend: FakeBackend) -> None:
    with Raw(server.port) as raw:
        raw.send(_expect_head(kv("e"), 2, version="1.0") + b"ok")
        assert raw.reply().status == 204  # not a 100 first
    assert backend.records[b"e"].visible_values(backend.now_ms) == [b"ok"]


# --- running short of file descriptors (a child process with a low RLIMIT_NOFILE) -------------

_CHILD = """
import logging, resource, sys
sys.path.insert(0, {root!r})
from dynakv.config import Limits
from dynakv.node.resources import fit_connection_caps
from tests.unit.test_http_api import FakeBackend, ServerThread

loop_kind, soft, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")

class Backend(FakeBackend):
    async def get(self, key, consistency):
        print("get", len(self.calls) + 1, flush=True)
        return await super().get(key, consistency)

limits = fit_connection_caps(Limits(), soft) if mode == "fitted" else Limits()
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
with ServerThread(Backend(), limits, loop_kind=loop_kind) as running:
    print("port", running.port, limits.http_connections_max, flush=True)
    sys.stdin.read()
"""


class Child:
    """A server in a child process with ``soft`` open files; ends when stdin closes."""

    def __init__(self, loop_kind: str, soft: int, mode: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CHILD.format(root=str(ROOT)), loop_kind, str(soft), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        words = self.line().split()
        assert words[0] == "port", words
        self.port, self.http_connections_max = int(words[1]), int(words[2])

    def line(self) -> str:
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        line = stdout.readline()
        assert line, "the child server exited"
        return line

    def stop(self) -> str:
        """Stop the child; its standard error."""
        _, stderr = self.process.communicate(timeout=20)
        return stderr


def _exchange(port: int) -> tuple[Raw, Reply | str]:
    raw = Raw(port)
    try:
        return raw, raw.request("GET", "/health")
    except (ConnectionError, TimeoutError, AssertionError) as exc:
        return raw, type(exc).__name__


def test_out_of_descriptors_answers_503_and_logs_never_a_silent_reset(loop_kind: str) -> None:
    child = Child(loop_kind, soft=64, mode="uncapped")
    started = time.monotonic()
    held: list[Raw] = []
    outcomes: list[str] = []
    try:
        for _ in range(150):
            raw, reply = _exchange(child.port)
            held.append(raw)
            if isinstance(reply, str):
                outcomes.append(reply)
            elif reply.status == 200:
                outcomes.append("200")
            else:
                outcomes.append(f"{reply.status} {reply.error()['resource']}")
                assert reply.error()["limit"] == 64
            if outcomes[-3:] == ["503 open_files"] * 3:
                break
        served = outcomes.count("200")
        assert served >= 20 and outcomes[served:] == ["503 open_files"] * 3, outcomes
        for raw in held[:10]:  # free some descriptors: the server recovers
            raw.close()
        deadline = time.monotonic() + 10
        while True:
            raw, reply = _exchange(child.port)
            held.append(raw)
            if not isinstance(reply, str) and reply.status == 200:
                break
            assert time.monotonic() < deadline, reply
    finally:
        for raw in held:
            raw.close()
        stderr = child.stop()
    lines = [line for line in stderr.splitlines() if "out of file descriptors" in line]
    # rate-limited: one line per 10 s however many 503s (at least three) it covers
    assert 1 <= len(lines) <= 1 + (time.monotonic() - started) // 10, stderr
    assert "EMFILE" in lines[0] and "soft=64" in lines[0]
    assert re.search(r"answered_503=[1-9]", lines[0]), lines[0]


def test_with_fitted_caps_the_connection_cap_answers_before_descriptors_run_out(
    loop_kind: str,
) -> None:
    soft = 256
    child = Child(loop_kind, soft=soft, mode="fitted")
    cap = child.http_connections_max
    assert cap == fit_connection_caps(Limits(), soft).http_connections_max < soft // 4
    held: list[Raw] = []
    try:
        for index in range(cap):  # every slot busy: nothing idle to close
            raw = Raw(child.port)
            held.append(raw)
            raw.send(encode("GET", kv("gated")))
            assert child.line().split() == ["get", str(index + 1)]
        for _ in range(20):
            raw, reply = _exchange(child.port)
            held.append(raw)
            assert not isinstance(reply, str), reply
            assert (reply.status, reply.error()["resource"]) == (503, "http_connections")
    finally:
        for raw in held:
            raw.close()
        stderr = child.stop()
    assert "http connections full" in stderr
    assert "out of file descriptors" not in stderr

"""Pluggable routing: a dispatcher picks a router per request, the connection keeps the
headers routers declare, and every error renders through the router that owns the request.

A second API is played by ``EchoRouter``, which owns ``/echo``, reads one header and
answers errors in its own shape, so the tests can tell who rendered what.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Final

import pytest

from dynakv.api.errors import RESERVED_KEY_PREFIX, BodyTooLarge
from dynakv.api.routes import Router
from dynakv.api.wire import Dispatcher, Request, Response, internal_error_response
from dynakv.config import Limits
from dynakv.errors import DynakvError, InvalidRequest
from tests.unit.test_http_api import SMALL, FakeBackend, Raw, ServerThread, encode, kv

_ECHO_HEADER: Final = b"x-echo-token"


class EchoRouter:
    """Owns ``/echo``: answers the declared header and every kept header name."""

    header_names: Final = frozenset({_ECHO_HEADER})

    def __init__(self) -> None:
        self.requests: list[Request] = []

    def owns(self, request: Request) -> bool:
        return request.url.startswith(b"/echo")

    def early_refusal(self, request: Request, declared_bytes: int) -> DynakvError | None:
        if declared_bytes > 100:
            return InvalidRequest("echo bodies are at most 100 bytes")
        return None

    def body_too_large(self, request: Request, size_bytes: int) -> DynakvError:
        return BodyTooLarge(size=size_bytes, max=4000)

    async def handle(self, request: Request) -> Response:
        self.requests.append(request)
        if request.method == b"DELETE":
            return self.error_response(InvalidRequest("echo cannot delete"))
        token = request.header(_ECHO_HEADER)
        document = {
            "token": None if token is None else token.decode("latin-1"),
            "kept": sorted(name.decode() for name in request.headers),
            "body": len(request.body),
        }
        return Response(200, b"content-type: application/x-echo\r\n", json.dumps(document).encode())

    def error_response(self, error: DynakvError) -> Response:
        body = json.dumps({"echo_error": error.code, "why": error.message}).encode()
        return Response(error.http_status, b"content-type: application/x-echo\r\n", body)

    def internal_error_response(self, exc: BaseException) -> Response:
        return internal_error_response(exc)


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def conn(backend: FakeBackend, loop_kind: str) -> Iterator[Raw]:
    """The native API alone, as before routing was pluggable."""
    with ServerThread(backend, SMALL, loop_kind=loop_kind) as server, Raw(server.port) as raw:
        yield raw


@pytest.fixture
def echo() -> EchoRouter:
    return EchoRouter()


@pytest.fixture
def both(backend: FakeBackend, echo: EchoRouter, loop_kind: str) -> Iterator[Raw]:
    def routes(fake: FakeBackend, limits: Limits) -> Dispatcher:
        return Dispatcher(Router(fake, limits), [echo])

    with (
        ServerThread(backend, SMALL, loop_kind=loop_kind, read_timeout_s=0.5, routes=routes) as s,
        Raw(s.port) as raw,
    ):
        yield raw


def test_the_dispatcher_picks_the_first_owner_else_the_default(backend: FakeBackend) -> None:
    native = Router(backend, SMALL)
    echo = EchoRouter()
    dispatcher = Dispatcher(native, [echo])
    request = Request()
    request.url = b"/echo/1"
    assert dispatcher.route(request) is echo
    request.url = b"/v1/kv/a"
    assert dispatcher.route(request) is native
    assert dispatcher.header_names == native.header_names | {_ECHO_HEADER}


def test_each_api_answers_its_own_requests_on_one_connection(
    both: Raw, backend: FakeBackend, echo: EchoRouter
) -> None:
    assert both.request("PUT", kv("a"), b"v").status == 204
    reply = both.request("GET", "/echo", headers={"X-ECHO-Token": "t1", "X-Other": "no"})
    assert reply.status == 200
    assert json.loads(reply.body) == {"token": "t1", "kept": ["x-echo-token"], "body": 0}
    assert both.request("GET", kv("a")).body == b"v"
    assert [call.op for call in backend.calls] == ["put", "get"]
    assert len(echo.requests) == 1


def test_declared_headers_are_case_insensitive_and_repeats_join(both: Raw) -> None:
    raw = (
        b"GET /echo HTTP/1.1\r\nHost: t\r\nx-echo-token: a\r\nX-Echo-Token: b\r\n"
        b'If-Match: "x"\r\n\r\n'
    )
    both.send(raw)
    document = json.loads(both.reply().body)
    # the native router's declared header is kept too (the dispatcher keeps the union)
    assert document == {"token": "a,b", "kept": ["if-match", "x-echo-token"], "body": 0}


def test_errors_render_in_the_owners_shape(both: Raw) -> None:
    echo_error = both.request("DELETE", "/echo")
    assert (echo_error.status, json.loads(echo_error.body)["echo_error"]) == (
        400,
        "InvalidRequest",
    )
    native = both.request("GET", "/nowhere")
    assert native.status == 404
    assert native.error()["code"] == "NotFound"


def test_a_connection_level_error_renders_through_the_owner(both: Raw) -> None:
    # 413 decided from Content-Length, before the body is read: still the owner's shape
    both.send(encode("POST", "/echo", b"").replace(b"Content-Length: 0", b"Content-Length: 9999"))
    reply = both.reply()
    assert reply.status == 413
    assert json.loads(reply.body)["echo_error"] == "BodyTooLarge"
    assert both.closed_by_server()


def test_an_early_refusal_comes_instead_of_100_continue(both: Raw) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 500\r\n\r\n"
    both.send(head)
    reply = both.reply()
    assert reply.status == 400
    assert json.loads(reply.body)["echo_error"] == "InvalidRequest"


def test_before_a_head_is_complete_the_default_renders(both: Raw) -> None:
    both.send(b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Big: " + b"x" * 5000 + b"\r\n\r\n")
    reply = both.reply()
    assert reply.status == 431
    assert reply.error()["code"] == "HeadersTooLarge"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_reserved_keys_are_refused_by_the_native_api(
    conn: Raw, backend: FakeBackend, method: str
) -> None:
    reply = conn.request(
        method, kv(RESERVED_KEY_PREFIX + b"catalog"), b"v" if method == "PUT" else b""
    )
    assert reply.status == 400
    error = reply.error()
    assert (error["code"], error["field"], error["limit"]) == (
        "KeyReserved",
        "key",
        "reserved_key_prefix",
    )
    assert RESERVED_KEY_PREFIX.hex() in error["message"]
    local = conn.request("GET", "/v1/admin/local/" + kv(RESERVED_KEY_PREFIX)[len("/v1/kv/") :])
    assert local.error()["code"] == "KeyReserved"
    assert backend.calls == []
    # a key that merely contains the prefix, or begins with part of it, is an ordinary key
    assert conn.request("PUT", kv(b"a" + RESERVED_KEY_PREFIX), b"v").status == 204
    assert conn.request("PUT", kv(RESERVED_KEY_PREFIX[:-1]), b"v").status == 204


class HostReadingRouter(EchoRouter):
    """Declares Host, which the connection also counts for its RFC 9112 check."""

    header_names: Final = frozenset({_ECHO_HEADER, b"host"})


def test_a_declared_framing_header_is_kept_and_still_checked(
    backend: FakeBackend, loop_kind: str
) -> None:
    def routes(fake: FakeBackend, limits: Limits) -> Dispatcher:
        return Dispatcher(Router(fake, limits), [HostReadingRouter()])

    with ServerThread(backend, SMALL, loop_kind=loop_kind, routes=routes) as server:
        with Raw(server.port) as raw:
            reply = raw.request("GET", "/echo")
            assert json.loads(reply.body)["kept"] == ["host"]
        with Raw(server.port) as raw:
            raw.send(b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            refused = raw.reply()
            assert refused.status == 400
            assert json.loads(refused.body)["echo_error"] == "InvalidRequest"

"""One HTTP/1.1 client connection: parse ahead with httptools, answer in order.

``HttpConnection`` is the ``asyncio.Protocol`` of one socket: it feeds bytes to
an ``httptools.HttpRequestParser``, queues complete requests, and answers them
one at a time, each through the router the server's ``Dispatcher`` picked for
it once its head was read (``api/wire.py``). The connection keeps only the
headers the dispatcher's routers declared (by lower-case name), plus the ones
framing needs (Content-Length, Expect, Host), and knows no route itself.

Invariants:

- Responses leave in request order. The parser runs ahead and queues complete
  requests; one coroutine per connection answers the head of the queue,
  writes, pops, repeats. At most ``http_pipeline_max`` requests wait per
  connection: reading pauses at the bound, and requests already parsed past
  it (one read's worth) are answered 503 Overloaded.
- A request reaches the router only once its body is complete. A truncated
  request (EOF or read timeout mid-message) is answered 400 and the
  connection closed; nothing was dispatched.
- Malformed bytes, oversize heads or bodies and timeouts are fatal for the
  connection: the answers already queued go out, then one JSON error with
  ``Connection: close``, then the connection half-closes and lingers briefly
  (discarding input) so the client reads the error instead of a reset. An
  HTTP/1.1 request without exactly one ``Host`` is such an error (400, RFC
  9112 §3.2); HTTP/1.0 may omit it.
- Every limit is enforced before the data it bounds is buffered further:
  ``http_header_bytes_max``, ``http_body_bytes_max`` (from Content-Length
  when there is one), ``http_pipeline_max``. ``100 Continue`` is sent only
  once the head has passed every check, so a declared body over
  ``http_body_bytes_max`` (or one the router refuses early, such as a kv PUT
  over ``value_bytes_max``) gets its 413 and never a ``100``.
- Every error answer of a request renders through the router that owns it
  (its own error shape); before a head is complete, through the default.
- The connection is in ``server.idle`` exactly when it could be closed
  without losing a request: no message being read, nothing queued, nothing
  being answered. The server admits, evicts and counts (``api/http.py``).

Never: raise out of a protocol or parser callback, or write after the final
response of a connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any, cast

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
)

from dynakv.api.errors import HeadersTooLarge, RequestTimeout
from dynakv.api.wire import CONTINUE_RESPONSE, Request, RequestRouter, Response, serialize
from dynakv.errors import DynakvError, InvalidRequest, Overloaded, RemoteProtocolError

if TYPE_CHECKING:
    from dynakv.api.http import HttpServer


class HttpConnection(asyncio.Protocol):
    """One client connection: parse ahead, answer in order, enforce limits."""

    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop
        self._limits = server.limits
        self._dispatcher = server.dispatcher
        self._header_names = server.dispatcher.header_names
        # the router of the message being parsed (the default until its head is read)
        self._route: RequestRouter = server.dispatcher.default
        self._transport: asyncio.Transport | None = None
        self._parser = HttpRequestParser(self)
        self._queue: deque[Request | Response] = deque()
        self._worker: asyncio.Task[None] | None = None  # set only while a request is suspended
        self._serving = False  # _serve is running (eagerly or in _worker)
        # the message being parsed
        self._request: Request | None = None
        self._head_bytes = 0
        self._unparsed_head_bytes = 0
        self._headers_done = False
        self._content_length: int | None = None
        self._body_parts: list[bytes] = []
        self._body_bytes = 0
        self._expect_continue = False
        self._host_headers = 0
        self._request_started_at = 0.0  # 0.0: no message in progress
        # connection state
        self._idle_since = loop.time()
        self._spoken = False  # a request has been read whole: the idle timeout applies
        self._idle = server.idle  # the server's idle list, which holds us while we are idle
        self._listed_idle = False  # we are in it
        self._dead = False  # parsing stopped after a fatal error; input is discarded
        self._closing = False  # the final response is written; waiting for the socket to close
        self._closed = False
        self._eof = False
        self._reading_paused = False
        self._writing_paused = False
        self._writing_paused_at = 0.0
        self._writable: asyncio.Future[None] | None = None
        self._linger: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they implement it.
        self._transport = cast(asyncio.Transport, transport)
        self._idle_since = self._loop.time()  # a silent client gets read_timeout_s from here
        self._become_idle()

    def data_received(self, data: bytes) -> None:
        if self._dead or self._closing or self._closed:
            return
        limits = self._limits
        if not self._headers_done:
            self._unparsed_head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, DynakvError):
                self._fail(cause)
            else:
                self._fail_response(self._route.internal_error_response(cause or exc))
        except HttpParserUpgrade:
            self._refuse_upgrade()
        except HttpParserError as exc:
            self._fail(RemoteProtocolError(f"malformed HTTP request: {exc}"))
        else:
            # httptools buffers a header until it ends: bound what it may hold
            if (
                self._request is not None
                and not self._headers_done
                and self._unparsed_head_bytes > limits.http_header_bytes_max
            ):
                self._fail(
                    HeadersTooLarge(
                        size=self._unparsed_head_bytes, max=limits.http_header_bytes_max
                    )
                )
        if self._queue and not self._serving:
            self._start_serving()

    def eof_received(self) -> bool:
        self._eof = True
        if self._closing:
            return False
        if not self._dead and self._request is not None:
            self._fail(RemoteProtocolError(self._truncation("the client closed the connection")))
        # keep the transport open (half-closed) until the queued answers are written
        return bool(self._queue) or self._serving

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.forget(self)
        self._queue.clear()
        if self._linger is not None:
            self._linger.cancel()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._writing_paused_at = self._loop.time()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # --- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._listed_idle:
            self.leave_idle()
        self._request = Request()
        self._head_bytes = 0
        self._headers_done = False
        self._content_length = None
        self._body_parts.clear()
        self._body_bytes = 0
        self._expect_continue = False
        self._host_headers = 0
        self._route = self._dispatcher.default
        self._request_started_at = self._loop.time()

    def on_url(self, url: bytes) -> None:
        assert self._request is not None
        self._request.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._request
        assert request is not None
        self._count_head(len(name) + len(value) + 4)
        lowered = name.lower()
        if lowered in self._header_names:
            # repeats join into one value (a list), which the router refuses or reads as one
            headers = request.headers
            kept = headers.get(lowered)
            headers[lowered] = value if kept is None else kept + b"," + value
        length = len(name)
        if length == 14 and lowered == b"content-length":
            self._content_length = int(value) if value.isdigit() else None
        elif length == 6 and lowered == b"expect":
            self._expect_continue = value.lower() == b"100-continue"
        elif length == 4 and lowered == b"host":
            self._host_headers += 1

    def on_headers_complete(self) -> None:
        request = self._request
        assert request is not None
        self._headers_done = True
        self._unparsed_head_bytes = 0
        parser = self._parser
        request.method = parser.get_method()
        request.router = router = self._route = self._dispatcher.route(request)
        hosts = self._host_headers
        if hosts != 1 and (hosts > 1 or parser.get_http_version() == "1.1"):
            raise InvalidRequest(
                f"a request must carry one Host header (RFC 9112 §3.2); this one has {hosts}",
                field="host",
            )
        declared = self._content_length
        limits = self._limits
        if declared is not None:
            if declared > limits.http_body_bytes_max:
                raise router.body_too_large(request, declared)
            if self._expect_continue:
                refusal = router.early_refusal(request, declared)
                if refusal is not None:
                    raise refusal
        if (
            self._expect_continue
            and not self._queue
            and not self._serving
            and self._transport is not None
            and parser.get_http_version() == "1.1"  # RFC 9110 §10.1.1: HTTP/1.0 gets no 100
        ):
            self._transport.write(CONTINUE_RESPONSE)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._limits.http_body_bytes_max:
            request = self._request
            assert request is not None
            raise self._route.body_too_large(request, self._body_bytes)
        self._body_parts.append(body)

    def on_message_complete(self) -> None:
        request = self._request
        assert request is not None
        self._request = None
        self._request_started_at = 0.0
        self._headers_done = False
        self._spoken = True
        router = self._route
        self._route = self._dispatcher.default
        parts = self._body_parts
        if parts:
            request.body = parts[0] if len(parts) == 1 else b"".join(parts)
            parts.clear()
        parser = self._parser
        request.keep_alive = keep_alive = parser.should_keep_alive()
        request.http10 = keep_alive and parser.get_http_version() == "1.0"
        queue = self._queue
        if len(queue) >= self._limits.http_pipeline_max:
            overloaded = Overloaded(resource="http_pipeline", limit=self._limits.http_pipeline_max)
            response = router.error_response(overloaded)
            response.close = not keep_alive
            queue.append(response)
        else:
            queue.append(request)
        if len(queue) >= self._limits.http_pipeline_max and not self._reading_paused:
            self._reading_paused = True
            if self._transport is not None:
                self._transport.pause_reading()

    # --- answering -------------------------------------------------------------------------------

    def _start_serving(self) -> None:
        """Answer the queue now, on the caller's stack, until something has to wait.

        Most requests complete without suspending (the backend answers from
        memory or the coordinator is already done), so stepping the coroutine
        here saves creating a task per request, as 3.12's eager task factory
        would. Only a coroutine that really suspends is handed to a task.
        """
        coroutine = self._serve()
        try:
            yielded = coroutine.send(None)
        except StopIteration:
            return
        self._worker = self._loop.create_task(_continue(coroutine, yielded))

    async def _serve(self) -> None:
        """Answer queued items in order until the queue is empty or the connection ends."""
        self._serving = True
        queue = self._queue
        transport = self._transport
        assert transport is not None
        try:
            while queue and not self._closed:
                item = queue[0]
                if isinstance(item, Request):
                    router = item.router
                    assert router is not None  # routed when its head was read
                    response = await router.handle(item)
                    keep_alive = item.keep_alive and not response.close
                    data = serialize(response, keep_alive, item.http10)
                else:
                    keep_alive = not item.close
                    data = serialize(item, keep_alive, False)
                if self._closed:
                    return
                transport.write(data)
                queue.popleft()
                if not keep_alive:
                    self._finish()
                    return
                if self._reading_paused and len(queue) < self._limits.http_pipeline_max:
                    self._reading_paused = False
                    if self._request is not None:
                        self._request_started_at = self._loop.time()
                    transport.resume_reading()
                if self._writing_paused:
                    await self._wait_writable()
            if self._eof and not self._closed:
                self._finish()
        finally:
            self._serving = False
            self._worker = None
            self._idle_since = self._loop.time()
            if not self._queue and self._request is None and not self._closed:
                self._become_idle()

    def _become_idle(self) -> None:
        idle = self._idle
        if self._listed_idle:
            del idle[self]  # to the end: the one idle the longest stays first
        idle[self] = None
        self._listed_idle = True

    def leave_idle(self) -> None:
        """Out of the server's idle list (a request began, or the connection is ending)."""
        if self._listed_idle:
            del self._idle[self]
            self._listed_idle = False

    async def _wait_writable(self) -> None:
        while self._writing_paused and not self._closed:
            self._writable = self._loop.create_future()
            await self._writable
        self._writable = None

    def _finish(self) -> None:
        """The final response is written: half-close, then close once the client is done."""
        transport = self._transport
        assert transport is not None
        self._closing = True
        self._queue.clear()
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()  # so we see the client's EOF while lingering
        if self._eof or not transport.can_write_eof() or self._server.linger_s == 0:
            transport.close()
            return
        transport.write_eof()
        self._linger = self._loop.call_later(self._server.linger_s, transport.close)
        self._become_idle()  # nothing more to say: first to go when a slot is needed

    # --- failure paths ---------------------------------------------------------------------------

    def _fail(self, error: DynakvError) -> None:
        self._fail_response(self._route.error_response(error))

    def _fail_response(self, response: Response) -> None:
        """Stop parsing; answer what is queued, then ``response``, then close."""
        if self._dead or self._closing or self._closed:
            return
        self._dead = True
        self._request = None
        self._request_started_at = 0.0
        self.leave_idle()
        response.close = True
        self._queue.append(response)
        if not self._serving:
            self._start_serving()

    def _refuse_upgrade(self) -> None:
        """We speak no upgraded protocol: answer the request as plain HTTP, then close."""
        if self._request is None and self._queue and isinstance(self._queue[-1], Request):
            self._dead = True
            self._queue[-1].keep_alive = False
        else:
            self._fail(RemoteProtocolError("protocol upgrades (and CONNECT) are not supported"))

    def check_timeouts(self, now: float) -> None:
        """Called by the server's sweeper: end stuck requests and idle connections."""
        if self._closed:
            return
        if self._writing_paused and now - self._writing_paused_at > self._server.idle_timeout_s:
            # a client that stopped reading its answers holds memory: drop it
            assert self._transport is not None
            self._transport.abort()
            return
        if self._dead or self._closing or self._reading_paused:
            return
        started = self._request_started_at
        if started:
            if now - started > self._server.read_timeout_s:
                if self._headers_done:
                    self._fail(
                        RemoteProtocolError(
                            self._truncation(
                                f"the body did not arrive within {self._server.read_timeout_s:g} s"
                            )
                        )
                    )
                else:
                    self._fail(RequestTimeout(timeout_s=self._server.read_timeout_s))
        elif not self._queue and not self._serving:
            server = self._server
            timeout_s = server.idle_timeout_s if self._spoken else server.read_timeout_s
            if now - self._idle_since > timeout_s:
                # between requests, or never spoke: nothing to answer, just close
                assert self._transport is not None
                self._transport.close()

    def is_evictable(self) -> bool:
        """Closing it now loses nothing: no request read, queued, or still being written."""
        transport = self._transport
        return (
            not self._closed
            and self._request is None
            and not self._queue
            and not self._serving
            and transport is not None
            and transport.get_write_buffer_size() == 0
        )

    def evict(self) -> None:
        """Closed by the server to admit a new connection (see ``HttpServer``)."""
        assert self.is_evictable()
        self._closed = True
        self._server.forget(self)
        assert self._transport is not None
        self._transport.close()

    def shutdown(self) -> asyncio.Task[None] | None:
        """Server shutdown: close now, cancel the request being answered (returned to await)."""
        worker = self._worker
        if worker is not None:
            worker.cancel()
        if self._transport is not None:
            self._transport.close()
        return worker

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._limits.http_header_bytes_max:
            raise HeadersTooLarge(size=self._head_bytes, max=self._limits.http_header_bytes_max)

    def _truncation(self, reason: str) -> str:
        if self._headers_done:
            expected = (
                "an unknown number of"
                if self._content_length is None
                else str(self._content_length)
            )
            return f"truncated body: received {self._body_bytes} of {expected} bytes; {reason}"
        return f"truncated request: the headers never ended; {reason}"


class _Resumed:
    """Awaitable that continues a coroutine already stepped once (see ``_start_serving``).

    It forwards what the task sends or throws, exactly as a task would have
    done had it owned the coroutine from the start.
    """

    __slots__ = ("_coroutine", "_yielded")

    def __init__(self, coroutine: Coroutine[Any, Any, None], yielded: Any) -> None:
        self._coroutine = coroutine
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine = self._coroutine
        yielded = self._yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:
                try:
                    yielded = coroutine.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    yielded = coroutine.send(sent)
                except StopIteration:
                    return


async def _continue(coroutine: Coroutine[Any, Any, None], yielded: Any) -> None:
    await _Resumed(coroutine, yielded)


def run_eagerly(coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Step ``coroutine`` now, on the caller's stack (as ``_start_serving`` steps a
    request): None when it finished without suspending, else the task that runs
    the rest. Saves a task per coroutine that never waits (a local read)."""
    try:
        yielded = coroutine.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_continue(coroutine, yielded))

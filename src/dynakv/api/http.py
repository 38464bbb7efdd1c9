"""The HTTP/1.1 server: a raw ``asyncio.Protocol`` driving ``httptools``, no framework.

``HttpServer`` owns the listening sockets and the accept loop, the set of open
connections, the idle list and the sweeper that enforces time limits; each
connection is an ``HttpConnection`` (``api/connection.py``), which owns
parsing, ordering and answering.

Time limits (checked by one sweeper per server, so the hot path only reads
the clock): ``read_timeout_s`` from a request's first byte to its last, and
from accept to the end of the first request: a connection that sends nothing
is closed after ``read_timeout_s`` *without an answer*, as nginx does — a 408
there could cross a request the client is sending that very moment on a
connection it opened ahead of time, and be read as that request's answer.
``idle_timeout_s`` is for keep-alive connections between requests (and for
clients that stop reading their answers); ``linger_s`` after a final answer.

Admission, decided at accept before a protocol exists. ``connections`` never
holds more than ``http_connections_max``. At the cap, the connection idle the
longest (``idle``, oldest first: no request being read, nothing queued or
being written — a keep-alive connection between requests, one that has not
spoken yet, or one lingering after its final answer) is closed to admit the
new one; closing an idle keep-alive connection is ordinary HTTP (RFC 9112
§9.3), and clients retry on a new one. Only when none is idle does the new
connection get 503 ``Overloaded`` (``resource="http_connections"``), written
straight to the socket, which is closed at once: a refusal holds no
descriptor past the call. A WARNING, at most one per ``_WARNING_INTERVAL_S``,
counts refusals.

File descriptors. We accept ourselves (``add_reader`` on our own listening
sockets) rather than through ``loop.create_server``, because neither loop
lets the application see EMFILE. asyncio logs "socket.accept() out of system
resource" through the loop's exception handler, with a traceback, every
second, and stops accepting for a second; clients wait in the backlog.
uvloop (libuv's ``uv__emfile_trick``) closes a spare descriptor, accepts
every pending connection and closes it at once — clients see a reset or an
EOF and nothing is logged; if the spare cannot be reopened, the next EMFILE
makes uvloop close the listening socket itself, silently (measured with
uvloop 0.23: 100 connections against a soft limit of 64 gave 45 resets and
5 EOFs). Here the server keeps its own spare descriptor: on EMFILE or ENFILE
it closes the spare, accepts up to ``_ACCEPT_BATCH_MAX`` pending connections,
answers each 503 ``Overloaded`` (``resource="open_files"``), reopens the
spare and logs a rate-limited WARNING naming the open-file limit. When the
spare is gone or nothing could be accepted, accepting pauses for
``_ACCEPT_RETRY_S`` (no busy loop; clients wait in the backlog). With the
caps from ``node.resources.fit_connection_caps`` the cap answers first and
this path is a last resort. The price: accepting in Python costs about 40 µs
more CPU per new connection than uvloop's accept in C (measured on two busy
cores); a request on a kept-alive connection pays about 0.3 µs for the idle
list and the Host check.

Never: block the loop, keep a connection open past ``close()``, or let a
refused connection keep a descriptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import resource
import socket
from collections.abc import Coroutine
from typing import Any, Final

from dynakv.api.backend import KvBackend
from dynakv.api.connection import HttpConnection
from dynakv.api.routes import Router
from dynakv.api.wire import Dispatcher, RequestRouter, serialize
from dynakv.config import Limits
from dynakv.errors import Overloaded

logger = logging.getLogger(__name__)

_SWEEP_INTERVAL_S_MIN: Final = 0.05
_SWEEP_INTERVAL_S_MAX: Final = 1.0
_BACKLOG: Final = 1024
_ACCEPT_BATCH_MAX: Final = 128  # accepts per wake-up of a listening socket
_ACCEPT_RETRY_S: Final = 1.0  # pause after an accept error we cannot answer
_EVICT_SCAN_MAX: Final = 16  # idle connections looked at to find one with no unsent bytes
_DRAIN_BYTES_MAX: Final = 64 * 1024  # read before closing a refused socket, so it ends in FIN
_WARNING_INTERVAL_S: Final = 10.0


class _Throttle:
    """Lets one log line through per ``interval_s``; sums the counts in between."""

    __slots__ = ("_count", "_interval_s", "_next_s")

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._next_s = float("-inf")
        self._count = 0

    def due(self, now_s: float, count: int = 1) -> int | None:
        """Add ``count``; the sum since the last line if a line is due now, else None."""
        self._count += count
        if now_s < self._next_s:
            return None
        self._next_s = now_s + self._interval_s
        reported, self._count = self._count, 0
        return reported


class HttpServer:
    """Serves HTTP on ``host:port`` (port 0 = any free port): the routers of ``routes``, a
    ``Dispatcher`` (``api/wire.py``), or, given a ``KvBackend``, the native API alone."""

    def __init__(
        self,
        routes: Dispatcher | KvBackend,
        limits: Limits,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        read_timeout_s: float = 30.0,
        idle_timeout_s: float = 300.0,
        linger_s: float = 2.0,
    ) -> None:
        assert read_timeout_s > 0 and idle_timeout_s > 0 and linger_s >= 0
        assert limits.http_connections_max >= 1
        if isinstance(routes, Dispatcher):
            self.dispatcher = routes
        else:
            self.dispatcher = Dispatcher(Router(routes, limits))
        self.limits = limits
        self.host = host
        self.port = port
        self.read_timeout_s = read_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.linger_s = linger_s
        self.connections: set[HttpConnection] = set()
        # connections with nothing in flight, the one idle the longest first
        self.idle: dict[HttpConnection, None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[socket.socket] = []
        # accepted sockets whose transport waits for connection_made
        self._attaching: dict[HttpConnection, Coroutine[Any, Any, Any]] = {}
        self._spare_fd: int | None = None
        self._accept_retry: asyncio.TimerHandle | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_interval_s = min(
            _SWEEP_INTERVAL_S_MAX,
            max(_SWEEP_INTERVAL_S_MIN, min(read_timeout_s, idle_timeout_s) / 4),
        )
        self._full_warnings = _Throttle(_WARNING_INTERVAL_S)
        self._descriptor_warnings = _Throttle(_WARNING_INTERVAL_S)

    async def start(self) -> None:
        assert self._loop is None, "already started"
        loop = self._loop = asyncio.get_running_loop()
        self._listeners = await _listen(loop, self.host, self.port)
        self._spare_fd = _open_spare()
        self._accept_on(loop)
        self._sweeper = loop.call_later(self._sweep_interval_s, self._sweep, loop)
        logger.info("http listening host=%s port=%d", self.host, self.bound_port)

    @property
    def bound_port(self) -> int:
        assert self._listeners, "not started"
        return int(self._listeners[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening, close every connection, cancel requests still being answered."""
        loop = self._loop
        if loop is None or not self._listeners:
            return
        self._accept_off(loop)
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        for handle in (self._sweeper, self._accept_retry):
            if handle is not None:
                handle.cancel()
        self._sweeper = self._accept_retry = None
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
        for coroutine in self._attaching.values():
            coroutine.close()  # closes the transport it made
        self._attaching.clear()
        workers = [c.shutdown() for c in list(self.connections)]
        pending = [w for w in workers if w is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def forget(self, connection: HttpConnection) -> None:
        """``connection`` no longer counts against the cap (it is closed or closing)."""
        self.connections.discard(connection)
        connection.leave_idle()

    # --- accepting -------------------------------------------------------------------------------

    def _accept_on(self, loop: asyncio.AbstractEventLoop) -> None:
        for listener in self._listeners:
            loop.add_reader(listener.fileno(), self._on_acceptable, listener)

    def _accept_off(self, loop: asyncio.AbstractEventLoop) -> None:
        for listener in self._listeners:
            loop.remove_reader(listener.fileno())

    def _on_acceptable(self, listener: socket.socket) -> None:
        for _ in range(_ACCEPT_BATCH_MAX):
            try:
                client, _address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._on_accept_error(listener, exc)
                return
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        loop = self._loop
        assert loop is not None
        # both loops' transports make the socket non-blocking and set TCP_NODELAY
        cap = self.limits.http_connections_max
        if len(self.connections) >= cap and not self._evict_idle():
            overloaded = Overloaded(resource="http_connections", limit=cap)
            _refuse(client, overloaded, self.dispatcher.default)
            refused = self._full_warnings.due(loop.time())
            if refused is not None:
                logger.warning(
                    "http connections full: answered 503 Overloaded refused=%d "
                    "http_connections_max=%d (none idle: every connection has a request "
                    "in progress)",
                    refused,
                    cap,
                )
            return
        connection = HttpConnection(self, loop)
        self.connections.add(connection)
        assert len(self.connections) <= cap
        self._attach(loop, connection, client)

    def _attach(
        self, loop: asyncio.AbstractEventLoop, connection: HttpConnection, client: socket.socket
    ) -> None:
        """Give ``client`` a transport; ``connection`` becomes its protocol.

        ``connect_accepted_socket`` makes the transport at once, then waits for
        ``connection_made``. Like ``HttpConnection._start_serving``, we step the
        coroutine ourselves rather than pay for a task per connection.
        """
        self._attaching[connection] = loop.connect_accepted_socket(lambda: connection, client)
        self._step_attach(connection, client)

    def _step_attach(self, connection: HttpConnection, client: socket.socket) -> None:
        coroutine = self._attaching.get(connection)
        if coroutine is None:  # abandoned by close()
            return
        try:
            waiter = coroutine.send(None)
        except StopIteration:
            del self._attaching[connection]
            return
        except (Exception, asyncio.CancelledError) as exc:
            del self._attaching[connection]
            self._not_attached(connection, client, exc)
            return
        waiter.add_done_callback(lambda _: self._step_attach(connection, client))

    def _not_attached(
        self, connection: HttpConnection, client: socket.socket, exc: BaseException
    ) -> None:
        self.forget(connection)
        client.close()  # a no-op when the transport already owns and closed it
        logger.warning("http connection could not be set up: %r", exc)

    def _evict_idle(self) -> bool:
        """Close the connection idle the longest to make room; False if none can go."""
        for connection in itertools.islice(self.idle, _EVICT_SCAN_MAX):
            if connection.is_evictable():
                connection.evict()
                return True
        return False

    def _on_accept_error(self, listener: socket.socket, exc: OSError) -> None:
        loop = self._loop
        assert loop is not None
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            # Linux takes a descriptor before it looks at the queue: EMFILE may
            # mean no connection is even waiting; then there is nothing to do.
            answered, stuck = self._answer_without_descriptors(listener)
            if stuck:
                self._pause_accepting(loop)
            elif not answered:
                return
            reported = self._descriptor_warnings.due(loop.time(), answered)
            if reported is not None:
                soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                logger.warning(
                    "http accept failed: out of file descriptors (%s); open-file limit "
                    "soft=%d hard=%d connections=%d http_connections_max=%d answered_503=%d%s: "
                    "raise the limit (ulimit -n, systemd LimitNOFILE) or lower "
                    "http_connections_max",
                    errno.errorcode.get(exc.errno or 0, "?"),
                    soft,
                    hard,
                    len(self.connections),
                    self.limits.http_connections_max,
                    reported,
                    f"; accepting paused for {_ACCEPT_RETRY_S:g} s" if stuck else "",
                )
            return
        if exc.errno in (errno.ENOBUFS, errno.ENOMEM):
            self._pause_accepting(loop)
        if self._descriptor_warnings.due(loop.time()) is not None:
            logger.warning("http accept failed: %s", exc)

    def _answer_without_descriptors(self, listener: socket.socket) -> tuple[int, bool]:
        """EMFILE: spend the spare descriptor on 503s, one connection at a time.

        Returns how many were answered, and whether a waiting connection could
        not be accepted even so (no spare, or none free system-wide).
        """
        if self._spare_fd is None:
            return 0, True
        os.close(self._spare_fd)
        self._spare_fd = None
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        error = Overloaded(resource="open_files", limit=soft)
        answered = 0
        stuck = False
        try:
            for _ in range(_ACCEPT_BATCH_MAX):
                try:
                    client, _address = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except ConnectionAbortedError:
                    continue
                except OSError:
                    stuck = True  # still none free (ENFILE: another process took it)
                    break
                _refuse(client, error, self.dispatcher.default)
                answered += 1
        finally:
            self._spare_fd = _open_spare()
        return answered, stuck

    def _pause_accepting(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._accept_retry is not None or not self._listeners:
            return
        self._accept_off(loop)
        self._accept_retry = loop.call_later(_ACCEPT_RETRY_S, self._resume_accepting, loop)

    def _resume_accepting(self, loop: asyncio.AbstractEventLoop) -> None:
        self._accept_retry = None
        if self._spare_fd is None:
            self._spare_fd = _open_spare()
        if self._listeners:
            self._accept_on(loop)

    # --- time limits -----------------------------------------------------------------------------

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = loop.call_later(self._sweep_interval_s, self._sweep, loop)
        if self._spare_fd is None:
            self._spare_fd = _open_spare()
        now = loop.time()
        for connection in list(self.connections):
            connection.check_timeouts(now)


async def _listen(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[socket.socket]:
    """Non-blocking listening sockets on every address ``host`` resolves to (as asyncio does)."""
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            listener = socket.socket(family, kind, proto)
            listeners.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind(address)
            listener.listen(_BACKLOG)
            listener.setblocking(False)
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    assert listeners, f"{host!r} resolved to no address"
    return listeners


def _open_spare() -> int | None:
    """A descriptor held in reserve, so a 503 can still be sent when none is left."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _refuse(client: socket.socket, error: Overloaded, default_router: RequestRouter) -> None:
    """Answer ``error`` on a socket that gets no protocol, and close it now."""
    try:
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError, InterruptedError):
            client.recv(_DRAIN_BYTES_MAX)  # unread input would turn our close into a reset
        client.send(serialize(default_router.error_response(error), False, False))
    except OSError:
        pass
    finally:
        client.close()

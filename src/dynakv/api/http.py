"""The HTTP/1.1 server: a raw ``asyncio.Protocol`` driving ``httptools``, no framework.

``HttpServer`` owns the listening socket, the set of open connections and the
sweeper that enforces time limits; each connection is an ``HttpConnection``
(``api/connection.py``), which owns parsing, ordering and answering.

Time limits (checked by one sweeper per server, so the hot path only reads
the clock): ``read_timeout_s`` from a request's first byte to its last,
``idle_timeout_s`` for keep-alive connections with nothing in flight (and for
clients that stop reading their answers), ``linger_s`` after a connection's
final answer.

Never: block the loop, or keep a connection open past ``close()``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from dynakv.api.backend import KvBackend
from dynakv.api.connection import HttpConnection
from dynakv.api.routes import Router
from dynakv.config import Limits

logger = logging.getLogger(__name__)

_SWEEP_INTERVAL_S_MIN: Final = 0.05
_SWEEP_INTERVAL_S_MAX: Final = 1.0


class HttpServer:
    """Serves the native HTTP API for one backend on ``host:port`` (port 0 = any free port)."""

    def __init__(
        self,
        backend: KvBackend,
        limits: Limits,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        read_timeout_s: float = 30.0,
        idle_timeout_s: float = 300.0,
        linger_s: float = 2.0,
    ) -> None:
        assert read_timeout_s > 0 and idle_timeout_s > 0 and linger_s >= 0
        self.router = Router(backend, limits)
        self.limits = limits
        self.host = host
        self.port = port
        self.read_timeout_s = read_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.linger_s = linger_s
        self.connections: set[HttpConnection] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_interval_s = min(
            _SWEEP_INTERVAL_S_MAX,
            max(_SWEEP_INTERVAL_S_MIN, min(read_timeout_s, idle_timeout_s) / 4),
        )

    async def start(self) -> None:
        assert self._server is None, "already started"
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self, loop), self.host, self.port, backlog=1024
        )
        self._sweeper = loop.call_later(self._sweep_interval_s, self._sweep, loop)
        logger.info("http listening host=%s port=%d", self.host, self.bound_port)

    @property
    def bound_port(self) -> int:
        assert self._server is not None and self._server.sockets, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening, close every connection, cancel requests still being answered."""
        if self._server is None:
            return
        self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        workers = [c.shutdown() for c in list(self.connections)]
        pending = [w for w in workers if w is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        await self._server.wait_closed()

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = loop.call_later(self._sweep_interval_s, self._sweep, loop)
        now = loop.time()
        for connection in list(self.connections):
            connection.check_timeouts(now)

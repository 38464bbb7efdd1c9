"""What both ends of an RPC connection share: the framed asyncio Protocol
(write coalescing, frame decoding, flow control), handler types, and the
wire form of errors. See ``net.rpc`` for the contract callers rely on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final, cast

from dynakv.config import Limits, Timing
from dynakv.errors import (
    DynakvError,
    RemoteProtocolError,
)
from dynakv.net.codec import Envelope, FrameDecoder
from dynakv.net.messages import ErrorReply, Message

# One logger for the whole RPC layer, whichever module logs.
logger = logging.getLogger("dynakv.net.rpc")

# A handler answers at once (a Message), later without a task of its own (a
# Future), or as a coroutine (run as a task). The first two are the hot paths:
# a task per request costs more than the rest of a replica write.
HandlerResult = Message | asyncio.Future[Message] | Awaitable[Message]
# The second argument names the sender: the peer's node id once the connection
# has proven the cluster secret (see ``net.handshake``).
Handler = Callable[[Message, str], HandlerResult]
Facts = dict[str, str | int | bool | None]

_LIMITS: Final = Limits()
_TIMING: Final = Timing()
RECONNECT_BACKOFF_MS_MIN: Final = 25


def error_reply(error: DynakvError) -> ErrorReply:
    """The wire form of ``error``: its code, message and facts (non-scalars as text)."""
    facts: Facts = {name: _wire_fact(value) for name, value in sorted(error.facts().items())}
    return ErrorReply(code=error.code, message=error.message, facts=facts)


def _wire_fact(value: object) -> str | int | bool | None:
    if value is None or isinstance(value, str | bool):
        return value
    if type(value) is int and -(2**63) <= value < 2**64:  # what msgpack can carry
        return value
    return str(value)


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) as ``(host, port)``."""
    host, separator, port_text = address.rpartition(":")
    if not separator or not host or not port_text.isdigit():
        raise ValueError(f"peer address must be 'host:port', got {address!r}")
    return host.strip("[]"), int(port_text)


class _FramedProtocol(asyncio.Protocol):
    """One TCP connection carrying frames both ways, with coalesced writes."""

    def __init__(self, frame_bytes_max: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._frame_bytes_max = frame_bytes_max
        self._decoder = FrameDecoder(frame_bytes_max)
        self._transport: asyncio.Transport | None = None
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self._lost = False
        self.peer_name = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        if peername:
            self.peer_name = f"{peername[0]}:{peername[1]}"

    def data_received(self, data: bytes) -> None:
        try:
            envelopes = self._decoder.feed(data)
        except RemoteProtocolError as exc:
            logger.warning("rpc bad frame; closing peer=%s error=%r", self.peer_name, exc.message)
            self.abort()
            return
        for envelope in envelopes:
            if self._lost or not self._on_envelope(envelope):
                return

    def _on_envelope(self, envelope: Envelope) -> bool:
        """Handle one decoded envelope; False when the connection was closed for it."""
        raise NotImplementedError

    def _violation(self, reason: str) -> bool:
        logger.warning("rpc protocol violation; closing peer=%s error=%r", self.peer_name, reason)
        self.abort()
        return False

    def send(self, frame: bytes) -> None:
        self._outbox.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        transport = self._transport
        if transport is None or self._lost or transport.is_closing():
            self._outbox.clear()  # never written: connection_lost decides what that means
            return
        frames = self._outbox
        self._outbox = []
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        self._on_flushed()

    def _on_flushed(self) -> None:
        """Hook: every frame sent so far has been handed to the transport."""

    @property
    def is_lost(self) -> bool:
        return self._lost

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

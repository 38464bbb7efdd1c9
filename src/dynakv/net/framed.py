"""What both ends of an RPC connection share: the framed asyncio Protocol
(handshake phase, write coalescing, frame decoding, flow control), handler
types, rate-limited warnings, and the wire form of errors. See ``net.rpc`` for
the contract callers rely on.

Invariant: until the handshake is complete (``net.handshake``), bytes from the
peer go only to a ``HandshakeDecoder`` capped at ``handshake_frame_bytes_max``
and never reach ``_on_envelope``; after it, only to the ``FrameDecoder``.
"""

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
from dynakv.net.handshake import (
    HANDSHAKE_FRAME_BYTES_MIN,
    REASON_BAD_FRAME,
    REASON_CLOSED,
    REASON_TIMEOUT,
    REASON_UNEXPECTED,
    HandshakeDecoder,
    HandshakeMessage,
    HandshakeRefused,
    encode_handshake_frame,
)
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


class RateLimitedWarnings:
    """At most one WARNING per ``interval_s`` for each key; the lines held back
    are counted and reported as ``suppressed=N`` on the next line of that key.

    Keys come from a fixed set in the code (never from a peer), at most ``keys_max``.
    """

    __slots__ = ("_interval_s", "_keys_max", "_last_s", "_suppressed")

    def __init__(self, interval_s: float = 1.0, keys_max: int = 32) -> None:
        self._interval_s = interval_s
        self._keys_max = keys_max
        self._last_s: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, now_s: float, key: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``key`` logged within the interval; True if logged."""
        last_s = self._last_s.get(key)
        if last_s is not None and now_s - last_s < self._interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        assert key in self._last_s or len(self._last_s) < self._keys_max, key
        self._last_s[key] = now_s
        logger.warning(message + " suppressed=%d", *args, self._suppressed.pop(key, 0))
        return True


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) as ``(host, port)``."""
    host, separator, port_text = address.rpartition(":")
    if not separator or not host or not port_text.isdigit():
        raise ValueError(f"peer address must be 'host:port', got {address!r}")
    return host.strip("[]"), int(port_text)


class _FramedProtocol(asyncio.Protocol):
    """One TCP connection carrying frames both ways, with coalesced writes.

    It starts in the handshake phase: a subclass drives ``net.handshake`` from
    ``_on_handshake_message`` and learns the outcome from ``_on_handshake_failed``
    or its own return value; the whole phase must end within ``handshake_timeout_ms``.
    """

    def __init__(
        self, frame_bytes_max: int, handshake_frame_bytes_max: int, handshake_timeout_ms: int
    ) -> None:
        assert HANDSHAKE_FRAME_BYTES_MIN <= handshake_frame_bytes_max <= frame_bytes_max
        assert handshake_timeout_ms > 0
        self._loop = asyncio.get_running_loop()
        self._frame_bytes_max = frame_bytes_max
        self._handshake_frame_bytes_max = handshake_frame_bytes_max
        self._handshake_timeout_s = handshake_timeout_ms / 1000
        self._decoder = FrameDecoder(frame_bytes_max)
        self._handshake_decoder: HandshakeDecoder | None = HandshakeDecoder(
            handshake_frame_bytes_max
        )
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._handshake_error: HandshakeRefused | None = None
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
        self._handshake_timer = self._loop.call_later(
            self._handshake_timeout_s, self._on_handshake_timeout
        )

    @property
    def in_handshake(self) -> bool:
        return self._handshake_decoder is not None

    @property
    def buffered_bytes(self) -> int:
        """Bytes held of the peer's next, incomplete frame."""
        decoder = self._handshake_decoder
        return self._decoder.buffered_bytes if decoder is None else decoder.buffered_bytes

    def data_received(self, data: bytes) -> None:
        if self._handshake_decoder is not None:
            self._handshake_received(self._handshake_decoder, data)
            return
        try:
            envelopes = self._decoder.feed(data)
        except RemoteProtocolError as exc:
            logger.warning("rpc bad frame; closing peer=%s error=%r", self.peer_name, exc.message)
            self.abort()
            return
        if not self._after_feed(bool(envelopes)):
            return
        for envelope in envelopes:
            if self._lost or not self._on_envelope(envelope):
                return

    def _after_feed(self, frames_completed: bool) -> bool:
        """Hook after each chunk is decoded; False when the connection was closed."""
        return True

    def _on_envelope(self, envelope: Envelope) -> bool:
        """Handle one decoded envelope; False when the connection was closed for it."""
        raise NotImplementedError

    # -- the handshake phase ---------------------------------------------------

    def _handshake_received(self, decoder: HandshakeDecoder, data: bytes) -> None:
        if self._handshake_error is not None:  # failed; the connection is going away
            return
        try:
            messages = decoder.feed(data)
        except RemoteProtocolError as exc:
            self._handshake_failed(HandshakeRefused(REASON_BAD_FRAME, exc.message))
            return
        if not self._after_feed(bool(messages)):
            return
        for index, message in enumerate(messages):
            try:
                complete = self._on_handshake_message(message)
            except HandshakeRefused as exc:
                self._handshake_failed(exc)
                return
            if complete:
                if index + 1 < len(messages) or decoder.buffered_bytes:
                    early = "bytes after the final handshake frame, before its answer"
                    self._handshake_failed(HandshakeRefused(REASON_UNEXPECTED, early))
                    return
                self._end_handshake()
                self._on_handshake_complete()
                return

    def _on_handshake_message(self, message: HandshakeMessage) -> bool:
        """Answer one handshake message; True when it completed the handshake.
        Raises ``HandshakeRefused`` if the peer failed it."""
        raise NotImplementedError

    def _on_handshake_complete(self) -> None:
        """Hook: both sides are proven; from now on frames are envelopes."""

    def _on_handshake_failed(self, error: HandshakeRefused) -> None:
        """Hook: the handshake failed for ``error`` (the connection is being aborted)."""

    def send_handshake(self, message: HandshakeMessage) -> None:
        self.send(encode_handshake_frame(message, self._handshake_frame_bytes_max))

    def _end_handshake(self) -> None:
        self._handshake_decoder = None
        self._cancel_handshake_timer()

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def _handshake_failed(self, error: HandshakeRefused) -> None:
        """Fail the handshake once: tell the subclass, then abort the connection."""
        if self._handshake_decoder is None or self._handshake_error is not None:
            return
        self._handshake_error = error
        self._cancel_handshake_timer()
        self._on_handshake_failed(error)
        self.abort()

    def _on_handshake_timeout(self) -> None:
        self._handshake_timer = None
        detail = f"unfinished after {int(self._handshake_timeout_s * 1000)} ms"
        self._handshake_failed(HandshakeRefused(REASON_TIMEOUT, detail))

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel_handshake_timer()
        if self._handshake_decoder is not None and self._handshake_error is None:
            error = HandshakeRefused(REASON_CLOSED, "connection closed during the handshake")
            self._handshake_error = error
            self._on_handshake_failed(error)

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

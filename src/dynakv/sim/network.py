"""The simulated network: seeded delay, loss, duplication, partitions, crashes, pauses.

``SimNetwork`` carries every node-to-node message of one cluster. Each call is
really encoded with ``net.codec.encode_frame`` and decoded with a
``FrameDecoder`` on arrival, so the wire format is exercised. ``SimPeers`` is
one node's view, implementing ``node.coordinator.Peers`` with ``net.rpc``'s
error contract:

- ``PeerUnreachable`` (at once): the target is crashed; nothing was delivered.
- ``RpcTimeout`` (after ``timeout_ms``): lost, partitioned, paused, or the
  target crashed after delivery; it may or may not have been applied.
- ``RemoteError``: the target's handler failed (its ``ErrorReply``).

Faults: each message is delivered after an independent seeded delay (so
messages reorder), dropped with ``loss_p``, and idempotent replica messages
(``ReadRequest``/``WriteRequest``) are delivered twice with ``duplicate_p``
(the second reply finds its call resolved and is dropped). ``CoordinateWrite``
is never duplicated: TCP does not duplicate, and a repeated one would mint a
second write. A partition drops both ways, or one way only. A paused node's traffic, both
ways, is held (at most ``held_max`` messages) until it resumes.

Invariants: a call resolves exactly once; a reply is accepted only by the
incarnation (``epoch``) of the caller that sent the request, and sent only by
the incarnation that received it. Every delivery is recorded in the trace.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dynakv.errors import DynakvError, PeerUnreachable, RemoteError, RpcTimeout
from dynakv.net.codec import Envelope, FrameDecoder, encode_frame
from dynakv.net.framed import HandlerResult, error_reply
from dynakv.net.messages import (
    ErrorReply,
    Message,
    ReadRequest,
    WriteRequest,
)
from dynakv.sim.loop import VirtualLoop

FRAME_BYTES_MAX = 8 * 1024 * 1024
HELD_MAX = 10_000
T = TypeVar("T")

Handler = Callable[[Message, str], HandlerResult]
# A planted-bug hook: given (src, dst, message), a Message means "do not deliver;
# answer this instead"; None means deliver normally.
Filter = Callable[[str, str, Message], Message | None]


@dataclass
class Faults:
    delay_ms_min: float = 0.1
    delay_ms_max: float = 3.0
    loss_p: float = 0.0
    duplicate_p: float = 0.0


@dataclass
class _Node:
    handler: Handler
    epoch: int = 0
    crashed: bool = False
    paused: bool = False
    held: list[tuple[Callable[[], None], contextvars.Context]] = field(default_factory=list)
    calls_out: dict[int, asyncio.Future[Message]] = field(default_factory=dict)
    calls_in: dict[int, asyncio.Future[Message]] = field(default_factory=dict)
    tasks: dict[asyncio.Task[Any], None] = field(default_factory=dict)  # ordered: no id()


class SimNetwork:
    def __init__(self, loop: VirtualLoop, rng: random.Random) -> None:
        self.loop = loop
        self.rng = rng
        self.faults = Faults()
        self.blocked: set[tuple[str, str]] = set()
        self.drop_filter: Filter | None = None
        # Told of every call started (src, dst, message): observation only.
        self.observer: Callable[[str, str, Message], None] | None = None
        self._nodes: dict[str, _Node] = {}
        self._next_id = 0
        self.delivered = 0

    # -- topology and faults ---------------------------------------------------

    def attach(self, node_id: str, handler: Handler) -> None:
        """(Re)attach a node incarnation: a new epoch, nothing held, not crashed."""
        old = self._nodes.get(node_id)
        self._nodes[node_id] = _Node(handler, epoch=0 if old is None else old.epoch + 1)

    def crash(self, node_id: str) -> None:
        node = self._nodes[node_id]
        node.crashed = True
        node.paused = False
        node.held.clear()
        node.epoch += 1
        for task in list(node.tasks):
            task.cancel()
        for future in list(node.calls_out.values()):
            future.cancel()  # the caller's process is gone
        for future in list(node.calls_in.values()):
            if not future.done():  # the connection died after the request was written
                future.set_exception(RpcTimeout(peer=node_id, timeout_ms=0))

    def spawn(self, node_id: str, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` as work of ``node_id``'s current incarnation: a crash cancels it."""
        task = self.loop.create_task(coro)
        node = self._nodes[node_id]
        node.tasks[task] = None
        task.add_done_callback(lambda done: node.tasks.pop(done, None))
        return task

    def pause(self, node_id: str) -> None:
        self._nodes[node_id].paused = True

    def resume(self, node_id: str) -> None:
        node = self._nodes[node_id]
        node.paused = False
        held, node.held = node.held, []
        for deliver, context in held:
            self.loop.call_soon(deliver, context=context)

    def partition(self, side_a: list[str], side_b: list[str], *, one_way: bool = False) -> None:
        """Drop messages from side_a to side_b (and back, unless ``one_way``)."""
        for a in side_a:
            for b in side_b:
                self.blocked.add((a, b))
                if not one_way:
                    self.blocked.add((b, a))

    def heal(self) -> None:
        self.blocked.clear()

    def node_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._nodes))

    def is_crashed(self, node_id: str) -> bool:
        return self._nodes[node_id].crashed

    def is_paused(self, node_id: str) -> bool:
        return self._nodes[node_id].paused

    # -- calls -------------------------------------------------------------------

    def start_call(
        self, src: str, dst: str, message: Message, timeout_ms: int
    ) -> asyncio.Future[Message]:
        future: asyncio.Future[Message] = self.loop.create_future()
        if self.observer is not None:
            self.observer(src, dst, message)
        target = self._nodes[dst]
        if target.crashed:
            future.set_exception(PeerUnreachable(peer=dst, reason="simulated crash"))
            return future
        self._next_id += 1
        call_id = self._next_id
        frame = encode_frame(Envelope(call_id, False, message), FRAME_BYTES_MAX)
        caller = self._nodes[src]
        caller.calls_out[call_id] = future
        target.calls_in[call_id] = future
        timer = self.loop.call_later(timeout_ms / 1000, _time_out, future, dst, timeout_ms)
        epoch = caller.epoch

        def done(_: asyncio.Future[Message]) -> None:
            timer.cancel()
            caller.calls_out.pop(call_id, None)
            target.calls_in.pop(call_id, None)

        future.add_done_callback(done)
        copies = 1
        if (
            isinstance(message, ReadRequest | WriteRequest)
            and self.rng.random() < self.faults.duplicate_p
        ):
            copies = 2
        for _ in range(copies):
            self._send(src, dst, frame, lambda data: self._on_request(src, dst, epoch, data))
        return future

    def _send(self, src: str, dst: str, frame: bytes, on_arrival: Callable[[bytes], None]) -> None:
        """Carry ``frame`` from src to dst after a seeded delay, unless a fault drops it."""
        faults = self.faults
        if self.rng.random() < faults.loss_p:
            return
        delay_ms = self.rng.uniform(faults.delay_ms_min, faults.delay_ms_max)

        def arrive() -> None:
            if (src, dst) in self.blocked:
                return
            for end in (self._nodes[src], self._nodes[dst]):
                if end.paused:
                    if len(end.held) < HELD_MAX:
                        end.held.append((arrive, contextvars.copy_context()))
                    return
            on_arrival(frame)

        self.loop.call_later(delay_ms / 1000, arrive)

    def _on_request(self, src: str, dst: str, caller_epoch: int, frame: bytes) -> None:
        target = self._nodes[dst]
        if target.crashed or self._nodes[src].epoch != caller_epoch:
            return
        (envelope,) = FrameDecoder(FRAME_BYTES_MAX).feed(frame)
        message = envelope.body
        self.delivered += 1
        self.loop.trace.record(f"{self.loop.time():.9f} {src}>{dst} {type(message).__name__}")
        epoch = target.epoch

        def reply(body: Message) -> None:
            if self._nodes[dst].epoch != epoch:
                return  # answered by an incarnation that has since crashed
            out = encode_frame(Envelope(envelope.request_id, True, body), FRAME_BYTES_MAX)
            self._send(dst, src, out, lambda data: self._on_reply(src, dst, caller_epoch, data))

        fake = None if self.drop_filter is None else self.drop_filter(src, dst, message)
        if fake is not None:
            reply(fake)
            return
        self._dispatch(target, message, src, reply)

    def _dispatch(
        self, target: _Node, message: Message, src: str, reply: Callable[[Message], None]
    ) -> None:
        """Run the handler like ``net.server``: a Message, a Future or an awaitable."""
        try:
            result = target.handler(message, src)
        except DynakvError as exc:
            reply(error_reply(exc))
            return
        except Exception as exc:
            self.loop.callback_errors.append(f"handler failed: {exc!r}")
            reply(ErrorReply(code="InternalError", message=f"{type(exc).__name__}: {exc}"))
            return
        if isinstance(result, Message):
            reply(result)
            return
        if not isinstance(result, asyncio.Future):
            result = self.loop.create_task(_awaited(result))
            target.tasks[result] = None
            result.add_done_callback(lambda task: target.tasks.pop(task, None))
        result.add_done_callback(lambda future: _reply_from(future, reply))

    def _on_reply(self, src: str, dst: str, caller_epoch: int, frame: bytes) -> None:
        caller = self._nodes[src]
        if caller.crashed or caller.epoch != caller_epoch:
            return
        (envelope,) = FrameDecoder(FRAME_BYTES_MAX).feed(frame)
        future = caller.calls_out.get(envelope.request_id)
        if future is None or future.done():
            return  # timed out, or the duplicate's reply
        body = envelope.body
        self.loop.trace.record(f"{self.loop.time():.9f} {dst}>{src} {type(body).__name__}")
        if isinstance(body, ErrorReply):
            future.set_exception(
                RemoteError(
                    peer=dst,
                    remote_code=body.code,
                    message=body.message,
                    remote_facts=dict(body.facts),
                )
            )
        else:
            future.set_result(body)


async def _awaited(awaitable: object) -> Message:
    result = await awaitable  # type: ignore[misc]
    assert isinstance(result, Message), type(result)
    return result


def _reply_from(future: asyncio.Future[Message], reply: Callable[[Message], None]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is None:
        reply(future.result())
    elif isinstance(error, DynakvError):
        reply(error_reply(error))
    else:
        reply(ErrorReply(code="InternalError", message=f"{type(error).__name__}: {error}"))


def _time_out(future: asyncio.Future[Message], dst: str, timeout_ms: int) -> None:
    if not future.done():
        future.set_exception(RpcTimeout(peer=dst, timeout_ms=timeout_ms))


class SimPeers:
    """One node's ``Peers``: calls from ``node_id`` over the simulated network."""

    def __init__(self, network: SimNetwork, node_id: str) -> None:
        self.network = network
        self.node_id = node_id

    def start_call(
        self, node_id: str, message: Message, timeout_ms: int
    ) -> asyncio.Future[Message]:
        return self.network.start_call(self.node_id, node_id, message, timeout_ms)

    async def call(self, node_id: str, message: Message, timeout_ms: int) -> Message:
        return await self.start_call(node_id, message, timeout_ms)

    def node_ids(self) -> tuple[str, ...]:
        """Every node attached to the network (addresses need no learning here)."""
        return self.network.node_ids()

    def add(self, node_id: str, address: str) -> None:
        """Nothing to do: the simulated network reaches every attached node by id."""

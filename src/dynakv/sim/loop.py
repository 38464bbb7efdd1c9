"""A virtual-time asyncio event loop: idle time jumps to the next timer.

``VirtualLoop`` is a ``SelectorEventLoop`` whose selector never blocks: asked
to wait ``timeout`` seconds, it advances the virtual clock by exactly that and
returns no I/O events. ``loop.time()`` is virtual seconds from 0. No sockets
(the self-pipe is not created), no threads, no wall clock.

Invariants: virtual time never goes backwards; the loop runs at most
``iterations_max`` selector calls and never past ``time_s_max`` virtual
seconds (``SimLimitExceeded``); waiting with nothing scheduled is a deadlock
(``SimDeadlock``), not a hang. Callbacks run in FIFO order and timers in
(deadline, insertion) order, so one seed gives one execution.

``Trace`` folds every recorded event into an xxh64 hash: two runs of one
seed must give one hash.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

import xxhash

T = TypeVar("T")

ITERATIONS_MAX_DEFAULT = 5_000_000
TIME_S_MAX_DEFAULT = 600.0


class SimDeadlock(RuntimeError):
    """The loop would wait forever: nothing is ready and no timer is scheduled."""


class SimLimitExceeded(RuntimeError):
    """The simulation ran past its iteration or virtual-time bound."""


class Trace:
    """An order-sensitive hash of everything the simulation did."""

    __slots__ = ("_hash", "events")

    def __init__(self) -> None:
        self._hash = xxhash.xxh64()
        self.events = 0

    def record(self, line: str) -> None:
        self._hash.update(line.encode() + b"\n")
        self.events += 1

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class _VirtualSelector(selectors.BaseSelector):
    """Holds no file objects; ``select(timeout)`` moves virtual time instead of waiting."""

    def __init__(self) -> None:
        self.loop: VirtualLoop | None = None
        self._map: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        raise AssertionError(f"the simulator has no file descriptors (got {fileobj!r})")

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        raise KeyError(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        assert loop is not None
        loop.advance(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._map

    def close(self) -> None:
        self._map.clear()


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(
        self,
        *,
        iterations_max: int = ITERATIONS_MAX_DEFAULT,
        time_s_max: float = TIME_S_MAX_DEFAULT,
    ) -> None:
        selector = _VirtualSelector()
        self._now_s = 0.0
        self.iterations = 0
        self.iterations_max = iterations_max
        self.time_s_max = time_s_max
        self.trace = Trace()
        self.callback_errors: list[str] = []
        super().__init__(selector)
        selector.loop = self
        self._clock_resolution = 1e-9
        self.set_exception_handler(_record_error)

    def time(self) -> float:
        return self._now_s

    def advance(self, timeout: float | None) -> None:
        self.iterations += 1
        if self.iterations > self.iterations_max:
            raise SimLimitExceeded(f"more than {self.iterations_max} loop iterations")
        if timeout is None:
            raise SimDeadlock(f"nothing to run and no timer at t={self._now_s:.6f}s")
        if timeout > 0:
            self._now_s += timeout
            if self._now_s > self.time_s_max:
                raise SimLimitExceeded(f"virtual time passed {self.time_s_max} s")

    # No self-pipe: nothing here is ever woken from another thread.
    def _make_self_pipe(self) -> None:
        pass

    def _close_self_pipe(self) -> None:
        pass

    def _write_to_self(self) -> None:
        pass


def _record_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    assert isinstance(loop, VirtualLoop)
    exc = context.get("exception")
    loop.callback_errors.append(f"{context.get('message')}: {exc!r}")


def run_simulation(
    coro_factory: Callable[[VirtualLoop], Coroutine[Any, Any, T]],
    *,
    iterations_max: int = ITERATIONS_MAX_DEFAULT,
    time_s_max: float = TIME_S_MAX_DEFAULT,
) -> tuple[T, VirtualLoop]:
    """Run ``coro_factory(loop)`` to completion on a fresh virtual loop, then close it
    (cancelling whatever is still pending). Returns the result and the closed loop."""
    loop = VirtualLoop(iterations_max=iterations_max, time_s_max=time_s_max)
    try:
        result = loop.run_until_complete(coro_factory(loop))
    finally:
        _cancel_all(loop)
        loop.close()
    return result, loop


def _cancel_all(loop: VirtualLoop) -> None:
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

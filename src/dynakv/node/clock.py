"""The one place the node reads wall-clock time.

``Clock`` is a Protocol so the simulator can pass virtual time; the core never
reads a clock itself (time arrives as ``now_ms``).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch (wall time; used for TTL and the HLC)."""
        ...

    def monotonic_ms(self) -> float:
        """A clock that never goes backwards (for deadlines and latencies)."""
        ...


class SystemClock:
    """The machine's clocks; ``skew_ms`` shifts the wall clock (fault tests only:
    a node whose clock runs ahead of the others')."""

    def __init__(self, skew_ms: int = 0) -> None:
        self._skew_ms = skew_ms

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self._skew_ms

    def monotonic_ms(self) -> float:
        return time.monotonic() * 1000.0

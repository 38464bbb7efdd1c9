"""What the replica keeps about bad input it refused: peers that sent numbers out
of bounds, and records on its own disk that break the rules (quarantined).

Both are bounded reports for ``/v1/status`` and rate-limited log lines; neither
decides anything. The checks themselves are pure (``core.record``:
``record_problem``, ``record_bounds_problem``, ``context_bounds_problem``); the
replica calls them where input enters and tells these ledgers what it refused.

Invariants: at most ``entries_max`` peers and ``entries_max`` quarantined keys
are remembered (later ones are counted, not stored); a peer is logged at most
once per ``log_interval_ms``, a quarantined key once. Never: log a value's
bytes, or hold more than the bounds say.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger("dynakv.node.replica")

ENTRIES_MAX: Final = 256
LOG_INTERVAL_MS: Final = 10_000


@dataclass(slots=True)
class _Offense:
    refused: int
    last_reason: str
    last_at_ms: int
    logged_at_ms: int


class PeerOffenses:
    """Peers whose messages were refused, with how often and the latest reason."""

    def __init__(
        self, *, entries_max: int = ENTRIES_MAX, log_interval_ms: int = LOG_INTERVAL_MS
    ) -> None:
        assert entries_max > 0 and log_interval_ms >= 0
        self._entries_max = entries_max
        self._log_interval_ms = log_interval_ms
        self._by_peer: dict[str, _Offense] = {}
        self.refused_total = 0

    def note(self, peer: str, reason: str, now_ms: int) -> None:
        self.refused_total += 1
        offense = self._by_peer.get(peer)
        if offense is None:
            if len(self._by_peer) >= self._entries_max:
                return  # counted in refused_total; the table is full
            offense = self._by_peer[peer] = _Offense(0, reason, now_ms, -self._log_interval_ms)
        offense.refused += 1
        offense.last_reason = reason
        offense.last_at_ms = now_ms
        if now_ms - offense.logged_at_ms >= self._log_interval_ms:
            offense.logged_at_ms = now_ms
            log.warning(
                "refused a message from peer=%s refused_total=%d reason=%r",
                peer,
                offense.refused,
                reason,
            )

    def status(self) -> dict[str, Any]:
        return {
            "refused_total": self.refused_total,
            "peers": {
                peer: {
                    "refused": offense.refused,
                    "last_reason": offense.last_reason,
                    "last_at_ms": offense.last_at_ms,
                }
                for peer, offense in sorted(self._by_peer.items())
            },
        }


class Quarantine:
    """Stored records that break the rules: skipped on read (treated as absent,
    so a write or a repair replaces them), logged once, reported."""

    def __init__(self, *, entries_max: int = ENTRIES_MAX) -> None:
        assert entries_max > 0
        self._entries_max = entries_max
        self._reasons: dict[tuple[int, bytes], str] = {}
        self.quarantined_total = 0

    def add(self, partition: int, key: bytes, reason: str) -> None:
        address = (partition, key)
        if address in self._reasons:
            return
        self.quarantined_total += 1
        if len(self._reasons) >= self._entries_max:  # counted; logged when there is room
            return
        self._reasons[address] = reason
        log.error(
            "quarantined a stored record partition=%d key_hex=%s reason=%r",
            partition,
            key[:64].hex(),
            reason,
        )

    def release(self, partition: int, key: bytes) -> None:
        """The key was written again: its stored record is valid now."""
        self._reasons.pop((partition, key), None)

    def status(self) -> dict[str, Any]:
        return {
            "quarantined_total": self.quarantined_total,
            "records": [
                {"partition": partition, "key_hex": key[:64].hex(), "reason": reason}
                for (partition, key), reason in sorted(self._reasons.items())
            ],
        }

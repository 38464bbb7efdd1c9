"""The node's file descriptors: raise the limit at start-up, then fit the connection caps to it.

Every connection, HTTP or RPC, holds a descriptor, and so do RocksDB's files.
A node that runs out cannot accept (the kernel says EMFILE) and, worse,
cannot open a table file. So at start-up ``raise_open_file_limit`` lifts the
soft ``RLIMIT_NOFILE`` to the hard limit (an unprivileged process may), and
``fit_connection_caps`` lowers ``http_connections_max`` and
``rpc_connections_max`` until the connections alone can never take the
descriptors the rest of the node needs. A client past the cap then gets a 503
and the node logs it (``api/http.py``), instead of a reset.

The arithmetic, for ``L`` open files (the soft limit after raising)::

    storage reserve   S = min(STORAGE_FILES_RESERVE_MAX, L // 2)   RocksDB's files
    slack             K = min(OTHER_FILES_SLACK_MAX, L // 4)       everything else
    connections       C = L - S - K                                (C >= L // 4)
    http + rpc <= C, each >= 1, each <= its configured value, C split in
    proportion to the configured values when they do not both fit.

    L = 1_048_576 (a usual hard limit): S = 1024, K = 256, C = 1_047_296:
        the defaults (4096 http + 1024 rpc) fit and are kept.
    L = 4096: S = 1024, K = 256, C = 2816: http 2253, rpc 563.
    L = 1024 (a soft limit that could not be raised): S = 512, K = 256,
        C = 256: http 205, rpc 51.

``S`` is what RocksDB may hold: the node must open it with ``max_open_files``
(table files) plus its own fixed files (WAL, MANIFEST, LOCK, info LOG,
CURRENT, directories) within ``storage_files_reserve(L)``. ``K`` covers the
rest of the process: standard streams, the event loop's epoll and wake-up
descriptors, the listening sockets and the HTTP server's spare descriptor,
outgoing RPC connections to peers (one per peer), log files, DNS lookups and
imports. Below ``OPEN_FILES_MIN`` descriptors no budget holds; the caps go
to 1 each.

This module only reads and sets the process's limit and does arithmetic;
it never fails a start: a limit it may not raise is logged and kept.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
from typing import Final

from dynakv.config import Limits

log = logging.getLogger(__name__)

# RocksDB's reserve: at most this many descriptors, and never more than half the limit.
STORAGE_FILES_RESERVE_MAX: Final = 1024
# Everything that is neither a connection nor RocksDB: at most this many, and
# never more than a quarter of the limit.
OTHER_FILES_SLACK_MAX: Final = 256
# Below this many open files no budget holds (Python alone needs about a dozen).
OPEN_FILES_MIN: Final = 8
# When the hard limit is "unlimited" we aim for these, in order (Linux refuses
# more than fs.nr_open, 1_048_576 by default; macOS more than OPEN_MAX, 10_240).
_UNLIMITED_TARGETS: Final = (1_048_576, 10_240)


def storage_files_reserve(open_files: int) -> int:
    """Descriptors kept for RocksDB when the process may hold ``open_files``."""
    return min(STORAGE_FILES_RESERVE_MAX, open_files // 2)


def other_files_slack(open_files: int) -> int:
    """Descriptors kept for everything that is neither a connection nor RocksDB."""
    return min(OTHER_FILES_SLACK_MAX, open_files // 4)


def connection_files_budget(open_files: int) -> int:
    """Descriptors the HTTP and RPC connections may hold together."""
    return open_files - storage_files_reserve(open_files) - other_files_slack(open_files)


def fit_connection_caps(limits: Limits, open_files: int) -> Limits:
    """``limits`` with the HTTP and RPC connection caps lowered to fit ``open_files``.

    The caps are never raised; when both fit they are returned unchanged.
    """
    http_max = limits.http_connections_max
    rpc_max = limits.rpc_connections_max
    assert http_max >= 1 and rpc_max >= 1
    budget = connection_files_budget(open_files)
    if http_max + rpc_max <= budget:
        return limits
    if budget < 2:  # below OPEN_FILES_MIN: nothing fits, keep one of each
        http, rpc = 1, 1
    else:
        rpc = max(1, budget * rpc_max // (http_max + rpc_max))
        http = max(1, min(http_max, budget - rpc))
        rpc = min(rpc_max, budget - http)
    assert 1 <= http <= http_max and 1 <= rpc <= rpc_max
    assert http + rpc <= budget or budget < 2
    return dataclasses.replace(limits, http_connections_max=http, rpc_connections_max=rpc)


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard limit; (before, after) soft limits.

    Never raises: when the limit may not be raised, it is logged and kept.
    "Unlimited" is reported as ``_UNLIMITED_TARGETS[0]``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = _finite(soft)
    if soft == resource.RLIM_INFINITY or (hard != resource.RLIM_INFINITY and soft >= hard):
        return before, before
    targets = (hard,) if hard != resource.RLIM_INFINITY else _UNLIMITED_TARGETS
    refusal: Exception | None = None
    for target in targets:
        if target <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            refusal = exc
            continue
        after = _finite(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        log.info("open-file limit raised before=%d after=%d hard=%s", before, after, hard)
        return before, after
    log.warning(
        "open-file limit not raised: kept soft=%d hard=%s (%s); connection caps shrink to fit",
        before,
        hard,
        refusal,
    )
    return before, before


def _finite(limit: int) -> int:
    return _UNLIMITED_TARGETS[0] if limit == resource.RLIM_INFINITY else limit

"""The simulator's window on the writes a replica mints: the op a write belongs to
(``current_op``) and ``ObservedReplica``, the real replica reporting each mint.

Owns only observation: ``ObservedReplica`` changes nothing the replica does.
A retry of a write already minted (``NewWrite.applied`` False) mints nothing,
so it is not reported to ``on_mint``; ``on_local_write`` hears every write a
client's op asked this replica to mint, replayed or not, with the record the
replica held before it (what an idempotent retry must be judged against).
Must never: alter a write, or report one twice.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

from dynakv.core.record import Context, Record
from dynakv.node.replica import LocalReplica, NewWrite
from dynakv.sim.disk import SimStorage

# The client operation on whose behalf code runs (0: none). Set by the workload
# around a write; asyncio copies it into every callback and task that write causes.
current_op: contextvars.ContextVar[int] = contextvars.ContextVar("sim_op", default=0)
# (op id, key, the write, the minting replica's storage)
MintObserver = Callable[[int, bytes, NewWrite, SimStorage], None]
# (op id, node id, key, the replica's record before the write, the write's result)
LocalWriteObserver = Callable[[int, str, bytes, Record | None, NewWrite], None]


class ObservedReplica(LocalReplica):
    """The real replica, reporting each write it mints (observation only)."""

    on_mint: MintObserver | None = None
    on_local_write: LocalWriteObserver | None = None

    def write_new(
        self,
        partition: int,
        key: bytes,
        *,
        value: bytes | None,
        context: Context,
        ttl_s: int,
        **options: Any,  # whatever else the replica takes, passed through untouched
    ) -> NewWrite:
        op = current_op.get()
        before = None
        if op and self.on_local_write is not None:
            before = self.storage.get(partition, key)
        new = super().write_new(
            partition, key, value=value, context=context, ttl_s=ttl_s, **options
        )
        if op and new.applied and self.on_mint is not None:
            assert isinstance(self.storage, SimStorage)
            self.on_mint(op, key, new, self.storage)
        if op and self.on_local_write is not None:
            self.on_local_write(op, self.node_id, key, before, new)
        return new

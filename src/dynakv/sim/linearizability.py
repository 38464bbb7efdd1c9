"""Is a history of single-key operations linearizable? The Wing-Gong-Lowe search.

Owns the history model (``Operation``), the register semantics of dynakv's
single-key operations, and the search that decides whether each key's
history has a linearization: a total order, consistent with real time (an
operation that returned before another was invoked comes first), in which
every operation behaves as on one sequential register. Keys are independent
registers, so ``check_history`` checks each key on its own.

The search is Lowe's version of Wing and Gong's, as in Porcupine: a linked
list of call and return events in time order; take the first call whose
operation can go next (``lift`` it and its return out of the list), or, on
reaching a return whose call was never taken, undo the last choice
(``unlift``) and try the next. Configurations (operations placed, register
state) that already failed are not explored again.

The register's state is the write that produced the current version (or
absent), plus what was learned about the etags of writes whose etag the
client never got (a read can reveal one; a 412 can rule one out).

Mapping from HTTP (one ``Operation`` per request; ``x`` the if_version sent,
which goes in ``expected_etag``)::

    request            response               kind / status                 fields
    GET                200 + ETag e           GET OK                        value, etag=e
    GET                404                    GET OK                        value=None
    GET                failed or timed out    (drop: a failed read says nothing)
    PUT v              2xx + ETag e           PUT OK                        value=v, etag=e
    DELETE             2xx                    DELETE OK
    PUT v if_version   2xx + ETag e           CAS_PUT OK                    value=v, x, etag=e
    PUT v if_version   412 + ETag c           CAS_PUT PRECONDITION_FAILED   x, etag=c
    DELETE if_version  2xx / 412 + ETag c     CAS_DELETE OK / PRECOND..     x, (etag=c)
    PUT v if_absent    2xx + e / 412 + c      CREATE OK / PRECOND..         value=v, etag=e / c
    any write          504, connection lost   <its kind> UNKNOWN            return_ns=None
    any write          503 (failed for sure)  (drop: it never took effect)

An etag names one write (a put, conditional put or create); deletes have
none, and ``if_version`` never matches an absent key. ``etag=None`` means "not
reported" and is not checked; a 412 then only says the precondition was false.
A 412 that says the key is absent carries ``etag=ABSENT_ETAG`` (if the server
always sends the current ETag when there is one, map "412 without ETag" to
it: an unreported 412 could be explained by any unknown write, which costs
search). An absent read's etag is ignored. An ``UNKNOWN`` ``GET`` is dropped.

An ``UNKNOWN`` write may take effect at any moment after its invocation, or
never: its return is at +infinity and the search may finish without it. Such
writes stay out of the event list; they are tried only where the definite
operations are stuck, and only if they begin a chain of operations that
could observe them ending in a definite one that may go next (a write
overwritten before anything observed it is moot). A configuration that
failed with some unknown writes unused also fails with more of them used.
Unknown writes that nothing left could tell apart are used in order. These
cuts keep the search exact (a property test checks it against brute force)
and make histories with many unknown writes tractable.

Invariants: the verdict depends only on the operations, never on their input
order (they are sorted by time, then by their fields). Must never: do I/O,
read a clock, choose randomly, or run past ``steps_max`` steps.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

STEPS_MAX_DEFAULT: Final = 2_000_000
PREFIX_SHOWN_MAX: Final = 12
STUCK_SHOWN_MAX: Final = 12
AWAITED_MEMO_MAX: Final = 4096


class Kind(StrEnum):
    GET = "get"
    PUT = "put"
    DELETE = "delete"
    CAS_PUT = "cas_put"
    CAS_DELETE = "cas_delete"
    CREATE = "create"


class Status(StrEnum):
    OK = "ok"
    PRECONDITION_FAILED = "precondition_failed"
    UNKNOWN = "unknown"


_PUTS: Final = frozenset({Kind.PUT, Kind.CAS_PUT, Kind.CREATE})
_BLIND: Final = frozenset({Kind.PUT, Kind.DELETE})
_CONDITIONAL: Final = frozenset({Kind.CAS_PUT, Kind.CAS_DELETE, Kind.CREATE})


@dataclass(frozen=True, slots=True)
class Operation:
    """One client request on one key, as the client saw it (see the module's table)."""

    client: str
    key: bytes
    kind: Kind
    invoke_ns: int
    return_ns: int | None  # None (or ignored): status UNKNOWN, it may land at any later time
    status: Status = Status.OK
    value: bytes | None = None  # put/cas_put/create: written; get: read (None = absent)
    expected_etag: str | None = None  # cas_put/cas_delete: the if_version
    etag: str | None = None  # writes: the new version; get: seen; 412: the current one

    def __post_init__(self) -> None:
        if self.status is not Status.UNKNOWN:
            assert self.return_ns is not None and self.return_ns >= self.invoke_ns, self
        if self.status is Status.PRECONDITION_FAILED:
            assert self.kind in _CONDITIONAL, self
        else:
            assert self.etag != ABSENT_ETAG, self
        if self.kind in (Kind.CAS_PUT, Kind.CAS_DELETE):
            assert self.expected_etag is not None, self
        if _makes_version(self):
            assert self.value is not None, self

    def describe(self) -> str:
        """One line for a human: who, what, what came back, and when."""
        call = self.kind.value
        if _makes_version(self):
            call += f"({self.value!r})"
        if self.expected_etag is not None:
            call += f" if_version={self.expected_etag}"
        if self.kind is Kind.GET:
            result = "absent" if self.value is None else repr(self.value)
        else:
            result = self.status.value
        if self.etag is not None:
            result += f" etag={self.etag}"
        end = "inf" if self.status is Status.UNKNOWN else str(self.return_ns)
        return f"{self.client}: {call} -> {result} [{self.invoke_ns}, {end}]"


ABSENT_ETAG: Final = "(absent)"  # a 412's etag when the server said there is no version


class Verdict(StrEnum):
    OK = "ok"
    VIOLATION = "violation"
    BUDGET_EXCEEDED = "budget_exceeded"


@dataclass(frozen=True, slots=True)
class Stuck:
    """An operation that could not go next after the longest prefix, and why."""

    operation: Operation
    reason: str


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """The verdict for one key; on a violation, the longest linearizable prefix found."""

    key: bytes
    verdict: Verdict
    operations: int
    steps: int
    prefix: tuple[Operation, ...] = ()  # in linearization order
    state: str = ""  # the register after the prefix
    stuck: tuple[Stuck, ...] = ()

    def explain(self) -> str:
        head = f"key {self.key!r}: {self.verdict.value} ({self.operations} ops, {self.steps} steps)"
        if self.verdict is not Verdict.VIOLATION:
            return head
        lines = [head, f"  longest linearizable prefix: {len(self.prefix)} ops"]
        if len(self.prefix) > PREFIX_SHOWN_MAX:
            lines.append(f"    ... {len(self.prefix) - PREFIX_SHOWN_MAX} earlier ops")
        lines += [f"    {op.describe()}" for op in self.prefix[-PREFIX_SHOWN_MAX:]]
        lines.append(f"  register after it: {self.state}")
        lines.append("  could not go next:")
        lines += [f"    {s.operation.describe()}: {s.reason}" for s in self.stuck]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Report:
    """Every key's verdict, sorted by key."""

    keys: tuple[KeyCheck, ...]

    @property
    def verdict(self) -> Verdict:
        verdicts = {check.verdict for check in self.keys}
        for worst in (Verdict.VIOLATION, Verdict.BUDGET_EXCEEDED):
            if worst in verdicts:
                return worst
        return Verdict.OK

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    def violations(self) -> tuple[KeyCheck, ...]:
        return tuple(check for check in self.keys if check.verdict is Verdict.VIOLATION)

    def explain(self) -> str:
        shown = [check.explain() for check in self.keys if check.verdict is not Verdict.OK]
        steps = sum(check.steps for check in self.keys)
        summary = f"{self.verdict.value}: {len(self.keys)} keys, {steps} steps"
        return "\n".join([summary, *shown])


def check_history(operations: Iterable[Operation], steps_max: int = STEPS_MAX_DEFAULT) -> Report:
    """Check every key's operations on their own; ``steps_max`` bounds each key's search."""
    by_key: defaultdict[bytes, list[Operation]] = defaultdict(list)
    for operation in operations:
        by_key[operation.key].append(operation)
    return Report(tuple(check_key(by_key[key], steps_max) for key in sorted(by_key)))


def check_key(operations: Sequence[Operation], steps_max: int = STEPS_MAX_DEFAULT) -> KeyCheck:
    """Is this one key's history linearizable? Search at most ``steps_max`` steps."""
    assert steps_max > 0
    ops = sorted(
        (op for op in operations if not (op.kind is Kind.GET and op.status is Status.UNKNOWN)),
        key=_order,
    )
    key = ops[0].key if ops else b""
    assert all(op.key == key for op in ops), "check_key takes one key's operations"
    owners: dict[str, Operation] = {}
    for op in ops:
        if _makes_version(op) and op.etag is not None:
            first = owners.setdefault(op.etag, op)
            if first is not op:
                reason = f"etag {op.etag} was returned by two writes"
                stuck = (Stuck(first, reason), Stuck(op, reason))
                return KeyCheck(key, Verdict.VIOLATION, len(ops), 0, state="-", stuck=stuck)
    register = _Register(_without_unobservable(ops, set(owners)), set(owners))
    return _Search(register, steps_max).run(key)


def _makes_version(op: Operation) -> bool:
    """A put, conditional put or create that took (or may take) effect: it has an etag."""
    return op.kind in _PUTS and op.status is not Status.PRECONDITION_FAILED


def _without_unobservable(ops: list[Operation], known: set[str]) -> list[Operation]:
    """Drop unknown writes that no chain of observers links to a definite operation.

    Leaving an unknown write out is always allowed, and in a linearization
    nothing may follow one but an operation that observes it (a blind write
    there makes it moot), so only a write that begins a chain of observers
    ending in a definite operation is ever needed. Dropping the others spares
    the search from trying them at every step.
    """
    observed: defaultdict[int, list[int]] = defaultdict(list)  # op -> writes it may observe
    for write, seen_by in _observers(ops, known).items():
        for observer in seen_by:
            observed[observer].append(write)
    useful: set[int] = set()
    pending = [i for i, op in enumerate(ops) if op.status is not Status.UNKNOWN]
    while pending:
        for write in observed[pending.pop()]:
            if write not in useful:
                useful.add(write)
                pending.append(write)
    return [op for i, op in enumerate(ops) if op.status is not Status.UNKNOWN or i in useful]


def _observers(ops: Sequence[Operation], known: set[str]) -> dict[int, list[int]]:
    """For each unknown write, the operations that could succeed right after it."""
    seen_with: dict[str, set[bytes | None]] = {}  # etag -> the values reads saw it with
    for op in ops:
        if op.kind is Kind.GET and op.value is not None and op.etag is not None:
            seen_with.setdefault(op.etag, set()).add(op.value)

    def may_name(etag: str | None, write: Operation) -> bool:
        if etag is None or write.etag is not None or etag in known:
            return etag == write.etag
        return etag not in seen_with or write.value in seen_with[etag]

    return {
        i: [
            j
            for j, other in enumerate(ops)
            if j != i and _end(other) >= write.invoke_ns and _could_observe(other, write, may_name)
        ]
        for i, write in enumerate(ops)
        if write.status is Status.UNKNOWN
    }


def _could_observe(
    observer: Operation, write: Operation, may_name: Callable[[str | None, Operation], bool]
) -> bool:
    """Could ``observer`` succeed right after ``write`` (over-approximated)? Blind
    writes succeed anywhere, but one right after a write makes that write moot."""
    present = _makes_version(write)
    if observer.kind is Kind.GET:
        if not present or observer.value is None:
            return observer.value is None and not present
        return observer.value == write.value and (
            observer.etag is None or may_name(observer.etag, write)
        )
    if observer.kind not in _CONDITIONAL:
        return False
    failed = observer.status is Status.PRECONDITION_FAILED
    if not present:  # absent: a create succeeds, a cas fails reporting no version
        if observer.kind is Kind.CREATE:
            return not failed
        return failed and observer.etag in (None, ABSENT_ETAG)
    if observer.kind is Kind.CREATE and not failed:
        return False
    if failed:  # it reported the current etag, or did not
        return observer.etag is None or (
            observer.etag != ABSENT_ETAG and may_name(observer.etag, write)
        )
    return may_name(observer.expected_etag, write)


def _end(op: Operation) -> float:
    """When the operation returned; +infinity when its outcome is unknown."""
    return math.inf if op.status is Status.UNKNOWN or op.return_ns is None else op.return_ns


def _order(op: Operation) -> tuple[int, float, str, str, bytes, str, str]:
    fields = (op.value or b"", op.expected_etag or "", op.etag or "")
    return (op.invoke_ns, _end(op), op.client, op.kind.value, *fields)


ABSENT: Final = -1
DROPPED: Final = -2  # a write left out as unobservable: never current
# What was learned about the etags of writes whose etag the client never got:
# (write, etag, True) it is that etag; (write, etag, False) it is not.
Binds = tuple[tuple[int, str, bool], ...]
State = tuple[int, Binds, bool]  # (current write or ABSENT, binds, made by an unobserved unknown)
Chain = tuple[int, "Chain"] | None  # the linearized prefix as a persistent list, newest first


def _moved(current: int, binds: Binds, unknown: bool) -> State:
    """The state once ``current`` is written: what a replaced version's etag is not, no
    longer matters (it is never current again); what it is, still does."""
    if binds:
        binds = tuple(bind for bind in binds if bind[2] or bind[0] == current)
    return (current, binds, unknown)


class _Register:
    """The sequential specification of one key: which operation may go next, and to what state."""

    def __init__(self, ops: Sequence[Operation], etags: set[str]) -> None:
        """``etags``: every etag a write got back, also of writes dropped as unobservable."""
        self.ops = ops
        self.known = dict.fromkeys(etags, DROPPED)  # etag -> the write it names
        for index, op in enumerate(ops):
            if _makes_version(op) and op.etag is not None:
                self.known[op.etag] = index
        self.written = {op.value for op in ops if op.kind in _PUTS and op.value is not None}
        # The etags each operation names that no client got from a write.
        self.mentions = [
            {
                e
                for e in (op.etag, op.expected_etag)
                if e is not None and e != ABSENT_ETAG and e not in self.known
            }
            for op in ops
        ]

    def _match(self, etag: str, current: int, binds: Binds) -> Binds | None:
        """``binds`` (maybe grown) if ``etag`` can name the current version, else None."""
        if current == ABSENT:
            return None
        owner = self.known.get(etag)
        if owner is not None or self.ops[current].etag is not None:
            return binds if owner == current else None
        for write, bound, is_name in binds:
            if (write == current or is_name) and bound == etag:
                return binds if (write, is_name) == (current, True) else None
            if write == current and is_name:
                return None  # it has another etag
        return tuple(sorted((*binds, (current, etag, True))))

    def _differs(self, etag: str, current: int, binds: Binds) -> Binds | None:
        """``binds`` (maybe grown) if the current version's etag can differ from ``etag``."""
        if current == ABSENT or etag in self.known or self.ops[current].etag is not None:
            return binds if current == ABSENT or self.known.get(etag) != current else None
        for write, bound, is_name in binds:
            if write == current and bound == etag:
                return None if is_name else binds
            if is_name and (write == current or bound == etag):
                return binds  # it has another etag, or that etag is another write's
        return tuple(sorted((*binds, (current, etag, False))))

    def step(self, index: int, state: State) -> State | None:
        """The state after operation ``index`` at ``state``, or None if it cannot go there."""
        op = self.ops[index]
        current, binds, _ = state
        unknown = op.status is Status.UNKNOWN
        if op.kind in _BLIND:
            if state[2]:
                return None  # it would overwrite an unobserved unknown write: try without it
            return _moved(index if op.kind is Kind.PUT else ABSENT, binds, unknown)
        if op.kind is Kind.GET:
            if op.value is None:
                return (current, binds, False) if current == ABSENT else None
            if current == ABSENT or self.ops[current].value != op.value:
                return None
            matched = binds if op.etag is None else self._match(op.etag, current, binds)
            return None if matched is None else (current, matched, False)
        if op.status is Status.PRECONDITION_FAILED:
            if op.etag == ABSENT_ETAG:
                if current != ABSENT:
                    return None
            elif op.etag is not None:  # the current version it reported
                matched = self._match(op.etag, current, binds)
                if matched is None:
                    return None
                binds = matched
            if op.kind is Kind.CREATE:
                return None if current == ABSENT else (current, binds, False)
            assert op.expected_etag is not None
            differs = self._differs(op.expected_etag, current, binds)
            return None if differs is None else (current, differs, False)
        if op.kind is Kind.CREATE:
            if current != ABSENT:
                return None
        else:
            assert op.expected_etag is not None
            matched = self._match(op.expected_etag, current, binds)
            if matched is None:
                return None
            binds = matched
        return _moved(ABSENT if op.kind is Kind.CAS_DELETE else index, binds, unknown)

    def why_not(self, index: int, state: State) -> str:
        """A human's reason why operation ``index`` cannot go next at ``state``."""
        op = self.ops[index]
        if self.step(index, state) is not None:
            return "every order that places it here fails later"
        if op.kind is Kind.GET and op.value is not None and op.value not in self.written:
            return "it read a value that no write of this key wrote"
        if op.kind in _BLIND:
            return "it would overwrite an unknown write nothing observed (tried without it)"
        return f"the register holds {self.describe(state)}"

    def describe(self, state: State) -> str:
        current, binds, _ = state
        if current == ABSENT:
            return "absent"
        op = self.ops[current]
        names = [bound for write, bound, is_name in binds if write == current and is_name]
        etag = op.etag or (names[0] if names else "?")
        return f"{op.value!r} etag={etag} (from {op.client}'s {op.kind.value})"


class _Search:
    """One key's WGL search: definite operations in a linked list of call and return
    events; unknown ones (returning at +infinity) beside it, in invocation order."""

    def __init__(self, register: _Register, steps_max: int) -> None:
        self.register = register
        self.steps_max = steps_max
        ops = register.ops
        definite = [i for i, op in enumerate(ops) if op.status is not Status.UNKNOWN]
        self.unknown = [i for i, op in enumerate(ops) if op.status is Status.UNKNOWN]
        events = sorted(
            [(ops[i].invoke_ns, 0, i) for i in definite] + [(_end(ops[i]), 1, i) for i in definite]
        )  # at equal times calls come first: touching intervals count as concurrent
        # Nodes: 0 is the head, 1..2n the events in time order, 2n+1 the tail.
        self.tail = len(events) + 1
        self.next = [*range(1, self.tail + 1), self.tail]
        self.prev = [0, *range(self.tail)]
        self.op_of = [-1] * (self.tail + 1)
        self.match = [-1] * (self.tail + 1)  # a call's return node; -1 for returns
        self.invoke = [op.invoke_ns for op in ops]
        # For each operation, the unknown writes (by position) it could observe.
        self.observed: list[list[int]] = [[] for _ in ops]
        position = {index: k for k, index in enumerate(self.unknown)}
        for index, seen_by in _observers(ops, set(register.known)).items():
            for observer in seen_by:
                self.observed[observer].append(position[index])
        # Unknown writes of one kind and precondition, their etag unseen, are twins
        # once nothing still to place could tell them apart (a read of a put's value):
        # then the earliest unused one stands in for the others.
        classes: dict[tuple[Kind, str | None], int] = {}
        self.twin_class = [
            -1
            if ops[i].etag is not None
            else classes.setdefault((ops[i].kind, ops[i].expected_etag), len(classes))
            for i in self.unknown
        ]
        self.telling: list[list[int]] = [[] for _ in ops]  # op -> the unknown writes it tells apart
        for k, index in enumerate(self.unknown):
            write = ops[index]
            if _makes_version(write):
                for j, op in enumerate(ops):
                    if op.kind is Kind.GET and op.value == write.value and j != index:
                        self.telling[j].append(k)
        self.telling_left = [0] * len(self.unknown)
        for telling in self.telling:
            for k in telling:
                self.telling_left[k] += 1
        self.left: dict[str, int] = {}  # etag -> operations still to place that name it
        for named in register.mentions:
            for etag in named:
                self.left[etag] = self.left.get(etag, 0) + 1
        self.awaited_memo: dict[tuple[int, int, int], list[int]] = {}
        self.observers_left = [0] * len(self.unknown)  # per unknown write, still to place
        for observed in self.observed:
            for k in observed:
                self.observers_left[k] += 1
        self.dead = 0  # unknown writes (by position) nothing still to place could observe
        # (done, state) -> the sets of unknown writes (applied or dead) with which it
        # failed. A superset fails too: the others were optional, skipping them allowed.
        self.failed: dict[tuple[int, State], list[int]] = {}
        # The search: what is placed (definite by index, unknown by position), the
        # register, the first return still pending, and how to undo each placement.
        self.done = self.applied = 0
        self.state: State = (ABSENT, (), False)
        self.blocked = 0
        self.stack: list[tuple[int, State, int]] = []  # (call node, or -1 - position)
        self.chain: Chain = None
        call_node: dict[int, int] = {}
        for node, (_, is_return, index) in enumerate(events, start=1):
            self.op_of[node] = index
            if is_return:
                self.match[call_node[index]] = node
            else:
                call_node[index] = node

    def lift(self, call: int) -> None:
        """Take a call and its return out of the list (the operation is linearized)."""
        nxt, prv = self.next, self.prev
        ret = self.match[call]
        nxt[prv[call]] = nxt[call]
        prv[nxt[call]] = prv[call]
        nxt[prv[ret]] = nxt[ret]
        prv[nxt[ret]] = prv[ret]

    def unlift(self, call: int) -> None:
        nxt, prv = self.next, self.prev
        ret = self.match[call]
        nxt[prv[ret]] = ret
        prv[nxt[ret]] = ret
        nxt[prv[call]] = call
        prv[nxt[call]] = call

    def awaited(self, done: int, applied: int, blocked: int) -> list[int]:
        """The unknown writes worth applying now, in order: those that begin a chain
        of observers (each could succeed right after the last) ending in a definite
        operation that may go next; anything else applied now would be moot. Of
        twins (same effect), only the first unused one."""
        memo_key = (done, applied, blocked)
        cached = self.awaited_memo.get(memo_key)
        if cached is not None:
            return cached
        now = _end(self.register.ops[self.op_of[blocked]])
        pending, node = [], self.next[0]
        while node != blocked:
            pending.append(self.op_of[node])
            node = self.next[node]
        reached: set[int] = set()
        while pending:
            for k in self.observed[pending.pop()]:
                index = self.unknown[k]
                if k not in reached and not applied >> k & 1 and self.invoke[index] <= now:
                    reached.add(k)
                    pending.append(index)
        result, classes = [], set()
        for k in sorted(reached):
            twin = self.twin_class[k]
            if twin >= 0 and self.telling_left[k] == 0:
                if twin in classes:
                    continue  # an earlier unused twin stands in for it
                classes.add(twin)
            result.append(k)
        if len(self.awaited_memo) >= AWAITED_MEMO_MAX:
            self.awaited_memo.clear()
        self.awaited_memo[memo_key] = result
        return result

    def advance(self, index: int, state: State) -> State | None:
        """The state once operation ``index`` goes next (None if it cannot), less what
        no operation still to place can ask about: etags none of them names, of
        writes never current again. Configurations that differ only there are one."""
        after = self.register.step(index, state)
        if after is None or not after[1]:
            return after
        current, binds, fresh = after
        left, named = self.left, self.register.mentions[index]
        kept = tuple(
            bind
            for bind in binds
            if (bind[0] == current and bind[2]) or left[bind[1]] - (bind[1] in named) > 0
        )
        return after if len(kept) == len(binds) else (current, kept, fresh)

    def mark(self, index: int, delta: int) -> None:
        """Count operation ``index`` as placed (delta -1) or not (+1): one fewer (more)
        still to place names its etags or may observe its unknown writes."""
        for etag in self.register.mentions[index]:
            self.left[etag] += delta
        for k in self.telling[index]:
            self.telling_left[k] += delta
        for k in self.observed[index]:
            self.observers_left[k] += delta
            if self.observers_left[k] == 0:
                self.dead |= 1 << k
            elif delta > 0 and self.observers_left[k] == 1:
                self.dead &= ~(1 << k)

    def place(self, index: int, after: State, taken: int) -> bool:
        """Place operation ``index`` (``taken``: its call node, or -1 - its unknown
        position), unless the configuration it leads to is no better than one that
        failed. Unknown writes nothing left could observe are moot (dead), so they
        count as applied: configurations differing only there are one."""
        done, applied = self.done, self.applied
        if taken >= 0:
            done |= 1 << index
        else:
            applied |= 1 << (-1 - taken)
        self.mark(index, -1)
        if _dominated(self.failed, done, applied | self.dead, after):
            self.mark(index, 1)
            return False
        self.stack.append((taken, self.state, self.blocked))
        self.chain, self.state, self.done, self.applied = (index, self.chain), after, done, applied
        if taken >= 0:
            self.lift(taken)
        return True

    def undo(self) -> tuple[int, int]:
        """Take back the last placement; where to go on trying: (call node, position)."""
        taken, self.state, self.blocked = self.stack.pop()
        assert self.chain is not None
        self.chain = self.chain[1]
        if taken >= 0:
            self.mark(self.op_of[taken], 1)
            self.done &= ~(1 << self.op_of[taken])
            self.unlift(taken)
            return self.next[taken], -1
        self.mark(self.unknown[-1 - taken], 1)
        self.applied &= ~(1 << (-1 - taken))
        return 0, -taken

    def run(self, key: bytes) -> KeyCheck:
        """Depth first: definite calls in list order, then unknown writes invoked by the
        first pending return; at a dead end, note the configuration as failed and undo."""
        best: tuple[int, Chain, State, int] = (-1, None, self.state, 0)
        entry, position = self.next[0], -1  # position >= 0: trying unknown writes
        for steps in range(1, self.steps_max + 1):
            if position < 0:  # walking the list of calls up to the first return
                if entry == self.tail:
                    return KeyCheck(key, Verdict.OK, len(self.register.ops), steps)
                index = self.op_of[entry]
                if self.match[entry] < 0:  # a return whose call is still to place
                    self.blocked, position = entry, 0
                    continue
                after = self.advance(index, self.state)
                placed = after is not None and self.place(index, after, entry)
                entry = self.next[0] if placed else self.next[entry]
                continue
            candidates = self.awaited(self.done, self.applied, self.blocked)
            at = bisect_left(candidates, position)
            if at < len(candidates):
                k = candidates[at]
                position = k + 1
                after = self.advance(self.unknown[k], self.state)
                if (
                    after is not None
                    and after[:2] != self.state[:2]  # else it changes nothing: moot
                    and self.place(self.unknown[k], after, -1 - k)
                ):
                    entry, position = self.next[0], -1
                continue
            # A dead end: every operation that may go next was tried from here.
            if len(self.stack) > best[0]:
                best = (len(self.stack), self.chain, self.state, self.blocked)
            _record_failure(self.failed, self.done, self.state, self.applied | self.dead)
            if not self.stack:
                return self._violation(key, steps, best)
            entry, position = self.undo()
        return KeyCheck(key, Verdict.BUDGET_EXCEEDED, len(self.register.ops), self.steps_max)

    def _violation(self, key: bytes, steps: int, best: tuple[int, Chain, State, int]) -> KeyCheck:
        _, chain, state, blocked = best
        ops = self.register.ops
        placed: list[int] = []
        while chain is not None:
            placed.append(chain[0])
            chain = chain[1]
        placed.reverse()
        # What could have gone next at the dead end: every call before the blocked return.
        blocked_index = self.op_of[blocked]
        blocked_end = _end(ops[blocked_index])
        unplaced = set(range(len(ops))).difference(placed, (blocked_index,))
        candidates = sorted(
            (i for i in unplaced if ops[i].invoke_ns <= blocked_end),
            key=lambda i: (ops[i].status is Status.UNKNOWN, i),
        )
        stuck = [
            Stuck(ops[i], self.register.why_not(i, state))
            for i in [blocked_index, *candidates][:STUCK_SHOWN_MAX]
        ]
        return KeyCheck(
            key,
            Verdict.VIOLATION,
            len(ops),
            steps,
            prefix=tuple(ops[i] for i in placed),
            state=self.register.describe(state),
            stuck=tuple(stuck),
        )


def _dominated(
    failed: dict[tuple[int, State], list[int]], done: int, applied: int, state: State
) -> bool:
    """Did this configuration, or one with fewer unknown writes applied, already fail?

    A state made by an unobserved unknown write allows less than the same state
    made otherwise (no blind write may follow), so the latter's failure counts too.
    """
    if any(earlier & ~applied == 0 for earlier in failed.get((done, state), ())):
        return True
    freer = (state[0], state[1], False)
    return state[2] and any(earlier & ~applied == 0 for earlier in failed.get((done, freer), ()))


def _record_failure(
    failed: dict[tuple[int, State], list[int]], done: int, state: State, applied: int
) -> None:
    """Note a failed configuration, keeping only the least sets of unknown writes."""
    earlier = failed.setdefault((done, state), [])
    if any(seen & ~applied == 0 for seen in earlier):
        return
    earlier[:] = [seen for seen in earlier if applied & ~seen != 0]
    earlier.append(applied)

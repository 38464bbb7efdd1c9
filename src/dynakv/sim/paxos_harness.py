"""A pure, seeded, in-memory run of per-key Paxos: acceptors, proposers and a hostile network.

Runs the real ``core.paxos`` acceptor rules and ``core.lwt.StrongOperation``
for one key on N home replicas, with clients issuing strong operations
(get, put, delete, compare-and-set on an ETag, create-if-absent, and an
atomic increment whose new value ``mint`` computes from the current one),
and weak blind writes that land on some replicas' regular records, each after
its own delay, without Paxos (recorded as of unknown outcome: under ``lww``
such a write takes effect for strong operations once one absorbs it, or
never).
No asyncio, no sockets: a discrete-event loop in virtual milliseconds, every
choice drawn from one ``random.Random``, so a seed replays exactly.

Faults (``Faults``): every message is delayed independently (so messages
reorder), lost with ``loss_p``, duplicated with ``duplicate_p``; an acceptor
crashes after persisting a request's new state but before replying, stays
down ``acceptor_down_ms`` (messages to it are lost; calls to it fail at once,
definitely), and comes back with exactly what it persisted; a proposer
crashes mid-round after sending only some of a batch, and its operation is
abandoned. Calls time out after ``rpc_timeout_ms`` (an unknown failure),
operations after ``deadline_ms``. Every message goes through msgpack.

``forget_on_restart`` and ``accept_any`` plant bugs in the acceptor (it did
not persist; it ignores its promise), and ``read_trusts_head`` one in the
proposer (a snapshot read answers the latest commit even when a quorum
reports a proposal accepted above it), so tests can prove the checkers catch them.

What it records: ``history`` (one ``HistoryEntry`` per finished or abandoned
operation, for a linearizability checker); every acceptance and commit, so
``check_safety`` can say: at most one proposal per ballot; the chosen values,
in ballot order, form one chain in which each descends from the one before.

Invariants: every call resolves once; all loops are bounded by ``steps_max``.
"""

from __future__ import annotations

import heapq
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

import msgspec

from dynakv.core import paxos
from dynakv.core.etag import IfAbsent, IfMatch, etag_of
from dynakv.core.lwt import (
    Action,
    ConditionFailed,
    Contended,
    Done,
    Found,
    Retry,
    Send,
    StrongOperation,
    StrongResult,
    Unavailable,
    Unknown,
    Written,
)
from dynakv.core.paxos import AcceptorState, Ballot, Decree, PxMessage, PxRequest
from dynakv.core.record import ConflictPolicy, Record, Sibling, context_of, make_write, merge
from dynakv.core.versions import Hlc

KEY: Final = b"k"
PARTITION: Final = 0
NO_ETAG: Final = "A" * 22  # a well-formed ETag no record has (for CAS without a read)
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(PxMessage)


class Kind(StrEnum):
    GET = "get"
    PUT = "put"
    DELETE = "delete"
    CAS_PUT = "cas_put"
    CAS_DELETE = "cas_delete"
    CREATE = "create"
    INCREMENT = "increment"
    WEAK_PUT = "weak_put"  # a blind write at consistency one/quorum: not through Paxos


class Status(StrEnum):
    OK = "ok"
    PRECONDITION_FAILED = "precondition_failed"
    UNKNOWN = "unknown"  # may take effect at any time after invocation, or never
    FAILED = "failed"  # certainly took no effect


@dataclass(frozen=True, slots=True)
class OpSpec:
    kind: Kind
    value: bytes | None = None  # put, cas_put, create
    expected_etag: str | None = None  # cas: None = the last ETag this client saw


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    client: str
    kind: Kind
    invoke_ms: int
    return_ms: int | None  # None: unknown or abandoned
    status: Status
    value: bytes | None  # written (puts; unknown ones: what they proposed) or read
    expected_etag: str | None
    etag: str | None  # the version written or read; for a 412, the current one
    rounds: int
    messages: int


class _HeadTrustingOperation(StrongOperation):
    """PLANTED BUG: a snapshot read answers the latest commit it saw, ignoring any
    proposal accepted above it (which may already be chosen and acknowledged)."""

    def _on_snapshots(self) -> list[Action]:
        head, _ = paxos.summarize(self._promises[n] for n in sorted(self._promises))
        current = head.proposal.record if head is not None else None
        return self._finish(Found(current, etag_of(current, self._now_ms)))


@dataclass(frozen=True, slots=True)
class Faults:
    delay_ms_min: int = 1
    delay_ms_max: int = 4
    loss_p: float = 0.0
    duplicate_p: float = 0.0
    acceptor_crash_p: float = 0.0
    acceptor_down_ms: int = 30
    proposer_crash_p: float = 0.0
    rpc_timeout_ms: int = 25
    deadline_ms: int = 2_000
    think_ms_max: int = 5
    forget_on_restart: bool = False  # planted bug: an acceptor that did not persist
    accept_any: bool = False  # planted bug: an acceptor that accepts below its promise
    read_trusts_head: bool = False  # planted bug: snapshot reads ignore proposals in progress

    def __post_init__(self) -> None:
        assert 0 <= self.delay_ms_min <= self.delay_ms_max < self.rpc_timeout_ms
        assert self.deadline_ms > self.rpc_timeout_ms


@dataclass
class _Op:
    serial: int
    client: str
    spec: OpSpec
    operation: StrongOperation
    invoke_ms: int
    expected_etag: str | None
    messages: int = 0
    open: bool = True


@dataclass
class _Client:
    name: str
    script: list[OpSpec]
    hlc: Hlc = field(default_factory=Hlc)
    last_etag: str | None = None
    done: int = 0


class PaxosHarness:
    """One key, ``replicas`` acceptors, and clients running ``scripts`` one op at a time."""

    def __init__(
        self,
        seed: int,
        scripts: Mapping[str, Sequence[OpSpec]],
        *,
        replicas: Sequence[str] = ("r1", "r2", "r3"),
        policy: ConflictPolicy = ConflictPolicy.LWW,
        faults: Faults | None = None,
        rounds_max: int = 8,
        steps_max: int = 200_000,
    ) -> None:
        self.rng = random.Random(seed)
        self.replicas = tuple(replicas)
        self.quorum = len(self.replicas) // 2 + 1
        self.policy = policy
        self.faults = faults or Faults()
        self.rounds_max = rounds_max
        self.steps_max = steps_max
        self.now_ms = 0
        self.states: dict[str, AcceptorState] = dict.fromkeys(self.replicas, paxos.EMPTY_STATE)
        self.records: dict[str, Record | None] = dict.fromkeys(self.replicas, None)
        self.down_until: dict[str, int] = dict.fromkeys(self.replicas, -1)
        self.clients = {name: _Client(name, list(s)) for name, s in sorted(scripts.items())}
        self.history: list[HistoryEntry] = []
        self.accepted_by: defaultdict[Ballot, dict[Ballot, set[str]]] = defaultdict(dict)
        self.commits: defaultdict[Ballot, set[Ballot]] = defaultdict(set)
        self.proposals: dict[Ballot, paxos.Proposal] = {}
        self._events: list[tuple[int, int, str, object]] = []
        self._seq = 0
        self._call_seq = 0
        self._ops: dict[int, _Op] = {}
        self._calls: dict[int, tuple[int, str, PxRequest]] = {}  # open calls: op, node, request

    # -- running -------------------------------------------------------------

    def run(self) -> list[HistoryEntry]:
        """Run every client's script to the end; the history, in finishing order."""
        for name in self.clients:
            self._at(self.rng.randint(0, self.faults.think_ms_max), "next", name)
        for _ in range(self.steps_max):
            if not self._events:
                return self.history
            self.now_ms, _, kind, payload = heapq.heappop(self._events)
            self._dispatch(kind, payload)
        raise AssertionError(f"the run did not end within {self.steps_max} steps")

    def isolate(self, nodes: Sequence[str]) -> None:
        """Cut ``nodes`` off for the whole run: calls to them fail at once (definitely)."""
        for node in nodes:
            self.down_until[node] = 2**62

    def traffic(self) -> list[tuple[str, Kind, int]]:
        """Messages (requests and replies) each operation caused, in start order."""
        return [(op.client, op.spec.kind, op.messages) for _, op in sorted(self._ops.items())]

    def weak_write(self, node: str, record: Record) -> None:
        """A non-strong write landing on one replica's regular record (for tests)."""
        self.records[node] = merge(self.records[node], record, self.policy)

    def _at(self, when_ms: int, kind: str, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when_ms, self._seq, kind, payload))

    def _dispatch(self, kind: str, payload: object) -> None:
        if kind == "next":
            assert isinstance(payload, str)
            self._next_op(self.clients[payload])
        elif kind == "deliver":
            assert isinstance(payload, tuple)
            self._deliver(*payload)
        elif kind == "fail":
            assert isinstance(payload, tuple)
            self._fail(*payload)
        elif kind == "deadline":
            assert isinstance(payload, int)
            op = self._ops[payload]
            if op.open:
                self._carry(op, op.operation.on_deadline())
        elif kind == "retry":
            assert isinstance(payload, tuple)
            serial, floor = payload
            op = self._ops[serial]
            if op.open:
                self._carry(op, op.operation.start(self._ballot(op.client, floor), self.now_ms))
        elif kind == "land":
            assert isinstance(payload, tuple)
            self.weak_write(*payload)
        elif kind == "restart":
            assert isinstance(payload, str)
            if self.faults.forget_on_restart:
                self.states[payload] = paxos.EMPTY_STATE
        else:
            raise AssertionError(kind)

    # -- clients and proposers -----------------------------------------------

    def _next_op(self, client: _Client) -> None:
        if client.done >= len(client.script):
            return
        spec = client.script[client.done]
        client.done += 1
        if spec.kind is Kind.WEAK_PUT:
            self._weak_put(client, spec)
            return
        serial = len(self._ops)
        expected = spec.expected_etag
        if spec.kind in (Kind.CAS_PUT, Kind.CAS_DELETE) and expected is None:
            expected = client.last_etag or NO_ETAG
        condition: IfMatch | IfAbsent | None = None
        if spec.kind is Kind.CREATE:
            condition = IfAbsent()
        elif expected is not None:
            condition = IfMatch(expected)
        kind = _HeadTrustingOperation if self.faults.read_trusts_head else StrongOperation
        operation = kind(
            partition=PARTITION,
            key=KEY,
            replicas=self.replicas,
            policy=self.policy,
            mint=None if spec.kind is Kind.GET else self._minter(client, spec),
            condition=condition,
            rounds_max=self.rounds_max,
        )
        op = _Op(serial, client.name, spec, operation, self.now_ms, expected)
        self._ops[serial] = op
        self._at(self.now_ms + self.faults.deadline_ms, "deadline", serial)
        self._carry(op, operation.start(self._ballot(client.name, paxos.ZERO_BALLOT), self.now_ms))

    def _weak_put(self, client: _Client, spec: OpSpec) -> None:
        """A blind write minted by ``client``'s clock, landing on a random non-empty
        set of replicas at random later times; the client does not wait."""
        timestamp = client.hlc.tick(self.now_ms)
        written = Record((Sibling(spec.value, client.name, timestamp, (), timestamp),))
        targets = [r for r in self.replicas if self.rng.random() < 0.5] or [self.replicas[0]]
        for node in targets:
            delay_ms = self.rng.randint(0, 4 * self.faults.delay_ms_max)
            self._at(self.now_ms + delay_ms, "land", (node, written))
        entry = HistoryEntry(
            client=client.name,
            kind=Kind.WEAK_PUT,
            invoke_ms=self.now_ms,
            return_ms=None,
            status=Status.UNKNOWN,
            value=spec.value,
            expected_etag=None,
            etag=etag_of(written, self.now_ms),
            rounds=0,
            messages=0,
        )
        self.history.append(entry)
        self._at(self.now_ms + self.rng.randint(1, self.faults.think_ms_max), "next", client.name)

    def _ballot(self, client: str, floor: Ballot) -> Ballot:
        hlc = self.clients[client].hlc
        hlc.observe(floor.timestamp)
        return Ballot(hlc.tick(self.now_ms), client)

    def _minter(self, client: _Client, spec: OpSpec) -> Callable[[Record | None], Record]:
        def mint(current: Record | None) -> Record:
            if current is not None:
                client.hlc.observe(current.max_timestamp())
            value = spec.value
            if spec.kind in (Kind.DELETE, Kind.CAS_DELETE):
                value = None
            elif spec.kind is Kind.INCREMENT:
                visible = current.visible_values(self.now_ms) if current is not None else []
                value = str(int(visible[0]) + 1 if visible else 1).encode()
            return make_write(
                current,
                node_id=client.name,
                value=value,
                context=context_of(current),
                timestamp=client.hlc.tick(self.now_ms),
                expires_at_ms=0,
                policy=self.policy,
            )

        return mint

    def _carry(self, op: _Op, actions: list[Send | Retry | Done]) -> None:
        """Carry out an operation's actions; maybe crash the proposer part-way."""
        sends = [a for a in actions if isinstance(a, Send)]
        crash = bool(sends) and self.rng.random() < self.faults.proposer_crash_p
        if crash:
            del sends[self.rng.randint(0, len(sends)) :]
        for send in sends:
            self._send_request(op, send)
        if crash:
            self._close(op, None)
            return
        for action in actions:
            if isinstance(action, Retry):
                wait_ms = self.rng.randint(action.after_ms_min, action.after_ms_max)
                self._at(self.now_ms + wait_ms, "retry", (op.serial, action.ballot_floor))
            elif isinstance(action, Done):
                self._close(op, action.result)

    def _close(self, op: _Op, result: StrongResult | None) -> None:
        if not op.open:
            return
        op.open = False
        self.history.append(self._entry(op, result))
        client = self.clients[op.client]
        if isinstance(result, Found | Written | ConditionFailed) and result.etag is not None:
            client.last_etag = result.etag
        self._at(self.now_ms + self.rng.randint(1, self.faults.think_ms_max), "next", op.client)

    def _entry(self, op: _Op, result: StrongResult | None) -> HistoryEntry:
        value, etag, status = None, None, Status.FAILED
        returned: int | None = self.now_ms
        if isinstance(result, Found | Written):
            value, etag, status = _value_of(result.record, self.now_ms), result.etag, Status.OK
        elif isinstance(result, ConditionFailed):
            etag, status = result.etag, Status.PRECONDITION_FAILED
        elif isinstance(result, Unavailable | Contended):
            assert not op.operation.may_have_written
        elif result is None or isinstance(result, Unknown):
            written = op.operation.own_record
            if op.operation.may_have_written and written is not None:
                value, status = _value_of(written, self.now_ms), Status.UNKNOWN
                etag, returned = etag_of(written, self.now_ms), None
        return HistoryEntry(
            client=op.client,
            kind=op.spec.kind,
            invoke_ms=op.invoke_ms,
            return_ms=returned,
            status=status,
            value=value,
            expected_etag=op.expected_etag,
            etag=etag,
            rounds=op.operation.rounds,
            messages=op.messages,
        )

    # -- the network and the acceptors -----------------------------------------

    def _delay(self) -> int:
        return self.rng.randint(self.faults.delay_ms_min, self.faults.delay_ms_max)

    def _send_request(self, op: _Op, send: Send) -> None:
        self._call_seq += 1
        call = self._call_seq
        self._calls[call] = (op.serial, send.node, send.message)
        op.messages += 1
        if self.now_ms < self.down_until[send.node]:
            self._at(self.now_ms + 1, "fail", (call, True))
            return
        self._transmit(send.message, ("request", call, send.node))
        self._at(self.now_ms + self.faults.rpc_timeout_ms, "fail", (call, False))

    def _transmit(self, message: PxMessage, route: tuple[str, int, str]) -> None:
        wire = _encoder.encode(message)
        copies = 2 if self.rng.random() < self.faults.duplicate_p else 1
        for _ in range(copies):
            if self.rng.random() >= self.faults.loss_p:
                self._at(self.now_ms + self._delay(), "deliver", (*route, wire))

    def _deliver(self, direction: str, call: int, node: str, wire: bytes) -> None:
        message = _decoder.decode(wire)
        if direction == "reply":
            self._on_reply(call, node, message)
            return
        if self.now_ms < self.down_until[node]:
            return  # lost: the caller times out
        reply = self._handle(node, message)
        if self.rng.random() < self.faults.acceptor_crash_p:
            self.down_until[node] = self.now_ms + self.faults.acceptor_down_ms
            self._at(self.down_until[node], "restart", node)
            return  # persisted, never replied
        if reply is not None:
            self._transmit(reply, ("reply", call, node))

    def _handle(self, node: str, message: PxMessage) -> PxMessage | None:
        """The acceptor: apply the rule, persist (here: keep) the state, then reply."""
        state = self.states[node]
        reply: PxMessage
        if isinstance(message, paxos.PxRead):
            return paxos.on_read(state, message.ballot, self.records[node])
        if isinstance(message, paxos.PxPrepare):
            state, reply = paxos.on_prepare(state, message.ballot, self.records[node])
        elif isinstance(message, paxos.PxPropose):
            state, reply = paxos.on_propose(state, message.decree)
            if self.faults.accept_any and isinstance(reply, paxos.PxReject):
                state = msgspec.structs.replace(state, accepted=message.decree)
                reply = paxos.PxAccepted(message.decree.ballot)
            if isinstance(reply, paxos.PxAccepted):
                self._note_accept(node, message.decree)
        elif isinstance(message, paxos.PxCommit):
            self._note_commit(message.decree)
            state = paxos.on_commit(state, message.decree)
            self.records[node] = merge(
                self.records[node], message.decree.proposal.record, self.policy
            )
            reply = paxos.PxCommitted(message.decree.ballot)
        else:
            raise AssertionError(f"not a request: {type(message).__name__}")
        assert paxos.state_problem(state) is None, paxos.state_problem(state)
        self.states[node] = paxos.decode_state(paxos.encode_state(state))
        return reply

    def _on_reply(self, call: int, node: str, message: PxMessage) -> None:
        serial = self._resolve(call)
        if serial is None:
            return
        op = self._ops[serial]
        op.messages += 1
        if op.open:
            assert not isinstance(message, PxRequest)
            self._carry(op, op.operation.on_message(node, message))

    def _fail(self, call: int, definite: bool) -> None:
        entry = self._calls.get(call)
        if self._resolve(call) is None or entry is None:
            return
        op = self._ops[entry[0]]
        if op.open:
            self._carry(op, op.operation.on_failure(entry[1], entry[2], definite=definite))

    def _resolve(self, call: int) -> int | None:
        entry = self._calls.pop(call, None)
        return None if entry is None else entry[0]

    # -- the god's-eye safety record -------------------------------------------

    def _note_accept(self, node: str, decree: Decree) -> None:
        origin = decree.proposal.origin
        self.proposals.setdefault(origin, decree.proposal)
        assert self.proposals[origin] == decree.proposal, "one proposal per origin"
        self.accepted_by[decree.ballot].setdefault(origin, set()).add(node)

    def _note_commit(self, decree: Decree) -> None:
        self.proposals.setdefault(decree.proposal.origin, decree.proposal)
        self.commits[decree.ballot].add(decree.proposal.origin)

    def chosen(self) -> list[tuple[Ballot, paxos.Proposal]]:
        """Every (ballot, proposal) a quorum accepted, in ballot order."""
        found = []
        for ballot in sorted(self.accepted_by):
            for origin, nodes in sorted(self.accepted_by[ballot].items()):
                if len(nodes) >= self.quorum:
                    found.append((ballot, self.proposals[origin]))
        return found

    def check_safety(self) -> list[str]:
        """Violations of Paxos safety in this run (empty when safe)."""
        problems = []
        for ballot, origins in sorted(self.accepted_by.items()):
            if len(origins) > 1:
                problems.append(f"ballot {ballot} had {len(origins)} proposals accepted")
        for ballot, committed in sorted(self.commits.items()):
            if len(committed) > 1:
                problems.append(f"ballot {ballot} had {len(committed)} proposals committed")
        chosen = {proposal.origin for _, proposal in self.chosen()}
        for ballot, committed in sorted(self.commits.items()):
            if not committed <= chosen:
                problems.append(f"ballot {ballot} committed a proposal that was never chosen")
        previous: paxos.Proposal | None = None
        for ballot, proposal in self.chosen():
            if previous is not None and proposal.origin != previous.origin:
                if proposal.base() != previous.origin:
                    problems.append(f"chosen at {ballot}: not built on the value chosen before")
                if merge(previous.record, proposal.record, self.policy) != proposal.record:
                    problems.append(f"chosen at {ballot}: does not descend from the one before")
            previous = proposal
        return problems


def _value_of(record: Record | None, now_ms: int) -> bytes | None:
    """The value a reader sees; concurrent siblings (a weak write under ``siblings``)
    are joined with ``|`` in sorted order."""
    visible = record.visible_values(now_ms) if record is not None else []
    return b"|".join(sorted(visible)) if visible else None

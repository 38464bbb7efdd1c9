"""Streaming one partition to its new replica: pages pulled, chained digests, then "verified".

Owns the per-partition streaming protocol of a ring change (``core.claimant``
owns the change itself). The receiver pulls; the sender is stateless:

1. The receiver sends ``XfPageRequest(after, count, chain)`` to a source: its
   resume point (the last key it stored, None at the start), the records it
   has stored from this stream so far and the running digest ``chain`` over them.
2. The source's shell reads ``scan_raw(partition, after=, limit=items_max)``
   and answers ``page_reply(...)``: the page trimmed to ``bytes_max`` (at
   least one record), ``count`` and ``chain`` moved past exactly the records
   it sends (``chain_next``), and ``done`` once the scan is exhausted.
3. The receiver checks the page: keys strictly increasing and after ``after``,
   ``count`` moved by the page's length, and ``chain_next(chain, items)`` equal
   to the source's. Only then does it ask its shell to ingest the page
   (``IngestPage``: merge each record with what it holds, as dual writes may
   have put a newer one there; store durably), and only after the shell says
   it is stored (``on_page_stored``) does it ask for the next page.
4. On the last page the records are in: every record the source read
   arrived intact, in order, none skipped or repeated, and is durable here.
5. Then the partition's Paxos acceptor states (``scan_paxos``) are pulled
   the same way (``paxos`` on the request and the page), whole, from old
   replicas in turn until ``paxos_quorum`` of them (a majority of the old
   list; every source when fewer are left) are merged here
   (``IngestPage.paxos``: ``core.paxos.merge_states``). Only then is the
   transfer verified. ``core.homes`` says why strong operations need it.

Why this is sound while writes go on: the digest is over the snapshot pages
the source read and sent, not over the partition as it is now (which moves
under dual writes on both sides, so two ``partition_digest`` calls could
never be compared). A write the source receives after it read the page
holding its key is not in the stream, but the claimant starts streaming only
after every coordinator writes to the new replica too (its barrier), so that
write reached the receiver directly.

Failures: a page that does not check restarts the stream on the same source
from where that source began (records already stored stay: merging is
idempotent), at most ``restarts_max`` times; a source that is not live,
refuses, or does not answer ``page_retries_max + 1`` requests is given up
for the next one in ``from_nodes`` (best first), going round them at most
``source_passes_max`` times. The first source is the replica this one
replaces (its data is exactly what moves); once it is given up, and always
with ``stream_all`` (re-replicating a dead node's partitions), every live
source is streamed whole in turn and merged, so the new replica holds every
write that reached any of them (any write W replicas acknowledged). When no
source is left the transfer fails and the claimant decides.

Bounds: ``streams_max`` streams at once, ``queued_max`` waiting, pages of at
most ``items_max`` records and ``bytes_max`` bytes (plus one record).
Must never: do I/O, read a clock, or report a transfer verified before every
page of it was stored.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec
import xxhash

CHAIN_BYTES: Final = 16
PAGE_ITEMS_MAX: Final = 65_536  # storage's RAW_BATCH_ITEMS_MAX: one page is one ingest batch
_FRAME = struct.Struct(">II")  # key length, value length: no two item sequences hash alike

Item = tuple[bytes, bytes]  # (key, stored record bytes)


@dataclass(frozen=True, slots=True)
class TransferTiming:
    page_items_max: int = 512
    page_bytes_max: int = 1024 * 1024
    page_timeout_ms: int = 2000
    page_retries_max: int = 3  # resends of one request before the source is given up
    restarts_max: int = 2  # pages that do not check, per source, before it is given up
    source_passes_max: int = 3  # times round the sources before the transfer fails
    streams_max: int = 4
    queued_max: int = 1024
    paxos_wait_ms: int = 30_000  # for a majority of the old replicas to be live at once

    def __post_init__(self) -> None:
        assert 1 <= self.page_items_max <= PAGE_ITEMS_MAX, self
        assert self.page_bytes_max >= 1 and self.page_timeout_ms >= 1, self
        assert self.page_retries_max >= 0 and self.restarts_max >= 0, self
        assert self.source_passes_max >= 1, self
        assert self.streams_max >= 1 and self.queued_max >= 1, self


class TransferPlan(msgspec.Struct, frozen=True, array_like=True):
    """Stream ``partition`` to ``to_node`` from ``from_nodes`` (best first)."""

    partition: int
    from_nodes: tuple[str, ...]
    to_node: str
    stream_all: bool = False  # merge every source (remove), not just the first that works
    paxos_quorum: int = 0  # old replicas whose Paxos state must be merged (a majority)


# -- messages ------------------------------------------------------------------------


class XfAssign(msgspec.Struct, frozen=True, array_like=True, tag="xfassign"):
    """The claimant to a receiver: stream these (a batch of its unverified transfers)."""

    sender: str
    change_id: str
    transfers: tuple[TransferPlan, ...]


class XfVerified(msgspec.Struct, frozen=True, array_like=True):
    partition: int
    count: int  # records streamed (over every source merged)
    chain: bytes  # the final digest
    sources: tuple[str, ...]


class XfFailed(msgspec.Struct, frozen=True, array_like=True):
    partition: int
    reason: str


class XfReport(msgspec.Struct, frozen=True, array_like=True, tag="xfreport"):
    """A receiver to the claimant: transfers verified, still streaming, or failed."""

    sender: str
    change_id: str
    verified: tuple[XfVerified, ...] = ()
    streaming: tuple[int, ...] = ()
    failed: tuple[XfFailed, ...] = ()


class XfPageRequest(msgspec.Struct, frozen=True, array_like=True, tag="xfpageq"):
    sender: str
    change_id: str
    partition: int
    attempt: int  # a restart's number: answers to an older attempt are ignored
    after: bytes | None
    count: int
    chain: bytes
    items_max: int
    bytes_max: int
    paxos: bool = False  # the Paxos keyspace (``scan_paxos``), not the records


class XfPage(msgspec.Struct, frozen=True, array_like=True, tag="xfpage"):
    sender: str
    change_id: str
    partition: int
    attempt: int
    after: bytes | None  # the request's, echoed
    items: tuple[Item, ...]
    count: int  # the request's count plus len(items)
    chain: bytes  # chain_next(request's chain, items), as the source read them
    done: bool
    paxos: bool = False  # the request's, echoed


class XfRefused(msgspec.Struct, frozen=True, array_like=True, tag="xfrefused"):
    """The source will not serve this stream (it does not know the change, or is no source)."""

    sender: str
    change_id: str
    partition: int
    attempt: int
    reason: str


XfMessage = XfAssign | XfReport | XfPageRequest | XfPage | XfRefused


# -- the digest and the sender -------------------------------------------------------


def chain_next(chain: bytes, items: Sequence[Item]) -> bytes:
    """The running digest moved past ``items``: xxh3_128(chain, framed items)."""
    hasher = xxhash.xxh3_128(chain)
    for key, data in items:
        hasher.update(_FRAME.pack(len(key), len(data)))
        hasher.update(key)
        hasher.update(data)
    digest: bytes = hasher.digest()
    assert len(digest) == CHAIN_BYTES
    return digest


def page_reply(sender: str, request: XfPageRequest, scanned: Sequence[Item]) -> XfPage:
    """The source's answer, from ``scan_raw(partition, after=request.after,
    limit=request.items_max)``: trimmed to ``bytes_max`` (at least one record)."""
    assert len(scanned) <= request.items_max, (len(scanned), request.items_max)
    items: list[Item] = []
    size_bytes = 0
    for key, data in scanned:
        assert request.after is None or key > request.after, "scan_raw returned a key not after"
        assert not items or key > items[-1][0], "scan_raw returned keys out of order"
        if items and size_bytes + len(key) + len(data) > request.bytes_max:
            break
        items.append((key, data))
        size_bytes += len(key) + len(data)
    done = len(items) == len(scanned) and len(scanned) < request.items_max
    return XfPage(
        sender=sender,
        change_id=request.change_id,
        partition=request.partition,
        attempt=request.attempt,
        after=request.after,
        items=tuple(items),
        count=request.count + len(items),
        chain=chain_next(request.chain, items),
        done=done,
        paxos=request.paxos,
    )


def page_problem(page: XfPage, after: bytes | None, count: int, chain: bytes) -> str | None:
    """Why a page does not continue a stream at (after, count, chain), or None."""
    previous = after
    for key, _ in page.items:
        if previous is not None and key <= previous:
            return "keys not strictly increasing after the resume point"
        previous = key
    if page.count != count + len(page.items):
        return f"count {page.count} after {len(page.items)} records on {count}"
    if page.chain != chain_next(chain, page.items):
        return "digest mismatch"
    if not page.items and not page.done:
        return "an empty page that is not the last"
    return None


# -- actions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    to_node: str
    message: msgspec.Struct


@dataclass(frozen=True, slots=True)
class IngestPage:
    """Merge each (key, record bytes) with the stored record, store durably (sync), then
    call ``on_page_stored(partition, attempt)``. With ``paxos``, the items are
    (key, acceptor state bytes) from old replica ``source``: merge each into this
    replica's state (``Acceptor.merge_streamed``) instead."""

    partition: int
    items: tuple[Item, ...]
    attempt: int
    paxos: bool = False
    source: str = ""


# -- the receiver --------------------------------------------------------------------


@dataclass(slots=True)
class _Stream:
    plan: TransferPlan
    attempt: int
    source: int = 0  # index into plan.from_nodes
    after: bytes | None = None
    count: int = 0
    chain: bytes = b""
    base: tuple[bytes | None, int, bytes] = (None, 0, b"")  # where this source's stream began
    sent_ms: int = 0
    retries: int = 0
    restarts: int = 0
    passes: int = 0  # times round from_nodes
    merge: bool = False  # stream every source whole (stream_all, or the first failed)
    storing: XfPage | None = None  # the page the shell is ingesting
    merged: list[str] = field(default_factory=list)  # sources streamed to the end
    records: XfVerified | None = None  # the records' stream, once done: the Paxos phase
    paxos_merged: list[str] = field(default_factory=list)  # Paxos states merged from
    paxos_tries: int = 0  # old replicas asked for their Paxos states so far
    waiting_since_ms: int | None = None  # no unmerged old replica live: waiting since


class Receiver:
    """This node's side of one change's transfers to it: a bounded set of streams."""

    def __init__(self, node_id: str, timing: TransferTiming) -> None:
        self.node_id = node_id
        self.timing = timing
        self.change_id = ""
        self.leader = ""
        self._streams: dict[int, _Stream] = {}
        self._queue: deque[TransferPlan] = deque()
        self._attempts = 0
        self.verified: dict[int, XfVerified] = {}
        self.failed: dict[int, XfFailed] = {}

    def reset(self) -> None:
        """The change is over (committed or cancelled): forget every stream."""
        self.change_id, self.leader = "", ""
        self._streams.clear()
        self._queue.clear()
        self.verified.clear()
        self.failed.clear()

    def streaming(self) -> tuple[int, ...]:
        return tuple(sorted([*self._streams, *(plan.partition for plan in self._queue)]))

    def assign(
        self, message: XfAssign, now_ms: int, live: frozenset[str]
    ) -> list[Send | IngestPage]:
        """Take on the transfers not yet known; answer where each one stands."""
        if message.change_id != self.change_id:
            self.reset()
            self.change_id = message.change_id
        self.leader = message.sender
        known = {*self._streams, *(plan.partition for plan in self._queue)}
        for plan in message.transfers:
            seen = plan.partition in known or plan.partition in self.verified
            ours = plan.to_node == self.node_id and plan.partition not in self.failed
            if ours and not seen and len(known) < self._capacity():
                self._queue.append(plan)
                known.add(plan.partition)
        actions = self._start_more(now_ms, live)
        asked = {plan.partition for plan in message.transfers}
        report = XfReport(
            self.node_id,
            self.change_id,
            verified=tuple(self.verified[p] for p in sorted(asked & self.verified.keys())),
            streaming=tuple(p for p in sorted(asked & known) if p not in self.verified),
            failed=tuple(self.failed[p] for p in sorted(asked & self.failed.keys())),
        )
        actions.append(Send(message.sender, report))
        return actions

    def _capacity(self) -> int:
        return self.timing.streams_max + self.timing.queued_max

    def _start_more(self, now_ms: int, live: frozenset[str]) -> list[Send | IngestPage]:
        actions: list[Send | IngestPage] = []
        while self._queue and len(self._streams) < self.timing.streams_max:
            plan = self._queue.popleft()
            self._attempts += 1
            stream = _Stream(plan, attempt=self._attempts, source=-1, merge=plan.stream_all)
            self._streams[plan.partition] = stream
            actions.extend(self._next_source(stream, now_ms, live, "start"))
        return actions

    def _request(self, stream: _Stream, now_ms: int) -> Send:
        stream.sent_ms = now_ms
        request = XfPageRequest(
            sender=self.node_id,
            change_id=self.change_id,
            partition=stream.plan.partition,
            attempt=stream.attempt,
            after=stream.after,
            count=stream.count,
            chain=stream.chain,
            items_max=self.timing.page_items_max,
            bytes_max=self.timing.page_bytes_max,
            paxos=stream.records is not None,
        )
        return Send(stream.plan.from_nodes[stream.source], request)

    def _restart(self, stream: _Stream, now_ms: int) -> list[Send | IngestPage]:
        """Stream this source again from where it began, under a new attempt number."""
        self._attempts += 1
        stream.attempt = self._attempts
        stream.after, stream.count, stream.chain = stream.base
        stream.retries, stream.storing = 0, None
        return [self._request(stream, now_ms)]

    def _next_source(
        self, stream: _Stream, now_ms: int, live: frozenset[str], reason: str
    ) -> list[Send | IngestPage]:
        """Give the current source up (or begin): the next live one not yet merged, going
        round ``from_nodes`` at most ``source_passes_max`` times; else finish.

        Once the first source (the replica this one replaces) is given up, the stream
        merges every other source whole: any W replicas hold an acknowledged write, so
        all but one of them do too, while a single other replica may have missed it."""
        if stream.records is not None:
            return self._next_paxos_source(stream, now_ms, live, reason)
        sources = stream.plan.from_nodes
        stream.merge = stream.merge or stream.source >= 0
        for _ in range((len(sources) + 1) * self.timing.source_passes_max if sources else 0):
            stream.source += 1
            if stream.source == len(sources):
                stream.passes += 1
                if stream.passes == self.timing.source_passes_max:
                    break
                stream.source = 0
            candidate = sources[stream.source]
            if candidate not in live:
                stream.merge = True
            elif candidate not in stream.merged:
                stream.base = (None, stream.count, stream.chain)
                stream.restarts = 0
                return self._restart(stream, now_ms)
        if stream.merged or not sources:
            return self._records_done(stream, now_ms, live)
        partition = stream.plan.partition
        return self._finish(stream, f"no source left for partition {partition}: {reason}")

    @staticmethod
    def _paxos_needed(plan: TransferPlan) -> int:
        """Old replicas whose Paxos state must be merged: a majority of the old list, or
        every source when fewer are left (a removed node's list: then every quorum of the
        old list held all of them)."""
        return min(plan.paxos_quorum, len(plan.from_nodes))

    def _records_done(
        self, stream: _Stream, now_ms: int, live: frozenset[str]
    ) -> list[Send | IngestPage]:
        """The records are in: merge the Paxos state of a majority of the old replicas
        (``core.homes`` rule 3), then the transfer is verified."""
        if self._paxos_needed(stream.plan) == 0:
            return self._finish(stream, None)
        plan = stream.plan
        stream.records = XfVerified(
            plan.partition, stream.count, stream.chain, tuple(stream.merged)
        )
        stream.source = -1
        return self._next_paxos_source(stream, now_ms, live, "")

    def _next_paxos_source(
        self, stream: _Stream, now_ms: int, live: frozenset[str], reason: str
    ) -> list[Send | IngestPage]:
        """The next live old replica whose Paxos state is not merged yet; finish once a
        majority is merged. Each old replica is asked at most ``source_passes_max``
        times; while none left is live, wait (``tick`` asks again) up to
        ``paxos_wait_ms``: a majority must be live at once, not just one source."""
        sources, needed = stream.plan.from_nodes, self._paxos_needed(stream.plan)
        if len(stream.paxos_merged) >= needed:
            return self._finish(stream, None)
        partition, merged = stream.plan.partition, len(stream.paxos_merged)
        if stream.paxos_tries < len(sources) * self.timing.source_passes_max:
            for offset in range(1, len(sources) + 1):
                index = (stream.source + offset) % len(sources)
                candidate = sources[index]
                if candidate in live and candidate not in stream.paxos_merged:
                    stream.source, stream.waiting_since_ms = index, None
                    stream.paxos_tries += 1
                    stream.base = (None, 0, b"")
                    stream.restarts = 0
                    return self._restart(stream, now_ms)
            if stream.waiting_since_ms is None:
                stream.waiting_since_ms = now_ms
            if now_ms - stream.waiting_since_ms < self.timing.paxos_wait_ms:
                stream.source = -1  # waiting: ``tick`` tries again
                return []
            reason = reason or "too few old replicas live"
        failure = (
            f"Paxos state of partition {partition} merged from {merged} old replica(s) of "
            f"the {needed} needed: {reason or 'every old replica tried'}"
        )
        return self._finish(stream, failure)

    def _finish(self, stream: _Stream, failure: str | None) -> list[Send | IngestPage]:
        partition = stream.plan.partition
        del self._streams[partition]
        result: XfReport
        if failure is None:
            done = stream.records or XfVerified(
                partition, stream.count, stream.chain, tuple(stream.merged)
            )
            self.verified[partition] = done
            result = XfReport(self.node_id, self.change_id, verified=(done,))
        else:
            self.failed[partition] = XfFailed(partition, failure)
            result = XfReport(self.node_id, self.change_id, failed=(self.failed[partition],))
        return [Send(self.leader, result)]

    def on_page(self, page: XfPage, now_ms: int, live: frozenset[str]) -> list[Send | IngestPage]:
        stream = self._streams.get(page.partition)
        if (
            stream is None
            or page.change_id != self.change_id
            or page.attempt != stream.attempt
            or page.after != stream.after
            or stream.storing is not None
            or stream.source < 0
            or page.sender != stream.plan.from_nodes[stream.source]
            or page.paxos != (stream.records is not None)
        ):
            return []  # stale, duplicated, or not ours
        problem = page_problem(page, stream.after, stream.count, stream.chain)
        if problem is None and len(page.items) > self.timing.page_items_max:
            problem = f"{len(page.items)} records in a page of at most {self.timing.page_items_max}"
        if problem is not None:
            stream.restarts += 1
            if stream.restarts > self.timing.restarts_max:
                actions = self._next_source(stream, now_ms, live, "pages did not check")
                return actions + self._start_more(now_ms, live)
            return self._restart(stream, now_ms)
        stream.storing = page
        return [IngestPage(page.partition, page.items, page.attempt, page.paxos, page.sender)]

    def on_page_stored(
        self, partition: int, attempt: int, now_ms: int, live: frozenset[str]
    ) -> list[Send | IngestPage]:
        stream = self._streams.get(partition)
        if stream is None or stream.attempt != attempt or stream.storing is None:
            return []
        page, stream.storing = stream.storing, None
        stream.count, stream.chain, stream.retries = page.count, page.chain, 0
        if page.items:
            stream.after = page.items[-1][0]
        if not page.done:
            return [self._request(stream, now_ms)]
        if stream.records is not None:
            stream.paxos_merged.append(page.sender)
            actions = self._next_paxos_source(stream, now_ms, live, "")
        elif stream.merge:
            stream.merged.append(page.sender)
            actions = self._next_source(stream, now_ms, live, "")
        else:
            stream.merged.append(page.sender)
            actions = self._records_done(stream, now_ms, live)
        return actions + self._start_more(now_ms, live)

    def on_refused(
        self, message: XfRefused, now_ms: int, live: frozenset[str]
    ) -> list[Send | IngestPage]:
        stream = self._streams.get(message.partition)
        if stream is None or message.attempt != stream.attempt or stream.storing is not None:
            return []
        if stream.source < 0:
            return []
        if message.sender != stream.plan.from_nodes[stream.source]:
            return []
        return self._next_source(stream, now_ms, live, message.reason) + self._start_more(
            now_ms, live
        )

    def tick(self, now_ms: int, live: frozenset[str]) -> list[Send | IngestPage]:
        """Resend silent requests; give up sources that died or stay silent."""
        actions: list[Send | IngestPage] = []
        for partition in sorted(self._streams):
            stream = self._streams[partition]
            if stream.storing is not None:
                continue  # the shell has the page; it calls back
            if stream.source < 0:  # waiting for old replicas to be live
                actions.extend(self._next_paxos_source(stream, now_ms, live, ""))
                continue
            source = stream.plan.from_nodes[stream.source]
            if source not in live:
                actions.extend(self._next_source(stream, now_ms, live, f"{source} is down"))
            elif now_ms - stream.sent_ms >= self.timing.page_timeout_ms:
                stream.retries += 1
                if stream.retries > self.timing.page_retries_max:
                    actions.extend(self._next_source(stream, now_ms, live, f"{source} is silent"))
                else:
                    actions.append(self._request(stream, now_ms))
        return actions + self._start_more(now_ms, live)

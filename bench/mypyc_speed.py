"""How much faster dynakv's pure hot functions run compiled by mypyc (issue 8).

    .venv/bin/python bench/mypyc_speed.py [--build-dir /tmp/mypyc-build] [--repeat 20]
                                          [--target-ms 5] [--rounds 3] [--no-build]
                                          [MODULE ...]

Copies ``src/dynakv`` twice into ``--build-dir`` (``pure/`` and ``compiled/``,
one snapshot, so both sides run the same source), compiles the modules in
``compiled/`` with ``tools/mypyc_build.py`` (never in the working tree), then
times each hot function in a child process per side, importing from that copy
(PYTHONPATH). Each case is called from interpreted code, as the node's shell
calls it, on realistic inputs (a 3-replica record with a 100-byte value, a
2-sibling conflict, a 3-entry clock, a write envelope). A case's figure is the
best of ``--repeat`` CPU-time timings of a loop sized to take ``--target-ms``, best
again over ``--rounds`` alternations of the two sides; a module's speedup is
the geometric mean of its cases'. Prints Markdown tables. Cases of modules
left pure on both sides are the noise control: their ratio should be ~1.0
(or a little above, when they call a compiled module).
A timing, never a test: the machine is shared and noisy; compare back to back.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import mypyc_build  # noqa: E402

Case = tuple[str, str, Callable[[], object]]  # module, case name, the call to time


def _record_cases() -> list[Case]:
    from dynakv.core import record as r
    from dynakv.core.idempotency import IdempotencyEntry, merge_idempotency
    from dynakv.core.versions import Hlc, clock_descends, clock_join, covers, is_canonical

    now_ms = 1_764_670_000_000
    ts = now_ms << 16
    clock = (("node-a", ts - 50), ("node-b", ts - 40), ("node-c", ts - 30))
    value = b"v" * 100

    def sibling(node: str, counter: int) -> r.Sibling:
        return r.Sibling(value, node, counter, clock, counter, 0)

    one = r.Record((sibling("node-a", ts),))
    newer = r.Record((r.Sibling(value, "node-a", ts + 9, (("node-a", ts),), ts + 9, 0),))
    conflict_a = r.Record((sibling("node-a", ts),))
    conflict_b = r.Record((sibling("node-b", ts + 1),))
    two = r.merge(conflict_a, conflict_b, r.ConflictPolicy.SIBLINGS)
    assert two is not None and len(two.siblings) == 2
    context = r.context_of(one)
    encoded = r.encode_record(two)
    token = r.encode_context(context)
    bounds = r.RecordBounds()
    siblings, lww = r.ConflictPolicy.SIBLINGS, r.ConflictPolicy.LWW
    entries_a = tuple(IdempotencyEntry(h, "node-a", ts + h, ts + h, now_ms + h) for h in (1, 3, 5))
    entries_b = tuple(IdempotencyEntry(h, "node-b", ts + h, ts + h, now_ms + h) for h in (2, 4))
    hlc = Hlc()
    wide = clock_join(clock, (("node-d", ts),))
    return [
        (
            "record",
            "merge siblings (2 concurrent)",
            lambda: r.merge(conflict_a, conflict_b, siblings),
        ),
        ("record", "merge lww (newer wins)", lambda: r.merge(one, newer, lww)),
        ("record", "merge siblings (same record)", lambda: r.merge(two, two, siblings)),
        (
            "record",
            "make_write on a record",
            lambda: r.make_write(
                one,
                node_id="node-a",
                value=value,
                context=context,
                timestamp=ts + 100,
                expires_at_ms=0,
                policy=siblings,
            ),
        ),
        ("record", "record_problem", lambda: r.record_problem(two)),
        ("record", "record_bounds_problem", lambda: r.record_bounds_problem(two, bounds, now_ms)),
        ("record", "encode_record", lambda: r.encode_record(two)),
        ("record", "decode_record", lambda: r.decode_record(encoded)),
        ("record", "context_of + encode_context", lambda: r.encode_context(r.context_of(two))),
        ("record", "decode_context", lambda: r.decode_context(token)),
        ("record", "visible_values", lambda: two.visible_values(now_ms)),
        ("idempotency", "merge_idempotency", lambda: merge_idempotency(entries_a, entries_b)),
        ("versions", "clock_join (3 + 4 entries)", lambda: clock_join(clock, wide)),
        ("versions", "clock_descends", lambda: clock_descends(wide, clock)),
        ("versions", "covers", lambda: covers(clock, "node-c", ts - 30)),
        ("versions", "is_canonical", lambda: is_canonical(wide)),
        ("versions", "Hlc tick + observe", lambda: hlc.observe(ts) and hlc.tick(now_ms)),
    ]


def _coordination_cases() -> list[Case]:
    from dynakv.core.coordinator import ReadCoordination, WriteCoordination
    from dynakv.core.quorum import Tally
    from dynakv.core.record import ConflictPolicy, Record, Sibling

    ts = 1_764_670_000_000 << 16
    clock = (("node-a", ts - 50), ("node-b", ts - 40))
    record = Record((Sibling(b"v" * 100, "node-a", ts, clock, ts, 0),))
    stale = Record((Sibling(b"v" * 100, "node-a", ts - 50, (), ts - 50, 0),))
    replicas = ("node-a", "node-b", "node-c")

    def write() -> object:
        coordination = WriteCoordination(
            preference_list=replicas,
            local_node="node-a",
            required=2,
            partition=7,
            key=b"user:42",
            record=record,
            fallbacks=("node-d",),
        )
        coordination.start()
        return coordination.on_ack("node-b"), coordination.on_ack("node-c")

    def read() -> object:
        coordination = ReadCoordination(
            preference_list=replicas,
            required=2,
            partition=7,
            key=b"user:42",
            policy=ConflictPolicy.SIBLINGS,
        )
        coordination.start("node-a", record)
        coordination.on_reply("node-b", stale)
        decided = coordination.decide()
        coordination.on_reply("node-c", record)
        return decided

    def tally() -> object:
        counted = Tally(replicas, 2)
        counted.on_success("node-a")
        counted.on_unknown_failure("node-c")
        return counted.on_success("node-b")

    return [
        ("coordinator", "quorum write N=3 W=2 (start, 2 acks)", write),
        ("coordinator", "quorum read N=3 R=2 (start, replies, decide, repair)", read),
        ("quorum", "Tally: 2 successes and a timeout", tally),
    ]


def _session_etag_cases() -> list[Case]:
    from dynakv.core import session as s
    from dynakv.core.etag import IfMatch, condition_holds, etag_of, is_etag
    from dynakv.core.record import ConflictPolicy, Record, RecordBounds, Sibling

    now_ms = 1_764_670_000_000
    ts = now_ms << 16
    clock = (("node-a", ts - 50), ("node-b", ts - 40), ("node-c", ts - 30))
    record = Record((Sibling(b"v" * 100, "node-a", ts, clock, ts, 0),))
    token = s.EMPTY_SESSION
    for key_number in range(8):  # a session that touched 8 keys
        token = s.observe(token, s.session_key_hash(b"k%d" % key_number), clock, ts + key_number)
    raw = s.encode_session(token).encode("ascii")
    key_hash = s.session_key_hash(b"k3")
    bounds = RecordBounds()
    etag = etag_of(record, now_ms)
    assert etag is not None
    condition = IfMatch(etag)
    return [
        ("session", "decode_session (a fresh token)", lambda: s._decode(raw)),
        ("session", "decode_session (memoized)", lambda: s.decode_session(raw)),
        (
            "session",
            "observe + encode_session",
            lambda: s.encode_session(s.observe(token, key_hash, clock, ts + 99)),
        ),
        (
            "session",
            "session_bounds_problem",
            lambda: s.session_bounds_problem(token, bounds, now_ms),
        ),
        (
            "session",
            "requirement + satisfies",
            lambda: s.satisfies(record, s.requirement(token, key_hash), ConflictPolicy.LWW),
        ),
        ("etag", "etag_of", lambda: etag_of(record, now_ms)),
        (
            "etag",
            "is_etag + condition_holds",
            lambda: is_etag(etag) and condition_holds(condition, etag),
        ),
    ]


def _wire_cases() -> list[Case]:
    from dynakv.api.wire import Response, serialize
    from dynakv.core.record import Record, Sibling
    from dynakv.core.ring import Ring, RingNode, partition_of
    from dynakv.net.codec import Envelope, FrameDecoder, encode_frame
    from dynakv.net.messages import ReadReply, WriteRequest

    ts = 1_764_670_000_000 << 16
    clock = (("node-a", ts - 50), ("node-b", ts - 40), ("node-c", ts - 30))
    record = Record((Sibling(b"v" * 100, "node-a", ts, clock, ts, 0),))
    envelope = Envelope(17, False, WriteRequest(7, b"user:42", record, epoch=3))
    frame = encode_frame(envelope, 1 << 20)
    burst = b"".join(encode_frame(Envelope(i, True, ReadReply(record, 3))) for i in range(16))
    decoder = FrameDecoder(1 << 20)
    ring = Ring.build([RingNode(f"node-{z}", f"zone-{z}") for z in "abc"], 256, 3)
    response = Response(200, b"x-dynakv-context: abc\r\n", b"v" * 100)
    return [
        ("codec", "encode_frame (write request)", lambda: encode_frame(envelope, 1 << 20)),
        ("codec", "FrameDecoder.feed (1 frame)", lambda: decoder.feed(frame)),
        ("codec", "FrameDecoder.feed (16 replies)", lambda: decoder.feed(burst)),
        (
            "ring",
            "partition_of + preference_list",
            lambda: ring.preference_list_for_key(b"user:42"),
        ),
        ("ring", "partition_of", lambda: partition_of(b"user:42", 256)),
        ("wire", "serialize (200, keep-alive)", lambda: serialize(response, True, False)),
    ]


def _time_case(call: Callable[[], object], repeat: int, target_ms: float) -> float:
    """Best CPU nanoseconds per call over ``repeat`` loops each sized to about
    ``target_ms``, with the cyclic GC off (as timeit does: its pauses depend on the
    whole heap). This thread's CPU time, not wall time: on a shared machine the
    time other processes take the core would otherwise land on either side."""
    gc.collect()
    gc.disable()
    try:
        return _best_ns(call, repeat, target_ms)
    finally:
        gc.enable()


def _best_ns(call: Callable[[], object], repeat: int, target_ms: float) -> float:
    number = 1
    while True:  # calibrate: double until one loop takes a tenth of the target
        started = time.thread_time_ns()
        for _ in range(number):
            call()
        elapsed_ns = time.thread_time_ns() - started
        if elapsed_ns >= target_ms * 1e5 or number >= 1 << 24:
            break
        number *= 2
    number = max(1, int(number * target_ms * 1e6 / max(elapsed_ns, 1)))
    best_ns = math.inf
    for _ in range(repeat):
        started = time.thread_time_ns()
        for _ in range(number):
            call()
        best_ns = min(best_ns, (time.thread_time_ns() - started) / number)
    return best_ns


def worker(repeat: int, target_ms: float) -> None:
    """Time every case in this process; print one JSON object (case -> ns, compiled modules)."""
    import importlib

    cases = _record_cases() + _coordination_cases() + _session_etag_cases() + _wire_cases()
    compiled = sorted(
        module
        for module in (*mypyc_build.KNOWN_MODULES, *mypyc_build.REFUSED_MODULES)
        if not importlib.import_module(module).__file__.endswith(".py")  # type: ignore[union-attr]
    )
    results: dict[str, float | str] = {}
    for module, name, call in cases:
        try:
            results[f"{module}: {name}"] = _time_case(call, repeat, target_ms)
        except Exception as exc:  # a case that breaks on one side is a finding, not a crash
            results[f"{module}: {name}"] = f"fails: {type(exc).__name__}: {exc}"[:120]
    print(json.dumps({"compiled": compiled, "ns": results}))


def _run_side(src_dir: Path, repeat: int, target_ms: float) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(src_dir), "PYTHONDONTWRITEBYTECODE": "1"}
    argv = [sys.executable, __file__, "--worker", f"--repeat={repeat}", f"--target-ms={target_ms}"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=1800)
    data: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return data


def _prepare(build_dir: Path, modules: list[str]) -> float:
    """Fresh pure/ and compiled/ copies of src/dynakv; returns the build time in s."""
    shutil.rmtree(build_dir, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", f"*{mypyc_build.EXT_SUFFIX}")
    for side in ("pure", "compiled"):
        shutil.copytree(REPO / "src" / "dynakv", build_dir / side / "dynakv", ignore=ignore)
    return mypyc_build.build(build_dir / "compiled", modules)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("modules", nargs="*", help="default: every measured module")
    parser.add_argument("--build-dir", type=Path, default=Path("/tmp/mypyc-build"))
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--target-ms", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two sides")
    parser.add_argument("--no-build", action="store_true", help="reuse --build-dir as it is")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.repeat, args.target_ms)
        return
    modules = args.modules or list(mypyc_build.KNOWN_MODULES)
    if not args.no_build:
        print(f"mypyc build of {len(modules)} modules: {_prepare(args.build_dir, modules):.1f} s")
    pure_ns: dict[str, float | str] = {}
    compiled_ns: dict[str, float | str] = {}
    compiled_modules: list[str] = []
    for _ in range(max(1, args.rounds)):  # alternate the sides, so a burst of load hits both
        for side, best in (("pure", pure_ns), ("compiled", compiled_ns)):
            data = _run_side(args.build_dir / side, args.repeat, args.target_ms)
            assert (data["compiled"] == []) == (side == "pure"), (side, data["compiled"])
            if side == "compiled":
                compiled_modules = data["compiled"]  # type: ignore[assignment]
            ns_by_case: dict[str, float | str] = data["ns"]  # type: ignore[assignment]
            for case, ns in ns_by_case.items():
                seen = best.get(case)
                if seen is None or isinstance(ns, str) or (isinstance(seen, float) and ns < seen):
                    best[case] = ns
    print(f"compiled side: {', '.join(compiled_modules)}")
    by_module: dict[str, list[float]] = {}
    print("\n| case | pure ns | mypyc ns | speedup |\n|---|---:|---:|---:|")
    for case, ns in pure_ns.items():
        other = compiled_ns[case]
        if isinstance(ns, str) or isinstance(other, str):
            shown = [value if isinstance(value, str) else f"{value:,.0f}" for value in (ns, other)]
            print(f"| {case} | {shown[0]} | {shown[1]} | - |")
            continue
        speedup = ns / other
        by_module.setdefault(case.split(":")[0], []).append(speedup)
        print(f"| {case} | {ns:,.0f} | {other:,.0f} | {speedup:.2f}x |")
    print("\n| module | cases | speedup (geometric mean) | >= 1.5x |\n|---|---:|---:|---|")
    for module, speedups in by_module.items():
        mean = math.exp(sum(math.log(s) for s in speedups) / len(speedups))
        verdict = "yes" if mean >= 1.5 else "no"
        print(f"| {module} | {len(speedups)} | {mean:.2f}x | {verdict} |")


if __name__ == "__main__":
    main()

"""Tables for bench/run.py: the console (rich) and the dated section of docs/benchmarks.md.

With several runs, each cell is the median over runs (throughput also shows
min-max); a ratio is the median of per-run ratios of workloads measured back to
back. A workload with any error is flagged in both outputs: its numbers do not
count.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from common import LoadResult, split_connections

DOC_MARKER = "<!-- bench/run.py adds each run below this line, newest first -->"
DOC_INTRO = f"""# Benchmarks

dynakv side by side with etcd (the peer from `../shared/PEERS.md`) on the
same machine, in the same run. Absolute numbers on a shared 2-core box move
with the other tenants' load: compare the **ratios** measured in one run, and
the **server CPU per operation**, which holds up better under contention.

Run it: `make bench`, or
`.venv/bin/python bench/run.py [--duration-s 15] [--connections 32] [--keys 10000] [--runs 1]
[--skip-etcd] [--out docs/benchmarks.md]`. See `bench/README.md` for the method.

Targets (issue 8): dynakv quorum puts ≥ 3x etcd puts; dynakv `one` gets ≥ 6x
etcd serializable gets and ≥ 0.5x one Redis's GETs; dynakv quorum gets ≥ 4x
etcd linearizable gets; each with p99 no worse than its peer's. dynakv
`strong` puts ≥ 2x etcd puts and `strong` gets ≥ 2x etcd linearizable gets
(`--suite strong`). Timing goals live here, never in the tests.

{DOC_MARKER}
"""


@dataclass(frozen=True)
class Comparison:
    label: str
    ratio: float
    cpu_ratio: float  # etcd CPU per op / dynakv CPU per op: > 1 means dynakv is cheaper
    target: float | None
    errors: bool
    per_run: tuple[float, ...] = ()  # throughput ratio of each run, in run order
    p99_ratio: float = float("nan")  # dynakv p99 / the peer's p99: <= 1 means no worse

    @property
    def verdict(self) -> str:
        if self.errors:
            return "INVALID (errors)"
        if self.target is None:
            return "no target"
        return "met" if self.ratio >= self.target else "MISSED"


@dataclass(frozen=True)
class Row:
    system: str
    label: str
    ops_per_s: float
    ops_min: float
    ops_max: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_op: float
    busy: float
    server_cores: float
    other_cores: float
    error_detail: str


def compare(
    label: str, mine: list[LoadResult], theirs: list[LoadResult], target: float | None
) -> Comparison:
    """``mine`` against ``theirs``, run i against run i (measured back to back)."""
    # The ratio of neighbours holds up better than a ratio of medians when another
    # tenant's load drifts.
    pairs = list(zip(mine, theirs, strict=True))
    ratios = [m.ops_per_s / t.ops_per_s for m, t in pairs if t.ops_per_s]
    cpu = [t.cpu_us_per_op / m.cpu_us_per_op for m, t in pairs if m.cpu_us_per_op]
    p99 = [m.percentile_ms(99) / t.percentile_ms(99) for m, t in pairs if t.percentile_ms(99)]
    return Comparison(
        label=label,
        ratio=statistics.median(ratios) if ratios else float("nan"),
        cpu_ratio=statistics.median(cpu) if cpu else float("nan"),
        target=target,
        errors=any(r.errors for r in [*mine, *theirs]),
        per_run=tuple(ratios),
        p99_ratio=statistics.median(p99) if p99 else float("nan"),
    )


def summarize(
    results: dict[tuple[str, str], list[LoadResult]], labels: dict[tuple[str, str], str]
) -> list[Row]:
    rows: list[Row] = []
    for key, runs in results.items():
        ops = [r.ops_per_s for r in runs]
        errors = sum(r.errors for r in runs)
        detail = ""
        if errors:
            bad = next(r for r in runs if r.errors)
            detail = f"status {bad.status}, socket {bad.socket_errors}, misses {bad.misses}; "
            detail += f"e.g. {bad.sample_error!r}"
        rows.append(
            Row(
                system=key[0],
                label=labels[key],
                ops_per_s=statistics.median(ops),
                ops_min=min(ops),
                ops_max=max(ops),
                p50_ms=statistics.median(r.percentile_ms(50) for r in runs),
                p99_ms=statistics.median(r.percentile_ms(99) for r in runs),
                errors=errors,
                cpu_us_per_op=statistics.median(r.cpu_us_per_op for r in runs),
                busy=statistics.median(r.machine_busy_fraction for r in runs),
                server_cores=statistics.median(r.server_cores for r in runs),
                other_cores=statistics.median(r.other_cores for r in runs),
                error_detail=detail,
            )
        )
    rows.sort(key=lambda row: row.system != "dynakv")  # stable: workloads keep their order
    return rows


def _ops_cell(row: Row, runs: int) -> str:
    if runs == 1:
        return f"{row.ops_per_s:,.0f}"
    return f"{row.ops_per_s:,.0f} [{row.ops_min:,.0f}-{row.ops_max:,.0f}]"


def _fmt(value: float, spec: str) -> str:
    return "—" if math.isnan(value) else format(value, spec)


def render_console(
    results: dict[tuple[str, str], list[LoadResult]],
    labels: dict[tuple[str, str], str],
    compared: list[Comparison],
    runs: int,
    *,
    title: str = "dynakv vs etcd",
    rows: list[Row] | None = None,
) -> None:
    """Print the results (``rows``, else every result in order) and the ratios."""
    console = Console(width=max(Console().width, 120))
    table = Table(title=f"{title} ({'median of ' + str(runs) + ' runs' if runs > 1 else '1 run'})")
    for column in (
        "system",
        "workload",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "server CPU µs/op",
        "server cores",
        "other load",
    ):
        table.add_column(column, justify="left" if column in ("system", "workload") else "right")
    if rows is None:
        rows = summarize(results, labels)
    for row in rows:
        table.add_row(
            row.system,
            row.label,
            _ops_cell(row, runs),
            _fmt(row.p50_ms, ".2f"),
            _fmt(row.p99_ms, ".2f"),
            f"[bold red]{row.errors:,}[/]" if row.errors else "0",
            _fmt(row.cpu_us_per_op, ".1f"),
            f"{row.server_cores:.2f}",
            f"{row.other_cores:.2f} cores",
        )
    console.print(table)
    for row in rows:
        if row.errors:
            console.print(
                f"[bold red]!!! {row.system} {row.label}: {row.errors:,} errors"
                f" — {row.error_detail}[/]"
            )
    if compared:
        ratios = Table(title="ratios (dynakv ÷ the other)")
        for column in (
            "comparison",
            "throughput",
            "target",
            "verdict",
            "CPU/op advantage",
            "p99 ÷ the other's",
        ):
            ratios.add_column(column)
        for item in compared:
            style = (
                "green"
                if item.verdict == "met"
                else "bold red"
                if item.target or item.errors
                else ""
            )
            ratios.add_row(
                item.label,
                f"{item.ratio:.2f}x",
                f"≥ {item.target:g}x" if item.target else "—",
                f"[{style}]{item.verdict}[/]" if style else item.verdict,
                f"{item.cpu_ratio:.2f}x",
                _fmt(item.p99_ratio, ".2f"),
            )
        console.print(ratios)


def render_markdown(
    *,
    started_at: Any,
    command: str,
    machine: dict[str, str],
    args: Any,
    results: dict[tuple[str, str], list[LoadResult]],
    labels: dict[tuple[str, str], str],
    compared: list[Comparison],
    notes: list[str],
) -> str:
    rows = summarize(results, labels)
    split = "/".join(str(n) for n in split_connections(args.connections, 3))
    lines = [
        f"## {started_at:%Y-%m-%d %H:%M} UTC — dynakv {machine.get('dynakv_commit', '?')}"
        + (f" vs etcd {machine['etcd']}" if "etcd" in machine else "")
        + (f" and Redis {machine['redis']}" if "redis" in machine else ""),
        "",
        f"- Machine: {machine['nproc']} CPUs ({machine['cpu']}), Linux {machine['kernel']}, "
        f"load average at start {machine['load_average_at_start']}, Python {machine['python']}",
        f"- Command: `{command}`",
        f"- Load: {machine['wrk']}, {args.connections} connections split {split} over the 3 "
        f"nodes (one `wrk -t1` per node, all at once), {args.duration_s} s per workload, "
        f"keys uniform over {args.keys:,}, 100-byte values"
        + (f", median of {args.runs} runs" if args.runs > 1 else ", 1 run"),
        "",
        *markdown_tables(rows, compared, args.runs),
    ]
    lines += ["", "Notes:", ""]
    lines += _noise_notes(results)
    if args.runs > 1:
        for item in compared:
            each = ", ".join(f"{ratio:.2f}x" for ratio in item.per_run)
            lines.append(f"- {item.label}, throughput ratio per run: {each}")
    for row in rows:
        if row.errors:
            lines.append(
                f"- **ERRORS in {row.system} {row.label}: {row.errors:,}** — {row.error_detail}"
            )
    lines += [f"- {note}" for note in notes]
    lines += [
        "- ops/s counts 2xx replies that carried the value; errors are non-2xx replies, "
        "reads without the value, socket errors and timeouts.",
        "- Server CPU µs/op: utime+stime of the server processes (all nodes or members) "
        "over the run ÷ requests; server cores: the same CPU time ÷ the run's duration. "
        "Other load: CPU used by neither the servers, wrk nor the idle peer cluster (other "
        "tenants, this harness), in cores; when it is high, absolute numbers are low and "
        "only ratios compare.",
        "- CPU/op advantage: the peer's CPU per op ÷ dynakv's (> 1: dynakv is cheaper); "
        "p99 ÷ peer's: dynakv's p99 latency ÷ the peer's (≤ 1: no worse).",
        "- Redis: one `redis-server` (no persistence), loaded by `redis-benchmark -c "
        f"{args.connections} -d 100 -r {args.keys}` unpipelined; its CPU is the one "
        "server process.",
        "- Batch rows: `POST /v1/batch`, 25 random keys per request; ops/s and CPU per "
        "op count keys, latency is per request.",
        "",
    ]
    return "\n".join(lines) + "\n"


def markdown_tables(rows: list[Row], compared: list[Comparison], runs: int) -> list[str]:
    """The results table and, if any, the ratios table, as Markdown lines."""
    lines = [
        "| system | workload | ops/s | p50 ms | p99 ms | errors | server CPU µs/op "
        "| server cores | other load |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        errors = f"**{row.errors:,}**" if row.errors else "0"
        lines.append(
            f"| {row.system} | {row.label} | {_ops_cell(row, runs)} "
            f"| {_fmt(row.p50_ms, '.2f')} "
            f"| {_fmt(row.p99_ms, '.2f')} | {errors} | {_fmt(row.cpu_us_per_op, '.1f')} "
            f"| {row.server_cores:.2f} | {row.other_cores:.2f} cores |"
        )
    if compared:
        lines += [
            "",
            "| dynakv ÷ the other | throughput | target | verdict | CPU/op advantage "
            "| p99 ÷ the other's |",
            "|---|--:|--:|---|--:|--:|",
        ]
        for item in compared:
            verdict = (
                item.verdict if item.verdict in ("met", "no target") else f"**{item.verdict}**"
            )
            target = f"≥ {item.target:g}x" if item.target else "—"
            lines.append(
                f"| {item.label} | {item.ratio:.2f}x | {target} | {verdict} "
                f"| {item.cpu_ratio:.2f}x | {_fmt(item.p99_ratio, '.2f')} |"
            )
    return lines


def _noise_notes(results: dict[tuple[str, str], list[LoadResult]]) -> list[str]:
    every = [r for runs in results.values() for r in runs]
    other = [r.other_cores for r in every]
    idle = [r.bystander_cores for r in every]
    busy = [r.machine_busy_fraction for r in every]
    notes = [
        f"Machine busy (all CPUs, /proc/stat) {min(busy):.0%}-{max(busy):.0%}; other load "
        f"{min(other):.2f}-{max(other):.2f} cores; the idle peer cluster used "
        f"{min(idle):.2f}-{max(idle):.2f} cores."
    ]
    # Measured, not the load average: that lags by minutes and counts our own last run.
    if statistics.median(other) > 0.2:
        notes.append(
            "**NOISY MACHINE**: other processes competed for the CPUs (median other load "
            f"{statistics.median(other):.2f} cores): "
            "absolute ops/s are low; compare ratios and CPU per op only. The scheduler shares "
            "CPU per runnable thread, so multi-threaded etcd (Go) wins a larger share than "
            "three single-threaded Python nodes (compare the server cores column): under such "
            "contention the throughput ratio understates dynakv and CPU per op is the fairer "
            "figure."
        )
    return [f"- {note}" for note in notes]


def update_doc(path: Path, section: str) -> None:
    """Insert the section right after the marker (newest first); create the doc if needed."""
    text = path.read_text() if path.exists() else DOC_INTRO
    if DOC_MARKER not in text:
        text = text.rstrip("\n") + "\n\n" + DOC_MARKER + "\n"
    head, tail = text.split(DOC_MARKER, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + DOC_MARKER + "\n\n" + section + tail.lstrip("\n"))

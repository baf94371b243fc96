"""Turn each backend's repeated runs into median and min-max, and a markdown table with ratios."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from benchmarks.workloads import Sizes

# metric key -> {"median", "min", "max", "n"}, or {"value", "n"} for flags and text
Summary = dict[str, dict[str, Any]]
SUBJECT = "rayjupyter"  # the backend every ratio is taken against


@dataclass(frozen=True)
class Row:
    """One line of the table: which metric, how to name it, and which direction is better."""

    key: str
    label: str
    unit: str
    better: str  # "lower", "higher" or "" (a yes/no flag)


def rows_for(sizes: Sizes) -> list[Row]:
    """The table's rows, labelled with the sizes run, so a quick run cannot pass for a full one."""
    size = _bytes_label(sizes.array_bytes)
    calls, tasks = f"{sizes.sync_calls:,}", f"{sizes.async_tasks:,}"
    actors, actor_calls = f"{sizes.actor_count:,}", f"{sizes.actor_async_calls:,}"
    chain = f"{sizes.chain_length:,}"
    primes = f"sum of primes below {sizes.primes_limit:,}, {sizes.primes_runs} times"
    return [
        Row("import_s", "import the library", "s", "lower"),
        Row("first_result_s", "start to first result", "s", "lower"),
        Row("shutdown_s", "shutdown, until every process exited", "s", "lower"),
        Row("idle_rss_mb", "idle RSS, whole process tree", "MB", "lower"),
        Row("idle_pss_mb", "idle PSS, whole process tree", "MB", "lower"),
        Row("idle_processes", "processes in the tree", "", "lower"),
        Row("sync_median_us", f"sync no-op round trip, median of {calls}", "us", "lower"),
        Row("sync_p99_us", f"sync no-op round trip, p99 of {calls}", "us", "lower"),
        Row("async_per_s", f"async throughput, {tasks} no-op tasks", "tasks/s", "higher"),
        Row("actor_create_1_s", "create 1 actor, get its first call", "s", "lower"),
        Row("actor_create_many_s", f"create {actors} actors, get a call from each", "s", "lower"),
        Row("actor_sync_median_us", f"actor call round trip, median of {calls}", "us", "lower"),
        Row("actor_sync_p99_us", f"actor call round trip, p99 of {calls}", "us", "lower"),
        Row("actor_async_per_s", f"actor calls async, {actor_calls} to one", "calls/s", "higher"),
        Row("chain_s", f"dependency chain of {chain} tasks", "s", "lower"),
        Row("put_gbps", f"put {size} numpy array", "GB/s", "higher"),
        Row("get_gbps", f"get {size} numpy array", "GB/s", "higher"),
        Row("get_ms", f"get {size} numpy array", "ms", "lower"),
        Row("get_zero_copy", "get is zero-copy (read-only, in shared memory)", "", ""),
        Row("ref_sum_first_s", f"task sums a {size} ref, first call", "s", "lower"),
        Row("ref_sum_s", f"task sums a {size} ref, warm workers", "s", "lower"),
        Row("value_sum_first_s", f"task({size} array by value), first call", "s", "lower"),
        Row("value_sum_s", f"task({size} array by value), warm", "s", "lower"),
        Row("primes_par_s", f"{primes}, parallel", "s", "lower"),
        Row("primes_speedup", f"{primes}: sequential / parallel", "x", "higher"),
    ]


def summarize(runs: list[dict[str, Any]]) -> Summary:
    """Median and min-max of each numeric metric over the runs; flags agree or are marked mixed."""
    values: dict[str, list[Any]] = {}
    for run in runs:
        for key, value in run.get("metrics", {}).items():
            values.setdefault(key, []).append(value)
    summary: Summary = {}
    for key, seen in values.items():
        if all(v is None for v in seen):
            summary[key] = {"value": None, "n": len(seen)}
        elif all(isinstance(v, bool) for v in seen):
            summary[key] = {"value": seen[0] if len(set(seen)) == 1 else "mixed", "n": len(seen)}
        elif all(isinstance(v, (int, float)) for v in seen):
            median = statistics.median(seen)
            summary[key] = {"median": median, "min": min(seen), "max": max(seen), "n": len(seen)}
        else:
            summary[key] = {"value": seen[-1], "n": len(seen)}
    return summary


def markdown_table(backends: dict[str, dict[str, Any]], sizes: Sizes) -> str:
    """One column per backend ("median (min-max)") and one ratio column rayjupyter/peer per peer."""
    names = list(backends)
    peers = [name for name in names if name != SUBJECT] if SUBJECT in names else []
    header = ["workload", "unit", "better", *names, *(f"{SUBJECT}/{peer}" for peer in peers)]
    lines = [_md_row(header), _md_row(["---"] * 3 + ["---:"] * (len(header) - 3))]
    statuses = [_status(backends[name]) for name in names]
    lines.append(_md_row(["status", "", "", *statuses, *([""] * len(peers))]))
    for row in rows_for(sizes):
        cells = [_cell(backends[name], row.key) for name in names]
        ratios = [_ratio(backends.get(SUBJECT, {}), backends[peer], row.key) for peer in peers]
        lines.append(_md_row([row.label, row.unit, row.better, *cells, *ratios]))
    return "\n".join(lines)


def notes(backends: dict[str, dict[str, Any]], backend_notes: dict[str, str]) -> list[str]:
    """What each backend's operations mean, and every failure in full, for under the table."""
    out = [backend_notes[name] for name in backends if backend_notes.get(name)]
    for name, info in backends.items():
        if info.get("status", "ok") != "ok":
            out.append(f"{name}: {info['status']}")
        for step, message in info.get("errors", {}).items():
            out.append(f"{name}: {step}: {message}")
    return out


def _status(info: dict[str, Any]) -> str:
    """The word ok, or the start of the reason a backend could not run."""
    status = str(info.get("status", "ok"))
    return status if len(status) <= 60 else status[:57] + "..."


def _cell(info: dict[str, Any], key: str) -> str:
    """Median (min-max) for a measured metric, yes/no for a flag, or why there is no value."""
    if info.get("status", "ok") != "ok":
        return "unavailable"
    stat = info.get("summary", {}).get(key)
    if stat is None:
        return "error" if info.get("errors") else "n/a"
    if "value" in stat:
        value = stat["value"]
        if value is None:
            return "n/a"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return str(value)
    if stat["n"] == 1 or stat["min"] == stat["max"]:
        return _num(stat["median"])
    return f"{_num(stat['median'])} ({_num(stat['min'])}-{_num(stat['max'])})"


def _ratio(subject: dict[str, Any], peer: dict[str, Any], key: str) -> str:
    """rayjupyter's median over the peer's, or blank when either is missing or it is a flag."""
    if subject.get("status", "ok") != "ok" or peer.get("status", "ok") != "ok":
        return ""
    mine = subject.get("summary", {}).get(key, {})
    theirs = peer.get("summary", {}).get(key, {})
    if "median" not in mine or "median" not in theirs or not theirs["median"]:
        return ""
    return f"{_num(mine['median'] / theirs['median'])}x"


def _num(value: float) -> str:
    """About three significant figures, thousands separators, never e-notation: readable columns."""
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.{2 - math.floor(math.log10(abs(value)))}f}"


def _bytes_label(n: int) -> str:
    """1000000000 -> "1 GB", 100000000 -> "100 MB"."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


def _md_row(cells: list[str]) -> str:
    """A markdown table row."""
    return "| " + " | ".join(cells) + " |"

"""The scale suite's report: one growth table per workload and the targets, from its JSON."""

from __future__ import annotations

from typing import Any

from benchmarks.report import _num

SUBJECT, PEER = "rayjupyter", "ray"
TITLES = {
    "tasks": "Queued no-op tasks from one driver, 2 CPUs",
    "actors": "Actors on a 2-CPU node, until all answer one call",
    "objects": "Small objects (100 bytes) put, got back and freed, 2 CPUs",
    "fanout": "Fan-out of {fanout} no-op tasks over one-CPU nodes on this machine",
    "tree": "Binary tree of nested tasks (each waits on its 2 children), 2 CPUs",
}
SIZE_NAMES = {"tasks": "tasks", "actors": "actors", "objects": "objects", "fanout": "nodes"}
# workload -> (metric, label, better); a metric is a key of the child's metrics, "peak.X"
# (sampled from outside) or one derived in ``value``
METRICS: dict[str, list[tuple[str, str, str]]] = {
    "tasks": [
        ("s", "submit and get all, s", "lower"),
        ("per_s", "tasks/s", "higher"),
        ("peak.driver_mb", "peak driver PSS, MB", "lower"),
        ("peak.node_mb", "peak node PSS (node + workers), MB", "lower"),
        ("per_unit_bytes", "peak PSS over idle per task, bytes", "lower"),
        ("after_over_idle_mb", "PSS after, over idle, MB", "lower"),
    ],
    "actors": [
        ("s", "create all, one call on each answered, s", "lower"),
        ("per_actor_mb", "PSS per actor, MB", "lower"),
        ("held_processes", "processes with every actor alive", "lower"),
        ("peak.total_mb", "peak PSS, whole tree, MB", "lower"),
        ("after_over_idle_mb", "PSS after killing them, over idle, MB", "lower"),
    ],
    "objects": [
        ("put_s", "put all, s", "lower"),
        ("get_s", "get all, s", "lower"),
        ("per_object_bytes", "PSS over idle per object held, bytes", "lower"),
        ("peak.total_mb", "peak PSS, whole tree, MB", "lower"),
        ("after_over_idle_mb", "PSS after freeing, over idle, MB", "lower"),
    ],
    "fanout": [
        ("start_nodes_s", "start the nodes, s", "lower"),
        ("s", "fan-out, s", "lower"),
        ("nodes_used", "nodes that ran tasks", "higher"),
        ("head_idle_cpu_pct", "head CPU at idle, %", "lower"),
        ("head_idle_mb", "head PSS at idle, MB", "lower"),
        ("head_load_cpu_pct", "head CPU under the fan-out, %", "lower"),
        ("head_cpu_ms_per_task", "head CPU per task in the fan-out, ms", "lower"),
        ("head_load_mb", "head PSS after the fan-out, MB", "lower"),
        ("peak.total_mb", "peak PSS, whole cluster, MB", "lower"),
    ],
    "tree": [
        ("tasks", "tasks (2^depth - 1)", ""),
        ("s", "all done, s", "lower"),
        ("peak.processes", "peak processes", "lower"),
        ("peak.total_mb", "peak PSS, whole tree, MB", "lower"),
        ("after_over_idle_mb", "PSS after, over idle, MB", "lower"),
    ],
}
# "ahead of Ray": faster and lighter, row by row, and a head that works less for a fan-out
AHEAD_METRICS = ("s", "peak.total_mb", "head_cpu_ms_per_task")


def value(row: dict[str, Any], metric: str) -> float | None:
    """One metric of a row that ran, or None."""
    if row.get("status") != "ok":
        return None
    if metric.startswith("peak."):
        got = row.get("peak", {}).get(metric[5:])
    elif metric == "per_unit_bytes":
        m = row["metrics"]
        peak = max(row.get("peak", {}).get("total_mb", 0.0), m.get("held_mb", 0.0))
        idle = m.get("idle_driver_mb", 0.0) + m.get("idle_node_mb", 0.0)
        got = (peak - idle) * 1e6 / row["size"] if peak else None
    else:
        got = row.get("metrics", {}).get(metric)
    return None if got is None else float(got)


def size_label(workload: str, size: int) -> str:
    if workload == "tree":
        return f"depth {size}"
    return f"{size:,} {SIZE_NAMES[workload]}"


def table(record: dict[str, Any], workload: str) -> str:
    """Rows by size and metric, one column per backend and the ratio rayjupyter/Ray."""
    rows = [r for r in record["rows"] if r["workload"] == workload]
    backends = [b for b in (SUBJECT, PEER) if any(r["backend"] == b for r in rows)]
    both = len(backends) == 2
    title = TITLES[workload].format(fanout=f"{record['config'].get('fanout_tasks', 0):,}")
    head = ["size", "metric", *backends] + ([f"{SUBJECT}/{PEER}"] if both else [])
    lines = [f"### {title}", "", _md(head), _md(["---", "---"] + ["---:"] * (len(head) - 2))]
    by = {(r["backend"], r["size"]): r for r in rows}
    for size in sorted({r["size"] for r in rows}):
        label = size_label(workload, size)
        found = [by.get((b, size)) for b in backends]
        statuses = [r["status"] if r else "not asked" for r in found]
        lines.append(_md([label, "status", *statuses] + ([""] if both else [])))
        for metric, name, better in METRICS[workload]:
            got = [value(r, metric) if r else None for r in found]
            if all(v is None for v in got):
                continue
            cells = ["" if v is None else _num(round(v, 3)) for v in got]
            ratio = []
            if both:
                mine, theirs = got
                ok = mine is not None and theirs
                ratio = [f"{_num(round(mine / theirs, 3))}x" if ok else ""]  # type: ignore[operator]
            arrow = {"lower": " (lower is better)", "higher": " (higher is better)"}.get(better, "")
            lines.append(_md(["", name + arrow, *cells, *ratio]))
    return "\n".join(lines)


def targets(record: dict[str, Any]) -> list[str]:
    """The issue's targets, each with the figures that meet or miss it."""
    rows = record["rows"]
    ours = [r for r in rows if r["backend"] == SUBJECT]
    out = []
    for workload, what in (("tasks", "tasks"), ("actors", "actors")):
        done = sorted(
            (r for r in ours if r["workload"] == workload and r["status"] == "ok"),
            key=lambda r: r["size"],
        )
        if len(done) >= 2:
            small, big = done[-2], done[-1]
            grow, took = big["size"] / small["size"], value(big, "s") / value(small, "s")  # type: ignore[operator]
            verdict = "met" if took <= 1.2 * grow else "MISSED"
            out.append(
                f"linear time in {what}: {big['size']:,} took {took:.1f}x the {small['size']:,} "
                f"run for {grow:g}x the {what} (target <= {1.2 * grow:g}x): {verdict}"
            )
    tasks = [r for r in ours if r["workload"] == "tasks" and r["status"] == "ok"]
    if tasks:
        big = max(tasks, key=lambda r: r["size"])
        per = value(big, "per_unit_bytes") or 0.0
        verdict = "met" if per < 2048 else "MISSED"
        out.append(
            f"memory per queued task at {big['size']:,}: {per:,.0f} bytes (< 2 KB): {verdict}"
        )
    behind = []
    compared = 0
    for row in ours:
        peer = next(
            (
                r
                for r in rows
                if r["backend"] == PEER
                and r["workload"] == row["workload"]
                and r["size"] == row["size"]
            ),
            None,
        )
        for metric in AHEAD_METRICS:
            mine = value(row, metric)
            theirs = value(peer, metric) if peer else None
            if mine is None or theirs is None:
                continue
            compared += 1
            if mine > theirs:
                label = size_label(row["workload"], row["size"])
                behind.append(f"{row['workload']} {label} {metric}: {mine:,.2f} vs {theirs:,.2f}")
    if compared:
        verdict = "met" if not behind else "MISSED: " + "; ".join(behind)
        what = f"time, peak PSS, head CPU per fan-out task: {compared} comparisons"
        out.append(f"ahead of Ray ({what}): {verdict}")
    kept = []
    for row in (r for r in ours if r["status"] == "ok" and r["workload"] != "fanout"):
        m = row["metrics"]
        idle = m.get("idle_driver_mb", 0.0) + m.get("idle_node_mb", 0.0)
        grew = max(row.get("peak", {}).get("total_mb", 0.0), m.get("held_mb", 0.0)) - idle
        left = m.get("after_over_idle_mb")
        if left is not None and left > max(5.0, 0.1 * grew):
            label = size_label(row["workload"], row["size"])
            kept.append(f"{row['workload']} {label}: {left:,.0f} of {grew:,.0f} MB")
    if ours:
        verdict = "met" if not kept else "MISSED: " + "; ".join(kept)
        out.append(f"memory back to idle (within 5 MB or 10% of the growth): {verdict}")
    failed = [r for r in ours if r["status"] != "ok" and not r["status"].startswith("not run")]
    skipped = [r for r in ours if r["status"].startswith("not run")]
    verdict = (
        "met"
        if not failed
        else "MISSED: "
        + "; ".join(
            f"{r['workload']} {size_label(r['workload'], r['size'])}: {r['status']}" for r in failed
        )
    )
    out.append(f"no rayjupyter workload hangs or dies ({len(ours)} rows): {verdict}")
    for r in skipped:
        out.append(
            f"(rayjupyter {r['workload']} {size_label(r['workload'], r['size'])}: {r['status']})"
        )
    return out


def report(record: dict[str, Any]) -> str:
    """Every workload's table, then the targets."""
    parts = [table(record, w) for w in record["config"]["workloads"]]
    parts.append("### Targets\n\n" + "\n".join(f"- {line}" for line in targets(record)))
    return "\n\n".join(parts)


def _md(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"

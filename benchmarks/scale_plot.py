"""Log-log plots of the scale suite's growth, drawn from its JSON alone (so any saved run can
be re-plotted): ``python -m benchmarks.scale_plot benchmarks/results/scale.json``.

With matplotlib installed: one PNG beside the JSON; otherwise with bokeh: one HTML page
(bokeh's JavaScript from its CDN). Each workload is a row of two panels, time and peak PSS
of the whole tree against what grew, one line per backend; rows that did not run are left
out of the lines.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.scale import units
from benchmarks.scale_report import TITLES, value

X_NAMES = {
    "tasks": "queued tasks",
    "actors": "actors",
    "objects": "objects",
    "fanout": "nodes",
    "tree": "tasks in the tree",
}
PANELS = (("s", "time, s"), ("peak.total_mb", "peak PSS, whole tree, MB"))
COLORS = {"rayjupyter": "#d62728", "ray": "#1f77b4"}


def series(record: dict[str, Any]) -> dict[str, dict[str, dict[str, list[tuple[float, float]]]]]:
    """workload -> metric -> backend -> [(x, y)], the points that ran, x ascending."""
    out: dict[str, dict[str, dict[str, list[tuple[float, float]]]]] = {}
    for row in record["rows"]:
        for metric, _ in PANELS:
            y = value(row, metric)
            if y is None or y <= 0:
                continue
            x = float(units(row["workload"], row["size"]))
            out.setdefault(row["workload"], {}).setdefault(metric, {})
            out[row["workload"]][metric].setdefault(row["backend"], []).append((x, y))
    for metrics in out.values():
        for backends in metrics.values():
            for points in backends.values():
                points.sort()
    return out


def plot(json_path: Path) -> list[Path]:
    """Draw the plots for the run saved at ``json_path``; the files written (none without a
    plotting library)."""
    record = json.loads(Path(json_path).read_text(encoding="utf-8"))
    data = series(record)
    if not data:
        return []
    if importlib.util.find_spec("matplotlib") is not None:
        return [_matplotlib(record, data, Path(json_path).with_suffix(".png"))]
    if importlib.util.find_spec("bokeh") is not None:
        return [_bokeh(record, data, Path(json_path).with_suffix(".html"))]
    print("no plot: neither matplotlib nor bokeh is installed", file=sys.stderr)
    return []


def _title(record: dict[str, Any], workload: str) -> str:
    return TITLES[workload].format(fanout=f"{record['config'].get('fanout_tasks', 0):,}")


def _matplotlib(record: dict[str, Any], data: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w for w in record["config"]["workloads"] if w in data]
    fig, axes = plt.subplots(len(workloads), 2, figsize=(11, 3.2 * len(workloads)), squeeze=False)
    for i, workload in enumerate(workloads):
        for j, (metric, label) in enumerate(PANELS):
            ax = axes[i][j]
            for backend, points in data[workload].get(metric, {}).items():
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, "o-", color=COLORS.get(backend), label=backend)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(X_NAMES[workload])
            ax.set_ylabel(label)
            ax.set_title(_title(record, workload), fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _bokeh(record: dict[str, Any], data: dict, out: Path) -> Path:
    from bokeh.io import output_file, save
    from bokeh.layouts import gridplot
    from bokeh.plotting import figure

    grid = []
    for workload in (w for w in record["config"]["workloads"] if w in data):
        line = []
        for metric, label in PANELS:
            fig = figure(
                title=_title(record, workload),
                x_axis_type="log",
                y_axis_type="log",
                x_axis_label=X_NAMES[workload],
                y_axis_label=label,
                width=520,
                height=300,
            )
            for backend, points in data[workload].get(metric, {}).items():
                xs, ys = (list(v) for v in zip(*points, strict=True))
                color = COLORS.get(backend, "black")
                fig.line(xs, ys, color=color, legend_label=backend, line_width=2)
                fig.scatter(xs, ys, color=color, size=7, legend_label=backend)
            fig.legend.location = "top_left"
            line.append(fig)
        grid.append(line)
    output_file(out, title="rayjupyter scale suite")
    save(gridplot(grid), filename=out, resources="cdn", title="rayjupyter scale suite")
    return out


def main(argv: list[str] | None = None) -> int:
    paths = (argv if argv is not None else sys.argv[1:]) or ["benchmarks/results/scale.json"]
    for path in paths:
        for written in plot(Path(path)):
            print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

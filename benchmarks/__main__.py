"""``python -m benchmarks``: time rayjupyter beside Ray, Dask and multiprocessing; table + JSON."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import machine, report, runner
from benchmarks.backends import BACKENDS, PEER_MODULES, PEERS
from benchmarks.child import SIZES

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Smoke runs get their own files, so they never overwrite the full run's latest.json.
DEFAULT_JSON = {"full": "latest.json", "quick": "quick.json", "tiny": "tiny.json"}
# Per backend run: a hang is reported as unavailable, not waited on.
DEFAULT_TIMEOUT_S = {"full": 600.0, "quick": 180.0, "tiny": 120.0}


def main(argv: list[str] | None = None) -> int:
    """Run the backends, print the table and notes, write JSON (and the table as .md beside it)."""
    args = _parser().parse_args(argv)
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    names = ["rayjupyter", *_peers(args.against)]
    timeout_s = args.timeout or DEFAULT_TIMEOUT_S[size]
    info = machine.machine_info(runner.REPO_ROOT)
    print(f"benchmarking {', '.join(names)}: {size} sizes, {args.repeat} runs", file=sys.stderr)
    backends = runner.run_all(names, size, args.repeat, timeout_s, args.num_cpus)
    for entry in backends.values():
        entry["summary"] = report.summarize(entry["runs"])
    table = report.markdown_table(backends, SIZES[size])
    lines = report.notes(backends, {name: BACKENDS[name].note for name in names})
    bullets = [f"- {line}" for line in lines]
    text = "\n".join([f"Machine: {machine.summary_line(info)}", "", table, "", *bullets])
    print(text)
    record: dict[str, Any] = {
        "machine": info,
        "config": {
            "size": size,
            "sizes": SIZES[size].as_dict(),
            "repeat": args.repeat,
            "num_cpus": args.num_cpus,
        },
        "backends": backends,
        "table_markdown": table,
        "notes": lines,
    }
    out = args.json or RESULTS_DIR / DEFAULT_JSON[size]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    """The command line; every option has a default that gives the full, comparable run."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--against",
        help=f"comma-separated peers among {','.join(PEERS)}, or none (default: installed ones)",
    )
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="100 MB arrays, 200 tasks: smoke run")
    sizes.add_argument("--tiny", action="store_true", help="1 MB arrays, 20 tasks: for the tests")
    parser.add_argument("--repeat", type=_positive_int, default=3, help="runs per backend")
    parser.add_argument("--json", type=Path, help="result file (default results/latest.json)")
    parser.add_argument("--timeout", type=float, help="seconds one backend run may take")
    parser.add_argument("--num-cpus", type=_positive_int, default=2, help="workers per backend")
    return parser


def _peers(against: str | None) -> list[str]:
    """The peers asked for, or by default every peer whose library imports here."""
    if against is None:
        return [peer for peer in PEERS if importlib.util.find_spec(PEER_MODULES[peer]) is not None]
    chosen = [name for name in (part.strip() for part in against.split(",")) if name != "none"]
    chosen = [name for name in chosen if name]
    unknown = [name for name in chosen if name not in PEERS]
    if unknown:
        valid = ",".join(PEERS)
        raise SystemExit(
            f"--against: unknown peer {', '.join(unknown)}; use some of {valid}, or none"
        )
    return chosen


def _positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())

"""Run Ray's test files against rayjupyter (through the shim) and against Ray, side by side.

Each file runs in a fresh ``pytest`` process per side, with our fixtures (``plugin.py``), a
per-test timeout and a per-file wall limit; the process group is ended afterwards, so a
hung test or a leftover daemon does not outlive its file. Outcomes are read from pytest's
JUnit XML, so a crash in a test never loses the others' results.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SHIM = HERE / "shim"
STUBS = HERE / "stubs"
TARGETS = ("rayjupyter", "ray")
DEFAULT_FILES = (
    "test_basic.py",
    "test_basic_2.py",
    "test_actor.py",
    "test_actor_failures.py",
    "test_failure.py",
    "test_failure_2.py",
    "test_failure_3.py",
    "test_failure_4.py",
    "test_placement_group.py",
    "test_runtime_context.py",
    "test_queue.py",
    "test_streaming_generator.py",
    "test_baseexceptionandgroup.py",
)


@dataclass
class TestResult:
    outcome: str  # passed | failed | error | skipped
    message: str = ""
    seconds: float = 0.0


@dataclass
class FileRun:
    target: str
    file: str
    wall_s: float
    timed_out: bool
    tests: dict[str, TestResult] = field(default_factory=dict)
    note: str = ""

    def count(self, outcome: str) -> int:
        if outcome == "failed":
            return sum(r.outcome in ("failed", "error") for r in self.tests.values())
        return sum(r.outcome == outcome for r in self.tests.values())


def _env(target: str) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO)]
    if target == "rayjupyter":
        paths.insert(0, str(SHIM))
    if importlib.util.find_spec("setproctitle") is None:
        paths.append(str(STUBS))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["RAY_COMPAT_TARGET"] = target
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    for name in ("RAY_ADDRESS", "RAYJUPYTER_ADDRESS"):
        env.pop(name, None)
    if target == "rayjupyter":  # never attach to a head someone started on this machine
        env["RAYJUPYTER_ADDRESS"] = "local"
    return env


def _parse_junit(path: Path) -> dict[str, TestResult]:
    results: dict[str, TestResult] = {}
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        name = case.get("name", "?")
        seconds = float(case.get("time", "0") or 0)
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                message = (child.get("message") or child.text or "").strip()
                break
            if child.tag == "skipped":
                outcome = "skipped"
                message = (child.get("message") or "").strip()
        if name in results and results[name].outcome == "passed" and outcome == "error":
            results[name] = TestResult("error", message, seconds)  # teardown error
        elif name not in results:
            results[name] = TestResult(outcome, message[:500], seconds)
    return results


def _read_results(path: Path) -> dict[str, TestResult]:
    """The plugin's per-test records: a failed teardown turns a pass into an error."""
    results: dict[str, TestResult] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        name, outcome = record["name"], record["outcome"]
        known = results.get(name)
        if known is not None and not (known.outcome == "passed" and outcome == "error"):
            continue
        results[name] = TestResult(outcome, record["message"], record["seconds"])
    return results


def run_file(
    target: str, tests_dir: Path, name: str, test_timeout: int, file_timeout: int
) -> FileRun:
    """One file on one side, in a process group of its own that is ended afterwards.

    Its TMPDIR is a folder of its own, so a Ray cluster that another run (or anyone else)
    started on this machine is never the one ``ray.init()`` finds and attaches to.
    """
    with tempfile.TemporaryDirectory(prefix="ray-compat-") as tmp:
        xml = Path(tmp) / "junit.xml"
        records = Path(tmp) / "results.jsonl"
        cmd = [
            sys.executable, "-m", "pytest", str(tests_dir / name),
            "-p", "benchmarks.ray_compat.plugin", "-p", "no:cacheprovider",
            "-c", os.devnull, "--rootdir", str(tests_dir), "-q", "--no-header",
            f"--timeout={test_timeout}", f"--junitxml={xml}", "-o", "junit_family=xunit1",
        ]  # fmt: skip
        env = _env(target)
        env.update(RAY_COMPAT_RESULTS=str(records), TMPDIR=tmp)
        start = time.monotonic()
        with open(Path(tmp) / "out.txt", "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            timed_out = False
            try:
                proc.wait(timeout=file_timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group we started, leftovers included
            proc.wait()
        wall = time.monotonic() - start
        run = FileRun(target, name, round(wall, 1), timed_out)
        if xml.exists():
            run.tests = _parse_junit(xml)
        elif records.exists():  # pytest died (or hit the wall limit): what it had finished
            run.tests = _read_results(records)
            run.note = "pytest ended early" + (" (file wall limit)" if timed_out else "")
        else:
            tail = (Path(tmp) / "out.txt").read_text(errors="replace")[-2000:]
            run.note = "no results" + (" (file wall limit reached)" if timed_out else "")
            run.tests = {"<file>": TestResult("error", tail)}
        return run


def _line(cells: list[str], widths: list[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"


def table(runs: dict[str, dict[str, FileRun]], files: list[str]) -> str:
    """Markdown: per file, passed/failed/skipped on each side and wall seconds."""
    head = [
        "file",
        "rayjupyter pass/fail/skip",
        "Ray pass/fail/skip",
        "pass on Ray, not here",
        "wall s (rj / Ray)",
    ]
    rows = []
    totals = {t: [0, 0, 0] for t in TARGETS}
    lost_total = 0
    for name in files:
        cells = [name]
        for target in TARGETS:
            run = runs.get(target, {}).get(name)
            if run is None:
                cells.append("-")
                continue
            counts = [run.count("passed"), run.count("failed"), run.count("skipped")]
            totals[target] = [a + b for a, b in zip(totals[target], counts, strict=True)]
            cells.append("/".join(map(str, counts)) + (" (limit)" if run.timed_out else ""))
        lost = lost_on_rayjupyter(runs, name)
        lost_total += len(lost)
        cells.append(str(len(lost)))
        cells.append(
            " / ".join(
                str(runs[t][name].wall_s) if name in runs.get(t, {}) else "-" for t in TARGETS
            )
        )
        rows.append(cells)
    rows.append(
        [
            "total",
            "/".join(map(str, totals["rayjupyter"])),
            "/".join(map(str, totals["ray"])),
            str(lost_total),
            "",
        ]
    )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [_line(head, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [_line(r, widths) for r in rows]
    ray_pass = totals["ray"][0]
    if ray_pass:
        kept = ray_pass - lost_total
        lines.append(
            f"\nOf {ray_pass} tests that pass on Ray, {kept} pass on rayjupyter "
            f"({100 * kept / ray_pass:.1f}%)."
        )
    return "\n".join(lines)


def lost_on_rayjupyter(runs: dict[str, dict[str, FileRun]], name: str) -> list[str]:
    """Tests of one file that pass on Ray and do not pass on rayjupyter."""
    ray_run, rj_run = runs.get("ray", {}).get(name), runs.get("rayjupyter", {}).get(name)
    if ray_run is None or rj_run is None:
        return []
    return sorted(
        t
        for t, r in ray_run.tests.items()
        if r.outcome == "passed" and rj_run.tests.get(t, TestResult("missing")).outcome != "passed"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_compat", description=__doc__)
    parser.add_argument(
        "--tests",
        required=True,
        type=Path,
        help="folder holding Ray's test files (outside this repository)",
    )
    parser.add_argument(
        "files", nargs="*", help=f"files in it (default: {' '.join(DEFAULT_FILES)})"
    )
    parser.add_argument("--targets", default="rayjupyter,ray", help="rayjupyter, ray or both")
    parser.add_argument("--test-timeout", type=int, default=60, help="seconds per test")
    parser.add_argument("--file-timeout", type=int, default=900, help="seconds per file and side")
    parser.add_argument("--json", type=Path, help="write every test's outcome here")
    parser.add_argument(
        "--reuse",
        type=Path,
        action="append",
        default=[],
        help="figures of earlier --json outputs (repeatable): the files and sides run now "
        "replace theirs",
    )
    args = parser.parse_args(argv)
    files = args.files or [f for f in DEFAULT_FILES if (args.tests / f).exists()]
    targets = [t for t in args.targets.split(",") if t]
    for target in targets:
        if target not in TARGETS:
            parser.error(f"unknown target {target!r}: use rayjupyter, ray or both")
    runs: dict[str, dict[str, FileRun]] = {t: {} for t in TARGETS}
    for earlier in args.reuse:
        old = json.loads(earlier.read_text())
        for target, by_file in old["runs"].items():
            for name, run in by_file.items():
                tests = {k: TestResult(**v) for k, v in run.pop("tests").items()}
                runs[target][name] = FileRun(**run, tests=tests)
    for name in files:
        for target in targets:
            run = run_file(target, args.tests, name, args.test_timeout, args.file_timeout)
            runs[target][name] = run
            print(
                f"{target:10} {name:32} pass {run.count('passed'):3} fail "
                f"{run.count('failed'):3} skip {run.count('skipped'):3}  {run.wall_s}s",
                flush=True,
            )
    print()
    print(table(runs, files))
    if args.json:
        commits = args.tests / "COMMITS.txt"
        payload = {
            "tests_dir": str(args.tests),
            "sources": commits.read_text() if commits.exists() else "",
            "runs": {t: {n: asdict(r) for n, r in by.items()} for t, by in runs.items()},
            "pass_on_ray_not_rayjupyter": {n: lost_on_rayjupyter(runs, n) for n in files},
        }
        args.json.write_text(json.dumps(payload, indent=1))
    return 0

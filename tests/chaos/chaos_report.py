"""The chaos suite's and the fuzzer's figures: one row per fault kind (or socket), printed at
the end of the pytest session and written to test-artifacts/ as JSON.

Registered as a plugin by the first test that records something (``reporter(config)``), so
no conftest.py is needed in tests/chaos (one there would shadow tests/conftest.py as the
``conftest`` module other tests import from).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PLUGIN_NAME = "rayjupyter-chaos-report"


@dataclass
class FaultRow:
    """What one fault kind did over all its runs."""

    fault: str
    where: str  # "loopback" or "netns"
    runs: int = 0
    faults: int = 0  # faults injected
    tasks: int = 0
    ok: int = 0  # tasks whose result was right
    clear_errors: int = 0  # tasks that failed with the error the fault allows (disk full)
    lost: int = 0  # tasks with no right result and no allowed error: must be 0
    duplicated: int = 0  # extra side effects (an index done more than once)
    duplicates_allowed: bool = False  # at-least-once applies: retries after a death
    detect_s: list[float] = field(default_factory=list)  # fault -> the cluster shows it
    recover_s: list[float] = field(default_factory=list)  # fault -> the cluster is whole
    undetected: int = 0  # faults whose detection was expected but not seen in time
    seconds: float = 0.0  # wall time spent on this kind
    notes: list[str] = field(default_factory=list)
    outcome: str = ""  # passed / failed / xfailed (filled from the test's report)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("detect_s", "recover_s"):
            values = data.pop(key)
            data[f"{key}_max"] = round(max(values), 3) if values else None
            data[f"{key}_median"] = round(sorted(values)[len(values) // 2], 3) if values else None
        return data


@dataclass
class FuzzRow:
    """What the fuzzer sent to one socket and what came of it."""

    target: str
    phase: str  # "before auth" / "after auth"
    frames: int = 0
    crashes: int = 0  # the node process died, or stopped answering a real client
    errors_answered: int = 0  # an error reply (or an HTTP 4xx)
    closed: int = 0  # the connection was closed on us
    server_errors: int = 0  # HTTP 5xx
    unpickled_before_auth: int = 0  # marker files that appeared: must be 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    outcome: str = ""


class Report:
    """Collects rows during the session; prints and writes them at its end."""

    def __init__(self) -> None:
        self.faults: dict[tuple[str, str], FaultRow] = {}
        self.fuzz: dict[tuple[str, str], FuzzRow] = {}
        self.owner: dict[str, list[FaultRow | FuzzRow]] = {}  # test nodeid -> its rows
        self.seed: int | None = None

    def fault(self, nodeid: str, fault: str, where: str) -> FaultRow:
        row = self.faults.setdefault((fault, where), FaultRow(fault, where))
        self.owner.setdefault(nodeid, []).append(row)
        return row

    def fuzz_row(self, nodeid: str, target: str, phase: str) -> FuzzRow:
        row = self.fuzz.setdefault((target, phase), FuzzRow(target, phase))
        self.owner.setdefault(nodeid, []).append(row)
        return row

    # -- pytest hooks

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
            return
        outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        if hasattr(report, "wasxfail") and report.outcome == "passed":
            outcome = "XPASS"
        for row in self.owner.get(report.nodeid, []):
            row.outcome = outcome

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.faults and not self.fuzz:
            return
        write = terminalreporter.write_line
        if self.faults:
            terminalreporter.section(f"chaos: faults (seed {self.seed})")
            header = (
                f"{'fault':<22}{'where':<9}{'runs':>5}{'faults':>7}{'tasks':>7}{'ok':>6}"
                f"{'clear':>6}{'lost':>6}{'dup':>5}{'dup ok':>7}{'detect s':>10}"
                f"{'recover s':>11}  outcome"
            )
            write(header)
            for row in self.faults.values():
                write(
                    f"{row.fault:<22}{row.where:<9}{row.runs:>5}{row.faults:>7}{row.tasks:>7}"
                    f"{row.ok:>6}{row.clear_errors:>6}{row.lost:>6}{row.duplicated:>5}"
                    f"{'yes' if row.duplicates_allowed else 'no':>7}"
                    f"{_span(row.detect_s):>10}{_span(row.recover_s):>11}  {row.outcome}"
                )
            write("detect s / recover s: median..max seconds from the fault to the cluster")
            write("showing it / to the cluster whole again ('-': not applicable)")
        if self.fuzz:
            terminalreporter.section("protocol fuzzer")
            write(
                f"{'socket':<26}{'phase':<13}{'frames':>8}{'crashes':>8}{'errors':>8}"
                f"{'closed':>8}{'5xx':>5}{'unpickled':>10}{'secs':>7}  outcome"
            )
            for f in self.fuzz.values():
                write(
                    f"{f.target:<26}{f.phase:<13}{f.frames:>8}{f.crashes:>8}"
                    f"{f.errors_answered:>8}{f.closed:>8}{f.server_errors:>5}"
                    f"{f.unpickled_before_auth:>10}{f.seconds:>7.1f}  {f.outcome}"
                )
            total = sum(f.frames for f in self.fuzz.values())
            crashes = sum(f.crashes for f in self.fuzz.values())
            write(f"frames fuzzed: {total}; crashes: {crashes}")
        path = self.write()
        write(f"written to {path}")

    def write(self) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / "chaos.json"
        data = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seed": self.seed,
            "chaos_seconds": os.environ.get("RAYJUPYTER_CHAOS_SECONDS"),
            "fuzz_seconds": os.environ.get("RAYJUPYTER_FUZZ_SECONDS"),
            "faults": [row.summary() for row in self.faults.values()],
            "fuzz": [asdict(row) for row in self.fuzz.values()],
        }
        path.write_text(json.dumps(data, indent=2))
        return path


def _span(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 2]:.1f}..{ordered[-1]:.1f}"


def reporter(config: pytest.Config) -> Report:
    """The session's report, registered as a plugin the first time it is asked for."""
    found = config.pluginmanager.get_plugin(PLUGIN_NAME)
    if found is None:
        found = Report()
        config.pluginmanager.register(found, PLUGIN_NAME)
    assert isinstance(found, Report)
    return found

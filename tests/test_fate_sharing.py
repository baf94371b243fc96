"""Fate sharing, as in Ray: the tasks and actors a worker started end when that worker dies
(its process, or its whole node); and a class whose methods create actors of itself."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import Nodes, nodes_fixture
from helpers import wait_for_condition, wait_for_pids_gone

import rayjupyter as rj

nodes = nodes_fixture(num_cpus=1)


@rj.remote(num_cpus=0)
def stuck(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(600)


@rj.remote(num_cpus=0)
class Stuck:
    def __init__(self, pid_file: str) -> None:
        Path(pid_file).write_text(str(os.getpid()))

    def wait(self) -> None:
        time.sleep(600)


@rj.remote(num_cpus=0)
class Parent:
    def pid(self) -> int:
        return os.getpid()

    def start_task(self, pid_file: str, **options: Any) -> None:
        rj.get(stuck.options(**options).remote(pid_file))

    def start_actor(self, pid_file: str, **options: Any) -> None:
        child = Stuck.options(**options).remote(pid_file)
        rj.get(child.wait.remote())


def _child_pid(pid_file: Path) -> int:
    wait_for_condition(pid_file.exists, timeout=60)
    wait_for_condition(lambda: pid_file.read_text().strip() != "", timeout=10)
    return int(pid_file.read_text())


@pytest.mark.parametrize("start", ["start_task", "start_actor"])
def test_what_a_dead_worker_started_ends_with_it(nodes: Nodes, tmp_path: Path, start: str) -> None:
    parent = Parent.remote()
    parent_pid = rj.get(parent.pid.remote(), timeout=60)
    pid_file = tmp_path / "child.pid"
    getattr(parent, start).remote(str(pid_file))
    child_pid = _child_pid(pid_file)
    os.kill(parent_pid, signal.SIGKILL)
    wait_for_pids_gone([child_pid], timeout=30)


@pytest.mark.parametrize("start", ["start_task", "start_actor"])
def test_what_a_dead_nodes_worker_started_elsewhere_ends_with_it(
    nodes: Nodes, tmp_path: Path, start: str
) -> None:
    doomed = nodes.join(num_cpus=1, parent=1)
    nodes.join(num_cpus=1, child=1)
    wait_for_condition(lambda: sum(1 for n in rj.nodes() if n["Alive"]) == 3, timeout=30)
    parent = Parent.options(resources={"parent": 1}).remote()
    rj.get(parent.pid.remote(), timeout=60)
    pid_file = tmp_path / "child.pid"
    getattr(parent, start).remote(str(pid_file), resources={"child": 1})
    child_pid = _child_pid(pid_file)
    doomed.stop(timeout=0.1)  # the parent's node dies; the child runs on the third node
    wait_for_pids_gone([child_pid], timeout=30)


def test_an_actor_class_creates_actors_of_itself(nodes: Nodes) -> None:
    @rj.remote(num_cpus=0)
    class Maker:  # defined here, it travels by value: unpickled before its body is filled
        def make(self) -> str:
            return str(rj.get(Maker.remote().name.remote(), timeout=60))

        def name(self) -> str:
            return "made"

    assert rj.get(Maker.remote().make.remote(), timeout=60) == "made"

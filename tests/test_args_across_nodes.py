"""Task arguments across nodes. Refs nested in a task's arguments that are not ready when
the task goes to another node: the task can still get them there (Ray: a nested ref is not
resolved before the task runs, but ``get`` of it inside waits until it is ready, wherever
it is made). An argument whose value was lost with its node: the error comes through the
task (a RayTaskError whose cause is the ObjectLostError), as in Ray."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cluster_helpers import Nodes, alive_nodes, nodes_fixture
from helpers import wait_for_condition, wait_for_pids_gone

import rayjupyter as rj

pytestmark = pytest.mark.timeout(120)

nodes = nodes_fixture(num_cpus=1, resources={"head": 1})


def _wait_for_file(path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)


@rj.remote(resources={"n1": 1})
def produce_after(gate: str, n: int) -> Any:
    """Waits for the test to open the gate, then returns a value (large when n is)."""
    _wait_for_file(gate)
    return np.full(n, 3, dtype=np.int64) if n else "small"


@rj.remote(resources={"n2": 1})
def consume(started: str, box: dict[str, list[Any]]) -> Any:
    """Says it started, then gets the ref nested in its argument (not ready yet)."""
    Path(started).touch()
    value = rj.get(box["refs"][0], timeout=60)
    if isinstance(value, np.ndarray):
        return int(value.sum())
    return value


@pytest.mark.parametrize("size", [0, 1 << 17], ids=["inline", "in_store"])
def test_a_nested_ref_made_on_one_peer_is_got_on_another_after_the_task_started(
    nodes: Nodes, tmp_path: Path, size: int
) -> None:
    nodes.join(n1=1)
    nodes.join(n2=1)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=10)
    gate, started = str(tmp_path / "gate"), str(tmp_path / "started")
    made = produce_after.remote(gate, size)
    result = consume.remote(started, {"refs": [made]})
    _wait_for_file(started)  # the consumer runs, on n2, while the value is not made yet
    Path(gate).touch()
    assert rj.get(result, timeout=60) == (3 * size if size else "small")
    assert rj.get(made, timeout=30) is not None


def test_a_nested_ref_the_driver_dropped_lives_while_the_peer_s_task_holds_it(
    nodes: Nodes, tmp_path: Path
) -> None:
    nodes.join(n1=1)
    nodes.join(n2=1)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=10)
    gate, started = str(tmp_path / "gate"), str(tmp_path / "started")
    made = produce_after.remote(gate, 1 << 17)
    result = consume.remote(started, {"refs": [made]})
    del made  # only the consumer's argument holds it now
    _wait_for_file(started)
    Path(gate).touch()
    assert rj.get(result, timeout=60) == 3 << 17


@rj.remote(resources={"n1": 1})
def fail_after(gate: str) -> None:
    _wait_for_file(gate)
    raise ValueError("made badly")


def test_a_nested_ref_whose_task_fails_raises_its_error_in_the_peer_s_get(
    nodes: Nodes, tmp_path: Path
) -> None:
    nodes.join(n1=1)
    nodes.join(n2=1)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=10)
    gate, started = str(tmp_path / "gate"), str(tmp_path / "started")
    result = consume.remote(started, {"refs": [fail_after.remote(gate)]})
    _wait_for_file(started)
    Path(gate).touch()
    with pytest.raises(ValueError, match="made badly"):
        rj.get(result, timeout=60)


@rj.remote(resources={"n1": 1})
def put_there() -> list[Any]:
    return [rj.put(np.zeros(1 << 17))]  # a put: nothing can make it again


@rj.remote
def takes(value: Any) -> None:
    return None


@rj.remote
def gets_nested(box: list[Any]) -> None:
    rj.get(box[0], timeout=30)


def test_a_lost_argument_fails_the_task_with_a_task_error_caused_by_the_loss(
    nodes: Nodes,
) -> None:
    doomed = nodes.join(n1=1)
    wait_for_condition(lambda: alive_nodes() == 2, timeout=10)
    held = rj.get(put_there.remote(), timeout=30)[0]  # its value stays on n1
    os.kill(doomed.pid, signal.SIGKILL)
    wait_for_condition(lambda: alive_nodes() == 1, timeout=10)
    wait_for_pids_gone([doomed.pid], timeout=10)
    with pytest.raises(rj.exceptions.ObjectLostError) as direct:
        rj.get(held, timeout=30)
    assert not isinstance(direct.value, rj.exceptions.RayTaskError)  # a get of it: as is
    for result in (takes.remote(held), gets_nested.remote([held])):
        with pytest.raises(rj.exceptions.RayTaskError) as through_task:
            rj.get(result, timeout=30)
        assert isinstance(through_task.value, rj.exceptions.ObjectLostError)
        assert isinstance(through_task.value.cause, rj.exceptions.ObjectLostError)
        assert "rj.put" in str(through_task.value)


@rj.remote(resources={"n2": 1})
class Keeper:
    """Keeps the refs its creation was given (as Ray's tests do), gets them in __init__."""

    def __init__(self, started: str, refs: list[Any]) -> None:
        Path(started).touch()
        self.refs = refs
        self.value = rj.get(refs[0], timeout=60)

    def total(self) -> int:
        return int(self.value.sum())


def test_an_actor_on_a_peer_gets_a_ref_nested_in_its_creation_made_on_another_peer(
    nodes: Nodes, tmp_path: Path
) -> None:
    nodes.join(n1=1)
    nodes.join(n2=1)
    wait_for_condition(lambda: alive_nodes() == 3, timeout=10)
    gate, started = str(tmp_path / "gate"), str(tmp_path / "started")
    keeper = Keeper.remote(started, [produce_after.remote(gate, 1 << 17)])
    _wait_for_file(started)
    Path(gate).touch()
    assert rj.get(keeper.total.remote(), timeout=60) == 3 << 17

"""The read side on its own: the read models, Ray's state vocabulary, the query table."""

from __future__ import annotations

import dataclasses

import pytest

from rayjupyter.core import protocol as P
from rayjupyter.core import queries, read_models
from rayjupyter.core.node_queries import ANSWERS, TASK_STATE_NAMES
from rayjupyter.core.read_models import (
    PENDING_STATES,
    TASK_STATES,
    MachineUsage,
    NodeRow,
    NodeStatus,
    StoreStats,
    TaskRow,
    matches,
)
from rayjupyter.core.scheduler import TaskState


def _node(alive: bool = True) -> NodeRow:
    return NodeRow("ab" * 8, alive, "10.0.0.1", 6380, {"CPU": 4.0}, {"CPU": 1.0}, 1.0)


def _status(**tasks: int) -> NodeStatus:
    return NodeStatus(
        nodes=[_node(), _node(alive=False)],
        total={"CPU": 4.0},
        available={"CPU": 1.0},
        tasks=dict(tasks),
        actors={},
        workers=2,
        drivers=1,
        driver_pids=[],
        store=StoreStats(100, 10, 0, 1, 1, 0, 0, 0, 0),
        machine=MachineUsage(10.0, 100.0, 50.0, 1.0),
    )


def test_every_engine_task_state_has_a_ray_name():
    assert set(TASK_STATE_NAMES) == set(TaskState)
    assert set(TASK_STATE_NAMES.values()) <= set(TASK_STATES)
    assert set(TASK_STATES) == set(read_models.TaskStateName.__args__)


def test_status_figures_come_from_its_fields():
    status = _status(RUNNING=2, PENDING_ARGS_AVAIL=1, PENDING_NODE_ASSIGNMENT=3, FINISHED=9)
    assert status.tasks_running == 2
    assert status.tasks_pending == 4 and "RUNNING" not in PENDING_STATES
    assert status.used("CPU") == 3.0 and status.used("GPU") == 0.0
    assert [n.address for n in status.alive_nodes] == ["10.0.0.1:6380"]


def test_filters_compare_fields_as_strings():
    row = TaskRow("t1", "f", "f", "FAILED", "j", None, "NORMAL_TASK", "n", 7, 0, 1.0, 2.0, 3.0)
    assert matches(row, [("state", "=", "FAILED"), ("worker_pid", "=", 7)])
    assert not matches(row, [("state", "!=", "FAILED")])
    assert matches(row, [("actor_id", "=", None)])  # a missing value reads as "None"
    assert not matches(row, [("no_such_field", "=", "x")])


def test_rows_become_rays_dicts():
    node = read_models.as_dict(_node())
    assert node["NodeID"] == "ab" * 8 and node["Resources"] == {"CPU": 4.0}
    status = read_models.as_dict(_status(RUNNING=1))
    assert status["store"]["capacity"] == 100 and status["nodes"][0]["Alive"] is True


def test_every_query_has_an_answer_and_round_trips():
    assert set(ANSWERS) == set(P.QUERIES)
    assert set(P.QUERIES) <= set(P.CLIENT_TO_NODE)
    for kind in P.QUERIES:
        message = kind(*range(len(kind._fields)))
        assert P.loads(P.dumps([message])) == [message]


def test_a_read_model_pickles_by_reference():
    import pickle

    status = _status(RUNNING=1)
    assert pickle.loads(pickle.dumps(status)) == status
    assert dataclasses.is_dataclass(status)


def test_typed_readers_refuse_a_wrong_answer():
    with pytest.raises(TypeError, match="GetStatus"):
        queries._checked({"tasks": {}}, NodeStatus, "GetStatus")

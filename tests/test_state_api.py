"""The state API and the timeline, read from a real cluster."""

from __future__ import annotations

import json
import os
import stat

import pytest
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.core import discovery
from rayjupyter.core.api import _client
from rayjupyter.util import state

pytestmark = pytest.mark.usefixtures("shared_cluster")


@rj.remote
def succeed(x):
    return x


@rj.remote
def explode():
    raise RuntimeError("boom")


def test_list_tasks_shows_states_and_filters():
    rj.get([succeed.remote(i) for i in range(3)], timeout=30)
    with pytest.raises(RuntimeError):
        rj.get(explode.remote(), timeout=30)
    failed = state.list_tasks(filters=[("state", "=", "FAILED"), ("name", "=", "explode")])
    assert len(failed) >= 1 and all(row["state"] == "FAILED" for row in failed)
    finished = state.list_tasks(filters=[("name", "=", "succeed")], limit=1000)
    assert len(finished) >= 3 and {row["state"] for row in finished} == {"FINISHED"}
    row = finished[-1]
    assert row["start_time"] <= row["end_time"] and row["worker_pid"]
    assert len(state.list_tasks(limit=2)) == 2
    summary = state.summarize_tasks()["cluster"]["summary"]  # Ray's shape
    assert summary["succeed"]["state_counts"]["FINISHED"] >= 3
    assert summary["explode"]["state_counts"]["FAILED"] >= 1
    with pytest.raises(ValueError, match="operator"):
        state.list_tasks(filters=[("state", ">", "x")])


@rj.remote
def nap(seconds):
    import time

    time.sleep(seconds)


def test_tasks_queued_behind_busy_workers_are_pending_not_running():
    """A long queue makes the node send busy workers their next task early (prefetch):
    those wait on the worker, and the state API must not count them as running."""
    cpus = int(rj.cluster_resources()["CPU"])
    refs = [nap.remote(1.0) for _ in range(cpus * 3)]

    def running():
        rows = state.list_tasks(filters=[("name", "=", "nap")], limit=1000)
        return [row for row in rows if row["state"] == "RUNNING"]

    wait_for_condition(lambda: len(running()) == cpus, timeout=30)
    assert len(running()) == cpus  # and none of those sent ahead
    counts = state.summarize_tasks()["cluster"]["summary"]["nap"]["state_counts"]
    assert counts.get("RUNNING") == cpus and counts.get("PENDING_NODE_ASSIGNMENT") == 2 * cpus
    rj.get(refs, timeout=60)


def test_list_actors_objects_nodes_jobs():
    @rj.remote
    class Named:
        def ping(self):
            return "pong"

    actor = Named.options(name="listed").remote()
    rj.get(actor.ping.remote(), timeout=30)
    rows = state.list_actors(filters=[("name", "=", "listed")])
    assert len(rows) == 1 and rows[0]["state"] == "ALIVE" and rows[0]["class_name"] == "Named"
    ref = rj.put(b"x" * 1000)
    objects = state.list_objects(filters=[("object_id", "=", ref.hex())])
    assert objects and objects[0]["object_size"] > 1000 and objects[0]["where"] == "inline"
    assert state.list_nodes()[0]["Alive"]
    job_id = rj.get_runtime_context().get_job_id()
    assert any(job["job_id"] == job_id for job in state.list_jobs())
    rj.kill(actor)


def test_timeline_writes_a_chrome_trace(tmp_path):
    rj.get([succeed.remote(i) for i in range(4)], timeout=30)
    path = tmp_path / "trace.json"
    rj.timeline(str(path))
    events = json.loads(path.read_text())
    ours = [e for e in events if e["name"] == "succeed"]
    assert len(ours) >= 4
    assert all(e["ph"] == "X" and e["dur"] >= 0 and e["tid"].startswith("worker") for e in ours)


@rj.remote
def chatty(i):
    print(f"line {i}")
    return os.getpid()


def test_worker_logs_keep_recent_lines_per_worker():
    pids = set(rj.get([chatty.remote(i) for i in range(4)], timeout=30))
    logs = {}

    def all_lines_seen():
        logs.clear()
        for entry in state.list_worker_logs():
            logs.setdefault(entry["pid"], []).extend(text for _, _, text in entry["lines"])
        seen = {text for lines in logs.values() for text in lines}
        return all(f"line {i}" in seen for i in range(4))

    wait_for_condition(all_lines_seen, timeout=10)
    assert pids <= set(logs)
    one = next(iter(pids))
    only = state.list_worker_logs(pid=one, lines=1)
    assert [entry["pid"] for entry in only] == [one] and len(only[0]["lines"]) == 1


def test_local_cluster_is_discoverable_by_other_programs():
    records = discovery.list_local_clusters()
    mine = [r for r in records if r["owner_pid"] == os.getpid()]
    assert mine, records
    record = mine[-1]
    assert record["connect_address"].startswith("rayjupyter://")
    assert record["address"] in record["connect_address"]
    mode = os.stat(discovery.cluster_file(record["session"])).st_mode
    assert stat.S_IMODE(mode) == 0o600


@rj.remote
class Named:
    def ping(self):
        return "pong"


@rj.remote
def named_from_a_task(all_namespaces):
    return rj.util.list_named_actors(all_namespaces=all_namespaces)


def test_list_named_actors_by_namespace():
    here = _client().namespace  # the driver's (anonymous) namespace
    mine = Named.options(name="listed-here").remote()
    other = Named.options(name="listed-there", namespace="elsewhere").remote()
    unnamed = Named.remote()
    rj.get([mine.ping.remote(), other.ping.remote(), unnamed.ping.remote()], timeout=30)

    names = rj.util.list_named_actors()
    assert "listed-here" in names and "listed-there" not in names
    assert all(isinstance(name, str) for name in names)
    everywhere = rj.util.list_named_actors(all_namespaces=True)
    assert {"name": "listed-here", "namespace": here} in everywhere
    assert {"name": "listed-there", "namespace": "elsewhere"} in everywhere
    # a task sees its job's namespace, as in Ray
    assert "listed-here" in rj.get(named_from_a_task.remote(False), timeout=30)

    rj.kill(other)
    wait_for_condition(
        lambda: (
            {"name": "listed-there", "namespace": "elsewhere"}
            not in rj.util.list_named_actors(all_namespaces=True)
        ),
        timeout=10,
    )
    rj.kill(mine)
    rj.kill(unnamed)
    with pytest.raises(TypeError, match="all_namespaces"):
        rj.util.list_named_actors(all_namespaces="yes")


@rj.remote
class Gate:
    """Holds callers of wait() until release()."""

    def __init__(self):
        self.opened = None

    async def wait(self):
        import asyncio

        if self.opened is None:
            self.opened = asyncio.Event()
        await self.opened.wait()

    async def release(self):
        import asyncio

        if self.opened is None:
            self.opened = asyncio.Event()
        self.opened.set()


@rj.remote
def held(gate):
    rj.get(gate.wait.remote())
    return 1


def test_status_counts_live_tasks_in_rays_states():
    from rayjupyter.core import queries
    from rayjupyter.core.read_models import TASK_STATES, NodeStatus

    gate = Gate.remote()
    first = held.remote(gate)
    second = succeed.remote(first)  # waits for its argument

    def both_seen():
        tasks = queries.status(_client()).tasks
        return tasks.get("RUNNING", 0) >= 1 and tasks.get("PENDING_ARGS_AVAIL", 0) >= 1

    wait_for_condition(both_seen, timeout=10)
    status = queries.status(_client())
    assert isinstance(status, NodeStatus) and set(status.tasks) <= set(TASK_STATES)
    assert status.tasks_pending >= 1 and status.tasks_running >= 1
    waiting = state.list_tasks(filters=[("state", "=", "PENDING_ARGS_AVAIL")], limit=1000)
    assert any(row["name"] == "succeed" for row in waiting)
    rj.get(gate.release.remote(), timeout=30)
    assert rj.get(second, timeout=30) == 1
    rj.kill(gate)


@rj.remote
def printer(word):
    print(f"printed {word}")
    return os.getpid()


def test_rows_have_attribute_and_item_access_and_rays_fields():
    ref = succeed.remote(5)
    assert rj.get(ref, timeout=30) == 5
    task = state.list_tasks(filters=[("name", "=", "succeed")], limit=1)[0]
    assert task.state == task["state"] == task.get("state") == "FINISHED"
    assert task.get("no_such_field", "default") == "default"
    with pytest.raises(KeyError):
        task["no_such_field"]
    assert task.asdict()["task_id"] == task.task_id
    assert task.start_time_ms <= task.end_time_ms and task.creation_time_ms <= task.start_time_ms
    assert state.get_task(task.task_id).task_id == task.task_id
    assert state.get_task("00" * 20) is None
    node = state.list_nodes()[0]
    assert node.state == "ALIVE" and node.node_id == node.NodeID and node.resources_total["CPU"]
    assert node.asdict()["state"] == "ALIVE" and node.asdict()["Alive"] is True  # both names
    assert state.get_node(node.node_id).node_ip == node.NodeManagerAddress
    assert state.list_nodes(filters=[("state", "=", "ALIVE")])  # Ray's alias names filter too
    with pytest.raises(ValueError, match=r"not supported.*state"):
        state.list_tasks(filters=[("colour", "=", "red")])


def test_get_actor_worker_object_and_summaries_in_rays_shape():
    actor = Named.options(name="summarized").remote()
    rj.get(actor.ping.remote(), timeout=30)
    row = state.list_actors(filters=[("name", "=", "summarized")])[0]
    assert state.get_actor(row.actor_id).class_name == "Named"
    workers = state.list_workers(filters=[("pid", "=", row.pid)])
    assert [(w.worker_type, w.actor_id) for w in workers] == [("WORKER", row.actor_id)]
    assert state.get_worker(workers[0].worker_id).pid == row.pid
    drivers = state.list_workers(filters=[("worker_type", "=", "DRIVER")])
    assert os.getpid() in {w.pid for w in drivers}
    ref = rj.put(b"z" * 300_000)
    [obj] = state.get_objects(ref.hex())
    assert obj.object_size >= 300_000 and obj.task_status == "FINISHED"

    actors = state.summarize_actors()["cluster"]
    assert actors["summary"]["Named"]["state_counts"]["ALIVE"] >= 1
    assert actors["total_actors"] >= 1 and actors["summary_by"] == "class"
    objects = state.summarize_objects()["cluster"]
    assert objects["total_objects"] >= 1 and objects["total_size_mb"] >= 0.28
    assert objects["summary"]["disabled"]["total_objects"] == objects["total_objects"]
    tasks = state.summarize_tasks()["cluster"]
    assert tasks["summary_by"] == "func_name" and tasks["total_actor_tasks"] >= 1
    rj.kill(actor)


def test_list_placement_groups_and_get_one():
    from rayjupyter.util.placement_group import placement_group, remove_placement_group

    group = placement_group([{"CPU": 0.5}], name="listed-group")
    rj.get(group.ready(), timeout=30)
    [row] = state.list_placement_groups(filters=[("name", "=", "listed-group")])
    assert row.state == "CREATED" and row["bundles"][0]["unit_resources"] == {"CPU": 0.5}
    assert state.get_placement_group(group.id.hex()).name == "listed-group"
    remove_placement_group(group)


def test_list_logs_and_get_log():
    pid = rj.get(printer.remote("loudly"), timeout=30)
    wait_for_condition(lambda: f"worker-{pid}.out" in state.list_logs()["worker_out"], timeout=10)
    assert state.list_logs(glob_filter="worker-*.err")["worker_out"] == []
    wait_for_condition(
        lambda: "printed loudly\n" in list(state.get_log(pid=pid, tail=-1)), timeout=10
    )
    assert "printed loudly\n" in list(state.get_log(filename=f"worker-{pid}.out"))
    assert list(state.get_log(pid=pid, suffix="err")) == []
    with pytest.raises(ValueError, match="suffix"):
        list(state.get_log(pid=pid, suffix="log"))
    with pytest.raises(ValueError, match="actor_id, task_id, pid"):
        list(state.get_log())


def test_the_state_api_reaches_a_cluster_by_address(tmp_path):
    """``address=`` asks another cluster than this process's own (here: a second one,
    started as `rayjupyter start --head` would, whose secret is in the address)."""
    from cli_helpers import started_head

    with started_head(tmp_path / "home") as other:
        nodes = state.list_nodes(address=other.connect)
        mine = state.list_nodes()
        assert len(nodes) == 1 and nodes[0].node_id != mine[0].node_id
        assert state.summarize_tasks(address=other.connect)["cluster"]["total_tasks"] == 0
    with pytest.raises(ConnectionError, match="Failed to connect") as failed:
        state.list_nodes(address="rayjupyter://wrong@127.0.0.1:1", timeout=2)
    assert isinstance(failed.value, state.RayStateApiException)  # Ray's error type too

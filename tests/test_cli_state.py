"""The ``rayjupyter`` state and job commands, run as a user runs them, against a head that
this module's driver fills with tasks, actors, objects and a placement group."""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_helpers import Cli, Head, free_port, started_head
from conftest import _SHARED
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.util.placement_group import placement_group, remove_placement_group

pytestmark = pytest.mark.timeout(120)


class World:
    """What the module's driver made, for the commands to find."""

    def __init__(self) -> None:
        # defined here, so they travel by value: the head's workers cannot import this module
        @rj.remote
        def succeed(x):
            return x

        @rj.remote
        def explode():
            raise RuntimeError("boom")

        @rj.remote
        def shout(word):
            print(f"shouting {word}")
            return os.getpid()

        @rj.remote
        class Keeper:
            def ping(self):
                print("keeper pinged")
                return os.getpid()

        rj.get([succeed.remote(i) for i in range(3)], timeout=30)
        with pytest.raises(RuntimeError):
            rj.get(explode.remote(), timeout=30)
        self.shout_pid = rj.get(shout.remote("hello"), timeout=30)
        self.keeper = Keeper.options(name="keeper").remote()
        self.keeper_pid = rj.get(self.keeper.ping.remote(), timeout=30)
        self.small = rj.put(b"x" * 10)
        self.large = rj.put(b"y" * 500_000)  # in shared memory
        self.group = placement_group([{"CPU": 0.1}], name="grouped")
        rj.get(self.group.ready(), timeout=30)
        self.job_id = rj.get_runtime_context().get_job_id()


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    home = tmp_path_factory.mktemp("home")
    # Ray's option name for the address nodes are reached at
    extra = ("--dashboard-port", str(free_port()), "--node-ip-address", "127.0.0.1")
    with started_head(home, *extra) as started:
        _SHARED.roots, _SHARED.active = set(started.cli.started_pids()), True
        try:
            yield started
        finally:
            _SHARED.roots, _SHARED.active = set(), False


@pytest.fixture(scope="module")
def world(head: Head) -> Iterator[World]:
    rj.init(address=head.connect)
    try:
        made = World()
        yield made
        remove_placement_group(made.group)
    finally:
        rj.shutdown()


@pytest.fixture
def cli(head: Head, world: World) -> Cli:
    return head.cli  # its home holds the head's cluster.json: no --address needed


def ok(out: Any) -> str:
    assert out.returncode == 0, out.stderr
    return str(out.stdout)


def as_json(cli: Cli, *args: str) -> Any:
    return json.loads(ok(cli(*args, "--format", "json")))


def one_line_error(out: Any, *words: str) -> None:
    assert out.returncode == 1, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_list_every_resource_as_json_yaml_and_a_table_that_fits(cli, world):
    found = {
        resource: as_json(cli, "list", resource)
        for resource in ("tasks", "actors", "objects", "nodes", "jobs", "placement-groups",
                         "workers")
    }  # fmt: skip
    assert {"succeed", "explode", "shout"} <= {r["name"] for r in found["tasks"]}
    assert [r["state"] for r in found["actors"] if r["name"] == "keeper"] == ["ALIVE"]
    assert {world.small.hex(), world.large.hex()} <= {r["object_id"] for r in found["objects"]}
    assert [(n["Alive"], n["state"]) for n in found["nodes"]] == [(True, "ALIVE")]
    assert world.job_id in {j["job_id"] for j in found["jobs"]}
    assert [g["state"] for g in found["placement-groups"] if g["name"] == "grouped"] == ["CREATED"]
    workers = found["workers"]
    assert {"WORKER", "DRIVER"} <= {w["worker_type"] for w in workers}
    assert os.getpid() in {w["pid"] for w in workers if w["worker_type"] == "DRIVER"}

    assert yaml.safe_load(ok(cli("list", "actors", "--format", "yaml"))) == found["actors"]
    for width in (60, 200):
        text = ok(cli("list", "tasks", "--limit", "1000", env={"COLUMNS": str(width)}))
        lines = text.rstrip("\n").splitlines()
        assert lines[0].startswith("TASK_") and max(len(line) for line in lines) <= width
        cut = width == 60  # 11 columns do not fit: the last ones are left out, and said so
        assert len(lines[0].split()) == (7 if cut else 11)
        assert len(lines) == 1 + len(found["tasks"]) + cut
        assert ("4 more columns" in lines[-1]) == cut
    wide = ok(cli("list", "nodes", env={"COLUMNS": "200"}))
    assert "ALIVE" in wide and "CPU=1" in wide
    detailed = ok(cli("list", "actors", "--detail", env={"COLUMNS": "300"}))
    assert "NUM_RESTARTS" in detailed  # every column with --detail


def test_filters_and_limit_as_rays(cli):
    rows = as_json(cli, "list", "tasks", "--filter", "name=explode", "-f", "state=FAILED")
    assert rows and all(r["name"] == "explode" and r["state"] == "FAILED" for r in rows)
    assert all(r["name"] != "succeed" for r in as_json(cli, "list", "tasks", "-f", "name!=succeed"))
    assert len(as_json(cli, "list", "tasks", "--limit", "1")) == 1
    one_line_error(cli("list", "tasks", "--filter", "colour=red"), "colour", "state")
    one_line_error(cli("list", "tasks", "--filter", "colour"), "KEY=VALUE")
    # Ray's alias columns filter too (the node knows fields; the rest is checked here)
    assert [n["Alive"] for n in as_json(cli, "list", "nodes", "-f", "state=ALIVE")] == [True]


def test_get_one_row_in_full(cli, world):
    actor_id = world.keeper._actor_id.hex()  # type: ignore[attr-defined]
    row = yaml.safe_load(ok(cli("get", "actors", actor_id)))
    assert row["name"] == "keeper" and row["state"] == "ALIVE" and row["class_name"] == "Keeper"
    assert (
        json.loads(ok(cli("get", "objects", world.large.hex(), "--format", "json")))["where"]
        == "shared memory"
    )
    one_line_error(cli("get", "tasks", "ffff"), "no task")


def test_summaries_in_rays_shape(cli):
    tasks = as_json(cli, "summary", "tasks")
    assert tasks["summary"]["explode"]["state_counts"] == {"FAILED": 1}
    assert tasks["summary"]["succeed"]["type"] == "NORMAL_TASK"
    assert tasks["total_tasks"] >= 5 and tasks["total_actor_tasks"] >= 1
    actors = as_json(cli, "summary", "actors")
    assert actors["summary"]["Keeper"]["state_counts"]["ALIVE"] == 1
    objects = as_json(cli, "summary", "objects")
    assert objects["total_objects"] >= 2 and objects["total_size_mb"] > 0.4
    text = ok(cli("summary", "tasks"))
    assert "explode" in text and "FAILED=1" in text and "total_tasks" in text


def test_logs_list_and_print_one(cli, world):
    names = ok(cli("logs"))
    assert f"worker-{world.shout_pid}.out" in names
    assert "shouting hello" in ok(cli("logs", "worker", "--pid", str(world.shout_pid)))
    assert "shouting hello" in ok(cli("logs", "cluster", f"worker-{world.shout_pid}.out"))
    actor_id = world.keeper._actor_id.hex()  # type: ignore[attr-defined]
    assert "keeper pinged" in ok(cli("logs", "actor", "--id", actor_id))
    task_id = next(r["task_id"] for r in as_json(cli, "list", "tasks") if r["name"] == "shout")
    assert "shouting hello" in ok(cli("logs", "task", "--id", task_id))
    assert ok(cli("logs", "worker", "--pid", str(world.shout_pid), "--err")) == ""
    one_line_error(cli("logs", "actor"), "--id")
    node_id = as_json(cli, "list", "nodes")[0]["NodeID"]
    assert "worker_out" in ok(cli("logs", "--node-id", node_id))
    one_line_error(cli("logs", "--node-ip-address", "10.9.9.9"), "connect to that node")


def test_memory_timeline_and_stack(cli, world, tmp_path):
    memory = as_json(cli, "memory")
    ids = [o["object_id"] for o in memory["objects"]]
    assert ids.index(world.large.hex()) < ids.index(world.small.hex())  # by size
    assert memory["store"]["used"] >= 500_000
    assert "Object store" in ok(cli("memory", "--stats-only", "--units", "KB"))

    trace = tmp_path / "trace.json"
    assert str(trace) in ok(cli("timeline", "--filename", str(trace)))
    assert {"succeed", "shout"} <= {e["name"] for e in json.loads(trace.read_text())}

    stack = cli("stack")
    if stack.returncode == 0:  # py-spy is installed: every worker's stack
        assert f"pid={world.keeper_pid}" in stack.stdout and "Thread" in stack.stdout
    else:
        one_line_error(stack, "pip install py-spy")


def test_stack_without_py_spy_says_how_to_get_it(monkeypatch, capsys):
    from rayjupyter import cli as command
    from rayjupyter.cli import state_cmds

    monkeypatch.setattr(state_cmds, "find_py_spy", lambda: None)
    assert command.main(["stack"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install py-spy" in err[0]


def test_kill_actor_by_name(cli):
    @rj.remote(num_cpus=0)
    class Doomed:
        def ping(self):
            return 1

    doomed = Doomed.options(name="doomed").remote()
    rj.get(doomed.ping.remote(), timeout=30)
    assert "Killed actor" in ok(cli("kill-actor", "doomed"))
    rows = as_json(cli, "list", "actors", "-f", "name=doomed")
    assert [r["state"] for r in rows] == ["DEAD"]
    one_line_error(cli("kill-actor", "doomed"), "no live actor")


def test_no_cluster_is_one_line_naming_the_fix(tmp_path):
    lonely = Cli(tmp_path / "empty-home")
    one_line_error(lonely("list", "actors"), "rayjupyter start --head")
    one_line_error(lonely("job", "list"), "rayjupyter start --head")


def test_job_commands(cli, tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "hello.py").write_text(
        "import os, rayjupyter as rj\nrj.init()\n"
        "print('hello from', os.environ['WHO'], rj.cluster_resources()['CPU'])\n"
    )
    waited = cli(
        "job", "submit", "--working-dir", str(work), "--runtime-env-json",
        '{"env_vars": {"WHO": "cli"}}', "--", "python", "hello.py",
    )  # fmt: skip
    assert "hello from cli 1.0" in ok(waited) and "succeeded" in waited.stdout

    failing = cli("job", "submit", "--", "python", "-c", "import sys; sys.exit(4)")
    assert failing.returncode == 1 and "failed" in failing.stdout

    started = ok(cli("job", "submit", "--no-wait", "--", "sleep 0.5; echo slept"))
    submission_id = started.split("'")[1]
    assert "job logs" in started
    assert ok(cli("job", "logs", submission_id, "--follow")) == "slept\n"
    assert "SUCCEEDED" in ok(cli("job", "status", submission_id))
    assert (
        json.loads(ok(cli("job", "status", submission_id, "--format", "json")))[0]["status"]
        == "SUCCEEDED"
    )
    listed = as_json(cli, "job", "list")
    assert submission_id in {j["submission_id"] for j in listed}
    assert ok(cli("job", "logs", submission_id)) == "slept\n"

    long = ok(cli("job", "submit", "--no-wait", "--", "sleep", "300")).split("'")[1]
    wait_for_condition(lambda: "RUNNING" in ok(cli("job", "status", long)), timeout=20)
    stopped = ok(cli("job", "stop", long))
    assert "stopped" in stopped
    assert "had ended already" in ok(cli("job", "stop", long))
    assert "deleted" in ok(cli("job", "delete", long))
    one_line_error(cli("job", "status", long), "does not exist")
    one_line_error(cli("job", "submit"), "after --")


def test_submitted_jobs_show_in_the_dashboard(cli, head):
    submission_id = ok(cli("job", "submit", "--no-wait", "--", "echo", "shown")).split("'")[1]
    url = next(w for w in head.stdout.split() if w.startswith("http://"))
    parts = urllib.parse.urlsplit(url)
    token = urllib.parse.parse_qs(parts.query)["token"][0]
    request = urllib.request.Request(
        f"http://{parts.netloc}/api/v0/jobs", headers={"Authorization": f"token {token}"}
    )

    def listed() -> list[dict[str, Any]]:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return [j for j in json.loads(answer.read())["jobs"] if j["type"] == "SUBMISSION"]

    wait_for_condition(
        lambda: any(
            j["submission_id"] == submission_id and j["status"] == "SUCCEEDED" for j in listed()
        ),
        timeout=30,
    )
    assert any(j["entrypoint"] == "echo shown" for j in listed())

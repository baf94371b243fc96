"""runtime_env: working_dir, py_modules and env_vars reach tasks and actors on every node.

Each test writes a small "notebook directory" (a module and a data file) into a temp dir
that is not on this process's sys.path, so an import that works in a task proves the
directory was shipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from cluster_helpers import Nodes, started_nodes
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.core import fork_server, runtime_env
from rayjupyter.core.exceptions import RuntimeEnvSetupError
from rayjupyter.core.scheduler import (
    ResourcePool,
    Scheduler,
    TaskRecord,
    WorkerRecord,
    WorkerState,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def notebook_dir(tmp_path: Path) -> Path:
    """What sits next to a notebook: a module of the user's and a data file."""
    root = tmp_path / "notebook"
    root.mkdir()
    (root / "nb_helpers.py").write_text("VALUE = 42\n\ndef double(x):\n    return 2 * x\n")
    (root / "data").mkdir()
    (root / "data" / "numbers.txt").write_text("1 2 3\n")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "junk.pyc").write_bytes(b"\0" * 10)
    return root


@pytest.fixture
def env_cluster(notebook_dir: Path) -> Iterator[Any]:
    context = rj.init(
        num_cpus=2,
        runtime_env={"working_dir": str(notebook_dir), "env_vars": {"A": "job", "B": "job"}},
    )
    try:
        yield context
    finally:
        rj.shutdown()


def session_of(path: str) -> str:
    """The node session whose cache holds ``path`` (/tmp/rayjupyter/<session>/...)."""
    parts = Path(path).parts
    assert parts[:3] == ("/", "tmp", "rayjupyter") and parts[4] == "runtime_resources", path
    return parts[3]


@rj.remote
def where_am_i() -> dict[str, Any]:
    import nb_helpers

    with open("data/numbers.txt") as numbers:  # relative to the shipped working_dir
        data = numbers.read().split()
    return {
        "value": nb_helpers.double(nb_helpers.VALUE),
        "file": nb_helpers.__file__,
        "cwd": os.getcwd(),
        "data": data,
        "env": {k: os.environ.get(k) for k in ("A", "B", "C")},
        "node": rj.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "listing": sorted(os.listdir(".")),
    }


@rj.remote
def plain_env() -> dict[str, Any]:
    return {"A": os.environ.get("A"), "cwd": os.getcwd(), "pid": os.getpid()}


@rj.remote
class Reader:
    def __init__(self) -> None:
        import nb_helpers

        self.value = nb_helpers.VALUE

    def read(self) -> tuple[int, str, str, str | None]:
        import nb_helpers

        with open("data/numbers.txt") as numbers:
            return self.value, nb_helpers.__file__, numbers.read(), os.environ.get("B")


# ------------------------------------------------------------------ one node


def test_working_dir_imports_and_opens_files_in_tasks_and_actors(
    env_cluster: Any, notebook_dir: Path
) -> None:
    assert "nb_helpers" not in sys.modules and str(notebook_dir) not in sys.path
    got = rj.get(where_am_i.remote(), timeout=30)
    assert got["value"] == 84 and got["data"] == ["1", "2", "3"]
    assert got["env"] == {"A": "job", "B": "job", "C": None}
    session = env_cluster.address_info["session"]
    assert session_of(got["file"]) == session
    assert got["file"] == os.path.join(got["cwd"], "nb_helpers.py")
    assert ".git" not in got["listing"] and "__pycache__" not in got["listing"]

    reader = Reader.remote()
    value, file, data, b = rj.get(reader.read.remote(), timeout=30)
    assert (value, data, b) == (42, "1 2 3\n", "job") and file == got["file"]


def test_a_module_imported_in_the_driver_reaches_tasks_by_reference(
    env_cluster: Any, notebook_dir: Path
) -> None:
    sys.path.insert(0, str(notebook_dir))  # the notebook imports its own module...
    try:
        import nb_helpers

        @rj.remote
        def use(x: int) -> int:
            return nb_helpers.double(x)  # ...and a task uses it: pickled by name, imported there

        assert rj.get(use.remote(5), timeout=30) == 10
    finally:
        sys.path.remove(str(notebook_dir))
        sys.modules.pop("nb_helpers", None)


def test_per_task_env_merges_over_the_jobs(env_cluster: Any, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "nb_helpers.py").write_text("VALUE = 7\n\ndef double(x):\n    return 3 * x\n")
    (other / "data").mkdir()
    (other / "data" / "numbers.txt").write_text("9\n")

    job = rj.get(where_am_i.remote(), timeout=30)
    vars_only = where_am_i.options(runtime_env={"env_vars": {"B": "task", "C": "c"}})
    merged = rj.get(vars_only.remote(), timeout=30)
    assert merged["env"] == {"A": "job", "B": "task", "C": "c"}  # env_vars merged by key
    assert merged["file"] == job["file"]  # the job's working_dir is kept
    assert merged["pid"] != job["pid"]  # another env, another worker

    moved = rj.get(where_am_i.options(runtime_env={"working_dir": str(other)}).remote(), timeout=30)
    assert (moved["value"], moved["data"]) == (21, ["9"])
    assert moved["env"]["A"] == "job" and moved["cwd"] != job["cwd"]

    again = rj.get(where_am_i.remote(), timeout=30)  # the job's env is untouched
    assert again["cwd"] == job["cwd"] and again["env"]["B"] == "job"

    actor = Reader.options(runtime_env={"env_vars": {"B": "actor"}}).remote()
    assert rj.get(actor.read.remote(), timeout=30)[3] == "actor"


def test_nested_tasks_inherit_the_env_of_their_parent(env_cluster: Any) -> None:
    @rj.remote
    def parent() -> tuple[dict[str, Any], dict[str, Any]]:
        inner = where_am_i.remote()
        overridden = where_am_i.options(runtime_env={"env_vars": {"C": "nested"}}).remote()
        return rj.get(inner), rj.get(overridden)

    inner, overridden = rj.get(
        parent.options(runtime_env={"env_vars": {"A": "p"}}).remote(), timeout=60
    )
    assert inner["env"] == {"A": "p", "B": "job", "C": None} and inner["value"] == 84
    assert overridden["env"] == {"A": "p", "B": "job", "C": "nested"}


def test_py_modules_and_tasks_without_an_env(cluster: Any, tmp_path: Path) -> None:
    package = tmp_path / "libs" / "nbpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from .core import NAME\n")
    (package / "core.py").write_text("NAME = 'package'\n")
    single = tmp_path / "single_mod.py"
    single.write_text("NAME = 'single'\n")

    @rj.remote(runtime_env={"py_modules": [str(package), str(single)], "env_vars": {"A": "mods"}})
    def use_modules() -> tuple[str, str, str, str | None, int]:
        import nbpkg
        import single_mod

        return nbpkg.NAME, single_mod.NAME, nbpkg.__file__, os.environ.get("A"), os.getpid()

    name, single_name, file, a, pid = rj.get(use_modules.remote(), timeout=30)
    assert (name, single_name, a) == ("package", "single", "mods")
    assert file.endswith(os.path.join("nbpkg", "__init__.py"))
    assert session_of(file) == cluster.address_info["session"]
    plain = rj.get(plain_env.remote(), timeout=30)  # no env: the plain pool, untouched
    assert plain["A"] is None and plain["pid"] != pid and "runtime_resources" not in plain["cwd"]


def test_env_workers_of_many_envs_stay_within_the_pool(tmp_path: Path) -> None:
    rj.init(num_cpus=1)
    try:
        pids = set()
        for i in range(4):
            got = rj.get(
                plain_env.options(runtime_env={"env_vars": {"A": str(i)}}).remote(), timeout=30
            )
            assert got["A"] == str(i)
            pids.add(got["pid"])
        assert len(pids) == 4
        node = rj.core.api._state["cluster"].process.pid
        # one plain worker and at most one worker per CPU for envs: the others were reaped
        template = fork_server.NAME.decode()  # the node's fork server is no worker

        def workers() -> int:
            return sum(p.name() != template for p in psutil.Process(node).children())

        wait_for_condition(lambda: workers() <= 2, timeout=15)
    finally:
        rj.shutdown()


def test_packages_are_cached_by_content_and_reused_by_a_second_driver(
    env_cluster: Any, notebook_dir: Path, tmp_path: Path
) -> None:
    first = rj.get(where_am_i.remote(), timeout=30)
    package_dir = first["cwd"]
    digest = os.path.basename(package_dir)
    assert digest == runtime_env.pack(str(notebook_dir), what="t").digest  # sha256 of the zip

    sentinel = Path(package_dir) / "sentinel"
    sentinel.write_text("extracted once")
    copy = tmp_path / "copy_of_notebook"
    copy.mkdir()
    for name in ("nb_helpers.py", "data/numbers.txt"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes((notebook_dir / name).read_bytes())
        os.utime(copy / name, (1, 1))  # other timestamps: the same contents, the same package
    script = textwrap.dedent(
        f"""
        import os
        import rayjupyter as rj
        rj.init(address={env_cluster.connect_address!r},
                runtime_env={{"working_dir": {str(copy)!r}}})

        @rj.remote
        def look():
            return os.getcwd(), sorted(os.listdir("."))

        cwd, listing = rj.get(look.remote(), timeout=60)
        print(cwd)
        print(",".join(listing))
        rj.shutdown()
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    cwd, listing = out.stdout.split()
    assert cwd == package_dir and "sentinel" in listing.split(",")  # not extracted again
    assert sorted(p.name for p in Path(package_dir).parent.iterdir() if p.is_dir()) == [digest]


def _task(name: str, env: str) -> TaskRecord:
    return TaskRecord(
        task_id=name.encode(), owner=b"", name=name, func_id=b"", args_blob=b"", deps=(),
        nested=(), return_ids=(), demand={"CPU": 1.0}, max_retries=0, retry_exceptions=False,
        env=env,
    )  # fmt: skip


def test_scheduler_pairs_tasks_only_with_workers_of_their_env() -> None:
    scheduler = Scheduler(ResourcePool({"CPU": 4}))
    plain = WorkerRecord(b"p", 1, state=WorkerState.IDLE)
    in_x = WorkerRecord(b"x", 2, state=WorkerState.IDLE, env="x")
    scheduler.worker_idle(plain)
    scheduler.worker_idle(in_x)
    tasks = [_task("needs-y", "y"), _task("in-x", "x"), _task("plain", ""), _task("x2", "x")]
    for task in tasks:
        scheduler.make_ready(task)
    pairs, unplaced = scheduler.assignments()
    assert [(t.name, w.client_id) for t, w in pairs] == [("in-x", b"x"), ("plain", b"p")]
    assert scheduler.env_unplaced == {"y": 1, "x": 1} and unplaced == 0
    assert [t.name for t in scheduler.ready] == ["needs-y", "x2"]
    assert not scheduler.idle and not scheduler.idle_env


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("env", "error", "fragment"),
    [
        ({"pip": ["requests"]}, ValueError, "not supported by rayjupyter"),
        ({"workdir": "."}, ValueError, "Unknown runtime_env key 'workdir'; valid keys are"),
        ({"working_dir": "/no/such/dir"}, ValueError, "is not a directory"),
        ({"working_dir": 3}, TypeError, "must be a path"),
        ({"py_modules": ["/no/such/module.py"]}, ValueError, "neither a package directory"),
        ({"py_modules": "mod"}, TypeError, "must be a list"),
        ({"env_vars": {"N": 1}}, TypeError, "convert the value with str()"),
        ({"env_vars": ["A=1"]}, TypeError, "must be a dict of str to str"),
        ({"excludes": "*.csv"}, TypeError, "list of path patterns"),
        ("conda", TypeError, "runtime_env must be a dict"),
    ],
)
def test_bad_envs_fail_at_the_call_with_the_fix(
    env: Any, error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")) as info:
        where_am_i.options(runtime_env=env)
    assert "\n" not in str(info.value)
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        rj.remote(runtime_env=env)(Reader._cls)
    with pytest.raises(error):
        rj.init(num_cpus=1, runtime_env=env)
    assert not rj.is_initialized()  # nothing was started


def test_a_working_dir_over_the_size_limit_names_excludes(
    notebook_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = notebook_dir / "data" / "big.bin"
    with open(big, "wb") as out:
        out.truncate(600 << 20)  # sparse: no disk used, but 600 MiB to ship
    with pytest.raises(ValueError, match=r"over the 500 MiB limit: list large files .*excludes"):
        rj.init(num_cpus=1, runtime_env={"working_dir": str(notebook_dir)})
    assert not rj.is_initialized()

    monkeypatch.setenv(runtime_env.SIZE_LIMIT_ENV, str(1 << 20))  # small packages, fast test
    big.unlink()
    (notebook_dir / "data" / "big.bin").write_bytes(b"x" * (2 << 20))
    with pytest.raises(ValueError, match="over the 1 MiB limit"):
        rj.init(num_cpus=1, runtime_env={"working_dir": str(notebook_dir)})
    rj.init(num_cpus=1, runtime_env={"working_dir": str(notebook_dir), "excludes": ["*.bin"]})
    try:
        listing = rj.get(where_am_i.remote(), timeout=30)["listing"]
        assert listing == ["data", "nb_helpers.py"]
        assert rj.get(where_am_i.remote(), timeout=30)["value"] == 84
        with pytest.raises(ValueError, match="over the 1 MiB limit"):  # at the call, too
            where_am_i.options(runtime_env={"py_modules": [str(notebook_dir / "data")]}).remote()
    finally:
        rj.shutdown()


def test_packing_is_deterministic_and_skips_excluded_paths(
    notebook_dir: Path, tmp_path: Path
) -> None:
    one = runtime_env.pack(str(notebook_dir), what="t")
    time.sleep(0)  # (no wait needed: timestamps are not packed)
    os.utime(notebook_dir / "nb_helpers.py", (12345, 12345))
    assert runtime_env.pack(str(notebook_dir), what="t") == one
    (notebook_dir / "nb_helpers.py").write_text("VALUE = 43\n")
    assert runtime_env.pack(str(notebook_dir), what="t").digest != one.digest
    skipped = runtime_env.pack(str(notebook_dir), excludes=("data/",), what="t")
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(skipped.blob)).namelist()
    assert names == ["nb_helpers.py"]


def test_a_task_naming_an_unknown_env_fails_with_runtime_env_setup_error(cluster: Any) -> None:
    from rayjupyter.core import api
    from rayjupyter.core import protocol as P
    from rayjupyter.core.object_ref import ObjectRef

    client = api._client()
    task_id = client.ids.task_id()
    object_id = client.ids.object_id(task_id, 0)
    ref = ObjectRef(object_id, _owned=True)
    unknown = "0" * 32  # what a client that skipped RegisterRuntimeEnv would send
    message = P.SubmitTask(
        task_id, b"f" * 16, None, "f", b"", (), (), (object_id,), {"CPU": 1.0}, 0, False, b"", ""
    )
    client.submit(message._replace(runtime_env=unknown))
    with pytest.raises(RuntimeEnvSetupError, match="does not have"):
        rj.get(ref, timeout=30)


# ------------------------------------------------------------------ several nodes


@pytest.fixture
def env_nodes(notebook_dir: Path) -> Iterator[tuple[Nodes, Any]]:
    with started_nodes(
        num_cpus=1, resources={"head": 1}, runtime_env={"working_dir": str(notebook_dir)}
    ) as started:
        yield started, started.head


def test_a_module_next_to_the_notebook_imports_in_tasks_on_every_node(
    env_nodes: tuple[Nodes, Any],
) -> None:
    nodes, head = env_nodes
    n1 = nodes.join(n1=1)
    n2 = nodes.join(n2=1)
    wait_for_condition(lambda: sum(1 for row in rj.nodes() if row["Alive"]) == 3, timeout=10)
    refs = [where_am_i.options(resources={name: 1}).remote() for name in ("head", "n1", "n2")]
    results = rj.get(refs, timeout=60)
    assert [r["value"] for r in results] == [84, 84, 84]
    assert all(r["data"] == ["1", "2", "3"] for r in results)
    assert len({r["node"] for r in results}) == 3
    # each node imported it from its own cached copy, under the same content hash
    sessions = [session_of(r["file"]) for r in results]
    assert sessions == [head.address_info["session"], n1.session, n2.session]
    assert len({os.path.basename(r["cwd"]) for r in results}) == 1

    # a per-task env reaches a peer too (sent once per link), merged over the job's
    varied = where_am_i.options(resources={"n2": 1}, runtime_env={"env_vars": {"C": "n2"}})
    got = rj.get([varied.remote() for _ in range(3)], timeout=60)
    assert {g["env"]["C"] for g in got} == {"n2"} and {g["node"] for g in got} == {
        results[2]["node"]
    }
    assert all(g["value"] == 84 for g in got)

    # an actor placed on a peer gets the env too
    reader = Reader.options(resources={"n1": 1}, runtime_env={"env_vars": {"B": "actor"}}).remote()
    value, module_file, numbers, b = rj.get(reader.read.remote(), timeout=60)
    assert (value, numbers.split(), b) == (42, ["1", "2", "3"], "actor")
    assert session_of(module_file) == n1.session

"""What a node imports before it forks its workers, and a driver by ``rj.init``: only what
their start needs. Each module costs every process of the tree its start and its memory
(the benchmark's start to first result and idle PSS), so the rest is imported where used."""

from __future__ import annotations

import subprocess
import sys

import rayjupyter as rj
from rayjupyter.util import state

#: never needed by a node's start: async actors', runtime_env packages', queries' modules,
#: and what only a driver's init or a notebook's repr uses
NODE_LAZY = (
    "asyncio",
    "zipfile",
    "tempfile",
    "rayjupyter.core.read_models",
    "rayjupyter.core.connect",
    "rayjupyter.core.init_options",
    "rayjupyter.core.launcher",
    "rayjupyter.core.cluster_repr",
    "pathlib",
    "html",
    "subprocess",  # (with jobs.py: started by the first Jobs API message)
    "rayjupyter.core.jobs",
)
#: what a driver's init uses, loaded with the API so that init does not wait for them
DRIVER_INIT = (
    "rayjupyter.core.connect",
    "rayjupyter.core.init_options",
    "rayjupyter.core.launcher",
)


def _loaded_after(statement: str, *options: str) -> set[str]:
    script = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))\n"
    done = subprocess.run(
        [sys.executable, *options, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(done.stdout.split())


def test_a_node_imports_nothing_its_start_does_not_need_before_forking_its_workers():
    # as the launcher starts it: -X rayjupyter_node (config.NODE_PROCESS_XOPTION)
    loaded = _loaded_after(
        "import rayjupyter.core.node, rayjupyter.core.worker_main", "-X", "rayjupyter_node"
    )
    assert "rayjupyter.core.worker" in loaded  # what every worker needs: shared by the fork
    assert sorted(loaded & set(NODE_LAZY)) == []


def test_a_driver_imports_inits_modules_with_the_api_and_no_repr_before_it_shows_one():
    loaded = _loaded_after("import rayjupyter")
    assert sorted(loaded & set(DRIVER_INIT)) == sorted(DRIVER_INIT)
    assert "rayjupyter.core.cluster_repr" not in loaded


def test_a_driver_imports_neither_the_read_models_nor_the_jobs_to_start():
    script = (
        "import rayjupyter as rj\n"
        "rj.init(num_cpus=1)\n"
        "assert rj.get(rj.remote(lambda: 1).remote(), timeout=60) == 1\n"
        "rj.shutdown()"
    )
    loaded = _loaded_after(script)
    assert "rayjupyter.core.read_models" not in loaded
    assert "rayjupyter.core.jobs" not in loaded


def test_workers_import_asyncio_only_for_an_async_actor_and_queries_still_answer():
    rj.init(num_cpus=1)
    try:

        @rj.remote
        def has_asyncio() -> bool:
            return "asyncio" in sys.modules

        @rj.remote
        class Async:
            async def has_asyncio(self) -> bool:
                return "asyncio" in sys.modules

        assert rj.get(has_asyncio.remote(), timeout=60) is False
        actor = Async.remote()  # type: ignore[attr-defined]
        assert rj.get(actor.has_asyncio.remote(), timeout=60) is True
        # the read models, imported where a query builds or reads one
        assert [node["Alive"] for node in rj.nodes()] == [True]
        assert state.list_tasks(filters=[("state", "=", "FINISHED")])
    finally:
        rj.shutdown()

"""The Jupyter server extension against a real Ray cluster (``ray start --head`` on loopback,
with its own auth token): listing it by address with its nodes, CPUs, memory, object store
and task counts, and its dashboard through the proxy (HTTP, its job API, a websocket)."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from jupyter_server.auth.authorizer import Authorizer
from ray_helpers import RAY_MISSING, RayHead, ray_importable, running_ray_head
from tornado.httpclient import HTTPClientError

from rayjupyter.server.ray_clusters import RAY_DASHBOARD_PAGES

pytest_plugins = ["pytest_jupyter.jupyter_server"]
pytestmark = [
    pytest.mark.skipif(not ray_importable(), reason=RAY_MISSING),
    pytest.mark.timeout(300),
]

MARKER = "RJ-TASKS-SUBMITTED"
# a Ray driver (run as a Ray job) that holds both CPUs with two tasks and queues a third
NAPPING_DRIVER = (
    "import time, ray\n"
    "ray.init()\n"
    "@ray.remote\n"
    "def nap():\n"
    "    time.sleep(300)\n"
    "refs = [nap.remote() for _ in range(3)]\n"
    f"print('{MARKER}', flush=True)\n"
    "ray.get(refs)\n"
)


class PolicyAuthorizer(Authorizer):
    """Allows everything but the (action, resource) pairs a test denies."""

    denied: ClassVar[set[tuple[str, str]]] = set()

    async def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return (action, resource) not in self.denied


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {
        "ServerApp": {
            "jpserver_extensions": {"rayjupyter": True},
            "authorizer_class": PolicyAuthorizer,
        }
    }


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    """One Ray head for the module (it takes tens of seconds to start on a loaded machine)."""
    with running_ray_head() as head:
        yield head


@pytest.fixture
def ray_env(ray_head: RayHead, monkeypatch: pytest.MonkeyPatch) -> RayHead:
    """The Jupyter server finds the cluster's token where Ray's clients look."""
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(ray_head.token_path))
    PolicyAuthorizer.denied = set()
    yield ray_head
    PolicyAuthorizer.denied = set()


async def api(jp_fetch: Any, *parts: str, method: str = "GET", body: Any = None) -> Any:
    kwargs: dict[str, Any] = {"method": method}
    if body is not None or method == "POST":
        kwargs["body"] = json.dumps(body if body is not None else {})
    response = await jp_fetch("rayjupyter", "api", *parts, **kwargs)
    return json.loads(response.body)


async def failure(jp_fetch: Any, *parts: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch(*parts, **kwargs)
    assert info.value.response is not None
    return info.value.code, json.loads(info.value.response.body)


async def eventually(predicate: Any, timeout: float = 90.0, message: str = "") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting for {message}; last: {last!r}")


async def add_ray(jp_fetch: Any, head: RayHead) -> dict[str, Any]:
    info: dict[str, Any] = await api(
        jp_fetch, "clusters", method="POST", body={"address": head.dashboard_url}
    )
    return info


async def test_lists_a_ray_cluster_with_its_nodes_cpus_and_store(
    jp_fetch: Any, ray_env: RayHead
) -> None:
    head = ray_env
    session = json.loads(head.get("/api/version"))["session_name"]
    info = await add_ray(jp_fetch, head)
    assert info["id"] == session and info["engine"] == "ray"
    assert info["address"] == head.dashboard_url
    assert info["connect_address"] == "ray://127.0.0.1:10001"  # Ray Client's default port
    assert info["origin"] == "remote" and info["stop_action"] == "forget"
    assert info["dashboard_url"] == f"/a%40b/rayjupyter/dashboard/{session}/"
    assert info["error"] is None, info["error"]
    status = info["status"]
    assert status["nodes_alive"] == 1 and status["nodes"][0]["alive"]
    assert status["nodes"][0]["resources"]["CPU"] == 2.0
    assert status["cpu_total"] == 2.0 and status["cpu_used"] == 0.0
    assert status["store_capacity"] == 200_000_000
    assert 0 < status["memory_used"] < status["memory_total"]
    assert info["started"] and info["started"] == status["nodes"][0]["started"]

    listing = await api(jp_fetch, "clusters")
    ours = [c for c in listing["clusters"] if c["id"] == session]
    assert len(ours) == 1 and ours[0]["status"]["cpu_total"] == 2.0
    assert listing["ray_dashboard_pages"] == list(RAY_DASHBOARD_PAGES)
    assert (await api(jp_fetch, "clusters", session))["engine"] == "ray"
    again = await add_ray(jp_fetch, head)  # the same cluster is listed once
    assert again["id"] == session
    assert [c["id"] for c in (await api(jp_fetch, "clusters"))["clusters"]].count(session) == 1

    reply = await api(jp_fetch, "clusters", session, method="DELETE")
    assert "keeps running" in reply["message"]
    assert session not in [c["id"] for c in (await api(jp_fetch, "clusters"))["clusters"]]
    assert b"ALIVE" in head.get("/api/v0/nodes")  # forgetting does not stop it


async def test_a_ray_cluster_without_its_token_is_refused_with_the_fix(
    jp_fetch: Any, ray_env: RayHead, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    code, body = await failure(
        jp_fetch,
        "rayjupyter",
        "api",
        "clusters",
        method="POST",
        body=json.dumps({"address": ray_env.dashboard_url}),
    )
    assert code == 502 and "RAY_AUTH_TOKEN" in body["message"], body
    code, body = await failure(
        jp_fetch,
        "rayjupyter",
        "api",
        "clusters",
        method="POST",
        body=json.dumps({"address": "ray://"}),
    )
    assert code == 400 and "ray://HOST:10001" in body["message"], body


async def test_a_ray_client_driver_is_matched_to_its_cluster(
    jp_fetch: Any, jp_serverapp: Any, ray_env: RayHead
) -> None:
    """The status bar's lookup: a process connected with Ray Client (ray://) finds its cluster."""
    head = ray_env
    client = f"ray://127.0.0.1:{head.client_port}"
    info = await api(
        jp_fetch,
        "clusters",
        method="POST",
        body={"address": head.dashboard_url, "ray_client_address": client},
    )
    assert info["connect_address"] == client
    driver_code = (
        f"import ray, sys, time\nray.init({client!r})\nprint('connected', flush=True)\n"
        "sys.stdin.read()\n"
    )
    env = {**os.environ, **head.env()}
    errors = tempfile.TemporaryFile()  # noqa: SIM115 (Ray Client logs there; shown on failure)

    def start_driver() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-c", driver_code],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
        )

    driver = start_driver()
    try:
        assert driver.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(driver.stdout.readline), 120)
        if not line:  # Ray's per-client server can fail to start on a loaded machine: once more
            driver.wait(30)
            driver = start_driver()
            assert driver.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(driver.stdout.readline), 120)
        if not line:
            driver.wait(30)
            errors.seek(0)
            tail = errors.read()[-2000:].decode(errors="replace")
            raise AssertionError(f"the Ray Client driver did not connect: {tail}")
        assert line.strip() == b"connected", line
        registry = jp_serverapp.web_app.settings["rayjupyter"].service.registry
        found, match = await asyncio.to_thread(registry.cluster_of, driver.pid)
        assert match == "connected" and found["id"] == info["id"], (found, match)
    finally:
        if driver.stdin is not None:
            driver.stdin.close()  # the driver exits at end of input
        try:
            driver.wait(30)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait(10)
        errors.close()


async def test_proxied_ray_dashboard_job_api_task_counts_and_log_websocket(
    jp_fetch: Any, jp_ws_fetch: Any, ray_env: RayHead
) -> None:
    head = ray_env
    info = await add_ray(jp_fetch, head)
    session = info["id"]
    page = await jp_fetch("rayjupyter", "dashboard", f"{session}/")
    html = page.body.decode()
    assert "<title>Ray Dashboard</title>" in html and head.token not in html
    version = json.loads((await jp_fetch("rayjupyter", "dashboard", session, "api/version")).body)
    assert version["session_name"] == session

    # a user who may read but not run code may look, and may not submit a job
    PolicyAuthorizer.denied = {("execute", "kernels")}
    entrypoint = f"{shlex.quote(sys.executable)} -c {shlex.quote(NAPPING_DRIVER)}"
    job_request = json.dumps({"entrypoint": entrypoint})
    code, body = await failure(
        jp_fetch, "rayjupyter", "dashboard", session, "api/jobs/", method="POST", body=job_request
    )
    assert code == 403 and "run code" in body["message"], body
    code, _ = await failure(jp_fetch, "rayjupyter", "dashboard", session, "worker/traceback")
    assert code == 403
    PolicyAuthorizer.denied = set()

    # Ray's job API through the proxy: the server adds Ray's token, the browser has none
    submitted = await jp_fetch(
        "rayjupyter", "dashboard", session, "api/jobs/", method="POST", body=job_request
    )
    job_id = json.loads(submitted.body)["submission_id"]
    try:
        ws = await jp_ws_fetch("rayjupyter", "dashboard", session, f"api/jobs/{job_id}/logs/tail")
        try:
            text = ""
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 120
            while MARKER not in text:
                assert loop.time() < deadline, f"no {MARKER} in the job's log: {text!r}"
                message = await asyncio.wait_for(ws.read_message(), deadline - loop.time())
                assert message is not None, f"the log websocket closed: {text!r}"
                text += message if isinstance(message, str) else message.decode()
        finally:
            ws.close()

        async def busy() -> Any:
            status = (await api(jp_fetch, "clusters", session))["status"]
            enough = status and status["tasks_running"] == 2 and status["tasks_pending"] >= 1
            return status if enough and status["cpu_used"] == 2.0 else None

        status = await eventually(busy, message="2 running and 1 pending Ray tasks")
        assert status["drivers"] >= 1 and status["workers"] >= 2
    finally:
        head.post(f"/api/jobs/{job_id}/stop", b"")

    async def idle() -> bool:
        status = (await api(jp_fetch, "clusters", session))["status"]
        return bool(status and status["tasks_running"] == 0 and status["cpu_used"] == 0.0)

    await eventually(idle, message="the stopped job's tasks to end")

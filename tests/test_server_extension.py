"""The Jupyter server extension, in process (pytest-jupyter), against real clusters, real
kernels and a real dashboard behind the proxy: every endpoint, its refusals and errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import wait_for_pids_gone
from tornado.httpclient import HTTPClientError

from rayjupyter.core import discovery

pytest_plugins = ["pytest_jupyter.jupyter_server"]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"rayjupyter": True}}}


def extension(serverapp: Any) -> Any:
    """The loaded RayJupyterExtension (ExtensionApp puts itself in the web app's settings)."""
    return serverapp.web_app.settings["rayjupyter"]


async def call(jp_fetch: Any, *parts: str, method: str = "GET", body: Any = None) -> Any:
    """A successful API call's JSON."""
    kwargs: dict[str, Any] = {"method": method}
    if body is not None:
        kwargs["body"] = json.dumps(body)
    elif method == "POST":
        kwargs["body"] = ""
    response = await jp_fetch("rayjupyter", "api", *parts, **kwargs)
    return json.loads(response.body)


async def refused(
    jp_fetch: Any, *parts: str, method: str = "GET", body: Any = None, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of a call that must fail."""
    if body is not None:
        kwargs["body"] = body if isinstance(body, str) else json.dumps(body)
    elif method == "POST":
        kwargs["body"] = ""
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch(*parts, method=method, **kwargs)
    response = info.value.response
    assert response is not None
    payload = json.loads(response.body)
    assert set(payload) == {"message", "reason"}, payload
    assert "Traceback" not in payload["message"]
    return info.value.code, payload


async def eventually(predicate: Any, timeout: float = 20.0, message: str = "") -> Any:
    """Await an async predicate until it returns something truthy (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {message} (last: {last!r})")


def by_id(listing: dict[str, Any], session: str) -> dict[str, Any] | None:
    return next((c for c in listing["clusters"] if c["id"] == session), None)


# ---------------------------------------------------------------------------- processes


class Driver:
    """A script that starts a local cluster (rj.init) and holds it until its stdin closes."""

    CODE = (
        "import sys, rayjupyter as rj\n"
        "ctx = rj.init(num_cpus=1)\n"
        "print(ctx.address_info['session'], ctx.connect_address, flush=True)\n"
        "sys.stdin.read()\n"
        "rj.shutdown()\n"
    )

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().split()
        assert len(line) == 2, "the driver did not start its cluster"
        self.session, self.connect_address = line
        self.node_pid = int(discovery.read_cluster_file(self.session)["pid"])  # type: ignore[index]

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        wait_for_pids_gone([self.node_pid], timeout=20)


@pytest.fixture
def driver() -> Iterator[Driver]:
    d = Driver()
    try:
        yield d
    finally:
        d.stop()


@contextlib.asynccontextmanager
async def kernel(jp_fetch: Any, serverapp: Any) -> AsyncIterator[tuple[str, Any]]:
    """A real kernel started through the server's API, and a client to run code in it."""
    response = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    kernel_id = json.loads(response.body)["id"]
    manager = serverapp.kernel_manager.get_kernel(kernel_id)
    client = manager.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        yield kernel_id, client
    finally:
        client.stop_channels()
        pid = manager.provisioner.pid if manager.provisioner else None
        tree = {pid} if pid else set()
        if pid:
            with contextlib.suppress(psutil.Error):
                tree.update(p.pid for p in psutil.Process(pid).children(recursive=True))
        await jp_fetch("api", "kernels", kernel_id, method="DELETE")
        wait_for_pids_gone(tree, timeout=20)


async def run(client: Any, code: str) -> str:
    """Run code in the kernel; its stdout, or AssertionError with its traceback."""
    out: list[str] = []

    def hook(message: dict[str, Any]) -> None:
        content = message["content"]
        if message["msg_type"] == "stream":
            out.append(content["text"])
        elif message["msg_type"] == "error":
            out.append("\n".join(content["traceback"]))

    reply = await client.execute_interactive(code, timeout=90, output_hook=hook)
    assert reply["content"]["status"] == "ok", "".join(out)
    return "".join(out)


# ---------------------------------------------------------------------------- auth


async def test_every_endpoint_refuses_requests_without_jupyters_token(jp_fetch, jp_serverapp):
    no_token = {"Authorization": ""}
    for method, parts in [
        ("GET", ("rayjupyter", "api", "clusters")),
        ("POST", ("rayjupyter", "api", "clusters")),
        ("GET", ("rayjupyter", "api", "clusters", "abc")),
        ("DELETE", ("rayjupyter", "api", "clusters", "abc")),
        ("GET", ("rayjupyter", "api", "kernels", "abc", "cluster")),
    ]:
        body = "{}" if method == "POST" else None
        code, _ = await refused(jp_fetch, *parts, method=method, body=body, headers=no_token)
        assert code == 403, (method, parts)
    for method in ("POST", "DELETE"):  # the proxy: anything but a page view is a plain 403
        code, _ = await refused(
            jp_fetch,
            "rayjupyter",
            "dashboard",
            "abc",
            "x",
            method=method,
            headers=no_token,
            body="{}" if method == "POST" else None,
            allow_nonstandard_methods=True,
        )
        assert code == 403
    # a page view without login goes to Jupyter's login page, never to the dashboard
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch(
            "rayjupyter", "dashboard", "abc", "overview", headers=no_token, follow_redirects=False
        )
    assert info.value.code == 302
    assert "/login" in info.value.response.headers["Location"]
    # a wrong token is no better than none
    code, _ = await refused(
        jp_fetch, "rayjupyter", "api", "clusters", headers={"Authorization": "token wrong"}
    )
    assert code == 403


async def test_websocket_proxy_refuses_without_jupyters_token(jp_ws_fetch, jp_serverapp):
    with pytest.raises(HTTPClientError) as info:
        await jp_ws_fetch(
            "rayjupyter", "dashboard", "abc", "overview", "ws", headers={"Authorization": ""}
        )
    assert info.value.code == 403


# ---------------------------------------------------------------------------- clusters


async def test_start_list_and_stop_a_local_cluster(jp_fetch, jp_serverapp):
    info = await call(jp_fetch, "clusters", method="POST", body={"num_cpus": 1})
    session = info["id"]
    assert info["origin"] == "panel" and info["local"] is True
    assert info["stop_action"] == "stop"
    assert info["connect_address"].startswith("rayjupyter://")
    assert info["dashboard_url"] == f"/a%40b/rayjupyter/dashboard/{session}/"
    status = info["status"]
    assert status is not None, info["error"]
    assert status["nodes_alive"] == 1 and status["cpu_total"] == 1.0
    assert status["memory_total"] > 0 and status["store_capacity"] > 0
    node_pid = int(discovery.read_cluster_file(session)["pid"])  # type: ignore[index]

    listing = await call(jp_fetch, "clusters")
    assert by_id(listing, session)["origin"] == "panel"  # type: ignore[index]
    assert listing["clusters"][0]["id"] == session  # this server's clusters come first
    assert [p["path"] for p in listing["dashboard_pages"]][:3] == [
        "overview",
        "task-stream",
        "progress",
    ]
    one = await call(jp_fetch, "clusters", session)
    assert one["id"] == session and one["status"]["nodes_alive"] == 1

    reply = await call(jp_fetch, "clusters", session, method="DELETE")
    assert session in reply["message"]
    wait_for_pids_gone([node_pid], timeout=20)
    assert by_id(await call(jp_fetch, "clusters"), session) is None
    code, payload = await refused(jp_fetch, "rayjupyter", "api", "clusters", session)
    assert code == 404 and session in payload["message"]


async def test_clusters_started_from_the_panel_stop_with_the_server(jp_fetch, jp_serverapp):
    info = await call(jp_fetch, "clusters", method="POST", body={"num_cpus": 1})
    node_pid = int(discovery.read_cluster_file(info["id"])["pid"])  # type: ignore[index]
    await jp_serverapp.extension_manager.stop_all_extensions()
    wait_for_pids_gone([node_pid], timeout=20)
    assert discovery.read_cluster_file(info["id"]) is None


async def test_bad_requests_get_one_line_json_errors(jp_fetch, jp_serverapp):
    api = ("rayjupyter", "api")
    for body in ("not json", "[1, 2]", {"num_cpus": "two"}, {"num_cpus": -1}, {"cpus": 2}):
        code, payload = await refused(jp_fetch, *api, "clusters", method="POST", body=body)
        assert code == 400, (body, payload)
        assert "\n" not in payload["message"]
    code, payload = await refused(jp_fetch, *api, "clusters", "nosuch", method="DELETE")
    assert code == 404 and "nosuch" in payload["message"]
    code, payload = await refused(jp_fetch, *api, "kernels", "nosuch", "cluster")
    assert code == 404 and "nosuch" in payload["message"]
    # an address without its secret, and one where nothing listens
    code, payload = await refused(
        jp_fetch, *api, "clusters", method="POST", body={"address": "127.0.0.1:1"}
    )
    assert code == 400 and "secret" in payload["message"].lower()
    code, payload = await refused(
        jp_fetch, *api, "clusters", method="POST", body={"address": "rayjupyter://s@127.0.0.1:9"}
    )
    assert code == 502 and "127.0.0.1:9" in payload["message"]


async def test_a_cluster_started_by_another_process_is_listed_but_not_stopped_here(
    jp_fetch, jp_serverapp, driver
):
    info = by_id(await call(jp_fetch, "clusters"), driver.session)
    assert info is not None
    assert info["origin"] == "process" and info["owner_pid"] == driver.process.pid
    assert info["stop_action"] == "none" and "rj.shutdown()" in info["stop_note"]
    assert info["status"]["nodes_alive"] == 1
    code, payload = await refused(
        jp_fetch, "rayjupyter", "api", "clusters", driver.session, method="DELETE"
    )
    assert code == 409 and str(driver.process.pid) in payload["message"]
    assert psutil.pid_exists(driver.node_pid)
    # adding its address again just finds it
    again = await call(
        jp_fetch, "clusters", method="POST", body={"address": driver.connect_address}
    )
    assert again["id"] == driver.session and again["origin"] == "process"


async def test_add_a_remote_cluster_see_it_die_and_remove_it(jp_fetch, jp_serverapp, driver):
    # Every cluster on this machine is discoverable; removing its record makes this one look
    # like a cluster on another machine, known only by the address it is added with.
    os.unlink(discovery.cluster_file(driver.session))
    assert by_id(await call(jp_fetch, "clusters"), driver.session) is None

    info = await call(jp_fetch, "clusters", method="POST", body={"address": driver.connect_address})
    assert info["id"] == driver.session
    assert info["origin"] == "remote" and info["stop_action"] == "forget"
    assert info["status"]["nodes_alive"] == 1
    assert by_id(await call(jp_fetch, "clusters"), driver.session)["origin"] == "remote"  # type: ignore[index]

    driver.stop()  # the cluster goes away: the listing says why, it does not fail

    async def unreachable() -> Any:
        found = by_id(await call(jp_fetch, "clusters"), driver.session)
        return found if found and found["status"] is None else None

    gone = await eventually(unreachable, timeout=30, message="the dead cluster's error")
    assert gone["error"] and "\n" not in gone["error"]

    reply = await call(jp_fetch, "clusters", driver.session, method="DELETE")
    assert "keeps running" in reply["message"]
    assert by_id(await call(jp_fetch, "clusters"), driver.session) is None


async def test_status_counts_running_and_pending_tasks(jp_fetch, jp_serverapp, driver):
    code = (
        "import time, rayjupyter as rj\n"
        f"rj.init(address={driver.connect_address!r})\n"
        "@rj.remote\n"
        "def slow(): time.sleep(60)\n"
        "refs = [slow.remote() for _ in range(3)]\n"
        "print('submitted', flush=True)\n"
        "import sys; sys.stdin.read()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    submitter = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        assert submitter.stdout is not None
        assert submitter.stdout.readline().strip() == b"submitted"

        async def counted() -> Any:
            info = by_id(await call(jp_fetch, "clusters"), driver.session)
            status = info and info["status"]
            if status and status["tasks_running"] + status["tasks_pending"] == 3:
                return status
            return None

        # 1 CPU: one task runs; the node may already have handed the next one to the busy
        # worker (prefetch), and its status counts that one as RUNNING too
        status = await eventually(counted, message="3 running or pending tasks")
        assert 1 <= status["tasks_running"] <= 2
        assert status["tasks"].get("RUNNING") == status["tasks_running"]
        assert status["cpu_used"] == 1.0 and status["drivers"] == 2
    finally:
        submitter.kill()
        submitter.wait(10)


# ---------------------------------------------------------------------------- kernels


async def test_the_cluster_of_a_kernel(jp_fetch, jp_serverapp):
    async with kernel(jp_fetch, jp_serverapp) as (owner_id, owner):
        empty = await call(jp_fetch, "kernels", owner_id, "cluster")
        assert empty["cluster"] is None and empty["match"] is None and empty["pid"] > 0

        out = await run(
            owner,
            "import rayjupyter as rj\nctx = rj.init(num_cpus=1)\n"
            "print(ctx.address_info['session'], ctx.connect_address)",
        )
        session, address = out.split()
        found = await call(jp_fetch, "kernels", owner_id, "cluster")
        assert found["match"] == "owner" and found["cluster"]["id"] == session
        assert found["cluster"]["origin"] == "kernel"
        assert found["cluster"]["kernel_id"] == owner_id
        assert found["cluster"]["status"]["tasks_running"] == 0

        # the panel lists it as the kernel's and will not stop it from here
        info = by_id(await call(jp_fetch, "clusters"), session)
        assert info["origin"] == "kernel" and info["stop_action"] == "none"  # type: ignore[index]
        assert "%ray_disconnect" in info["stop_note"]  # type: ignore[index]
        code, payload = await refused(
            jp_fetch, "rayjupyter", "api", "clusters", session, method="DELETE"
        )
        assert code == 409 and owner_id in payload["message"]

        async with kernel(jp_fetch, jp_serverapp) as (other_id, other):
            await run(other, f"import rayjupyter as rj\nrj.init(address={address!r})")
            attached = await call(jp_fetch, "kernels", other_id, "cluster")
            assert attached["match"] == "connected"
            assert attached["cluster"]["id"] == session

"""The Jupyter server extension, in process (pytest-jupyter), against real clusters, real
kernels and a real dashboard behind the proxy: every endpoint, its refusals and errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import lab_helpers
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

        # 1 CPU: one task runs; one the node has already handed to the busy worker
        # (prefetch) still counts as pending
        status = await eventually(counted, message="3 running or pending tasks")
        assert status["tasks_running"] == 1 and status["tasks_pending"] == 2
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


# ---------------------------------------------------------------------------- dashboard proxy


class StandInDashboard:
    """Until the dashboard lands: a tornado app with the dashboard's contract (token gate,
    every path under the prefix, a websocket), on this test's event loop."""

    def __init__(self, prefix: str) -> None:
        import tornado.web
        import tornado.websocket

        token = self.token = os.urandom(8).hex()
        seen = self.seen = []

        class Gate(tornado.web.RequestHandler):
            def prepare(self) -> None:
                seen.append(dict(self.request.headers))
                if self.request.headers.get("Authorization") != f"token {token}":
                    raise tornado.web.HTTPError(403)

        class Echo(Gate):
            def get(self) -> None:
                self.set_cookie("dashboard", "1")
                self.finish({"path": self.request.path, "query": self.request.query})

            def post(self) -> None:
                self.finish({"body": self.request.body.decode()})

        class Moved(Gate):
            def get(self) -> None:
                self.redirect(f"http://127.0.0.1:{self.request.host.split(':')[1]}{prefix}echo")

        class Socket(tornado.websocket.WebSocketHandler):
            def prepare(self) -> None:
                Gate.prepare(self)  # type: ignore[arg-type]

            def select_subprotocol(self, subprotocols: list[str]) -> str | None:
                return "bokeh" if "bokeh" in subprotocols else None

            def check_origin(self, origin: str) -> bool:
                return origin.startswith("http://127.0.0.1:")

            def on_message(self, message: str | bytes) -> None:
                self.write_message(message, binary=isinstance(message, bytes))

        self.app = tornado.web.Application(
            [(f"{prefix}echo", Echo), (f"{prefix}moved", Moved), (f"{prefix}ws", Socket)]
        )
        self.server = self.app.listen(0, "127.0.0.1")
        self.port = next(iter(self.server._sockets.values())).getsockname()[1]
        self.pid = os.getpid()
        self.url = f"http://127.0.0.1:{self.port}{prefix}"

    def stop(self) -> None:
        self.server.stop()


async def test_proxy_http_and_websocket(jp_fetch, jp_ws_fetch, jp_serverapp, driver):
    started: list[StandInDashboard] = []
    # listening on this test's loop (the starter runs in the extension's thread pool)
    standin = StandInDashboard(f"/a%40b/rayjupyter/dashboard/{driver.session}/")

    def starter(connect_address: str, *, host: str, port: int, prefix: str) -> StandInDashboard:
        assert connect_address == driver.connect_address and host == "127.0.0.1"
        assert prefix == f"/a%40b/rayjupyter/dashboard/{driver.session}/"
        started.append(standin)
        return standin

    extension(jp_serverapp).service.dashboards.starter = starter
    base = ("rayjupyter", "dashboard", driver.session)
    jupyter_token = jp_serverapp.identity_provider.token
    response = await jp_fetch(
        *base, "echo", params={"token": jupyter_token, "x": "1"}, headers={"Cookie": "a=b"}
    )
    prefix = f"/a%40b/rayjupyter/dashboard/{driver.session}/"
    assert json.loads(response.body) == {"path": f"{prefix}echo", "query": "x=1"}
    cookies = response.headers.get_list("Set-Cookie")  # Jupyter's login cookie, not the dashboard's
    assert not [c for c in cookies if c.startswith("dashboard=")], cookies
    (dashboard,) = started
    assert "Cookie" not in dashboard.seen[-1]  # Jupyter's credentials stay with Jupyter
    response = await jp_fetch(*base, "echo", method="POST", body="hello")
    assert json.loads(response.body) == {"body": "hello"}
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch(*base, "moved", follow_redirects=False)
    assert info.value.code == 302
    assert info.value.response.headers["Location"] == f"{prefix}echo"
    assert len(started) == 1  # one dashboard per cluster, started on first use

    ws = await jp_ws_fetch(*base, "ws", subprotocols=["bokeh", "session-token"])
    try:
        assert ws.selected_subprotocol == "bokeh"
        await ws.write_message("ping")
        assert await ws.read_message() == "ping"
        await ws.write_message(b"\x00\x01", binary=True)
        assert await ws.read_message() == b"\x00\x01"
    finally:
        ws.close()

    # a cluster that is not known: a clear JSON error, no dashboard started
    code, payload = await refused(jp_fetch, "rayjupyter", "dashboard", "nosuch", "echo")
    assert code == 404 and "nosuch" in payload["message"]
    dashboard.stop()


async def test_proxy_to_the_real_dashboard(jp_fetch, jp_ws_fetch, jp_serverapp, driver):
    """The cluster's dashboard, started on first use, through Jupyter's port and auth:
    its JSON API, a bokeh page and the page's websocket; it stops with the server."""
    base = ("rayjupyter", "dashboard", driver.session)
    prefix = f"/a%40b/rayjupyter/dashboard/{driver.session}"
    status = json.loads((await jp_fetch(*base, "api", "v0", "status")).body)
    assert status["session"] == driver.session and status["nodes"]
    dashboards = extension(jp_serverapp).service.dashboards
    (dashboard,) = dashboards.running().values()

    root = f"rayjupyter/dashboard/{driver.session}"  # jp_fetch puts the base URL first
    for path, location in [(root, f"{prefix}/"), (f"{root}/", f"{prefix}/overview")]:
        with pytest.raises(HTTPClientError) as info:  # the root opens the overview
            await jp_fetch(path, follow_redirects=False)
        assert info.value.code == 302
        assert info.value.response.headers["Location"] == location

    page = (await jp_fetch(*base, "overview")).body.decode()
    assert "Bokeh" in page and dashboard.token not in page
    token = re.search(r'"token":\s*"([^"]+)"', page)
    assert token, "the bokeh page carries its session token"
    # the page's websocket, as BokehJS opens it (session token as subprotocol)
    ws = await jp_ws_fetch(*base, "overview", "ws", subprotocols=["bokeh", token.group(1)])
    try:
        assert ws.selected_subprotocol == "bokeh"
        header = json.loads(await ws.read_message())
        assert header["msgtype"] == "ACK"
    finally:
        ws.close()

    # an error of the dashboard's own reaches the browser as it is (one-line JSON)
    code, payload = 0, {}
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch(*base, "api", "v0", "tasks", params={"limit": "x"})
    code, payload = info.value.code, json.loads(info.value.response.body)
    assert code == 400 and "limit" in payload["error"]
    assert len(dashboards.running()) == 1  # one per cluster

    await jp_serverapp.extension_manager.stop_all_extensions()
    wait_for_pids_gone([dashboard.pid], timeout=20)


# ---------------------------------------------------------------------------- typescript


def test_typescript_models_match_the_python_models():
    """labextension/src/models.ts is generated from rayjupyter/server/models.py, never edited."""
    from rayjupyter.server import typescript

    committed = (REPO / "labextension" / "src" / "models.ts").read_text()
    assert committed == typescript.generate(), (
        "labextension/src/models.ts differs from the Python models: run "
        "`python -m rayjupyter.server.typescript > labextension/src/models.ts`"
    )


def test_typescript_generator_covers_json_types():
    from typing import Literal, TypedDict

    from rayjupyter.server import typescript

    Kind = Literal["a", "b"]

    class Inner(TypedDict):
        x: float

    class Outer(TypedDict, total=False):
        inner: Inner | None
        kinds: list[Kind | None]
        table: dict[str, list[int]]

    aliases = {"Kind": Kind}
    hints = {"inner": Inner | None, "kinds": list[Kind | None], "table": dict[str, list[int]]}
    rendered = {name: typescript._ts(hint, aliases) for name, hint in hints.items()}
    assert rendered == {
        "inner": "Inner | null",
        "kinds": "(Kind | null)[]",
        "table": "{ [key: string]: number[] }",
    }
    with pytest.raises(TypeError, match="JSON"):
        typescript._ts(set[int], aliases)


# ---------------------------------------------------------------------------- packaging


ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.timeout(300)
def test_wheel_ships_an_enabled_lab_and_server_extension(tmp_path):
    """pip install of the wheel gives both extensions, enabled, with no node at install time."""
    if not lab_helpers.labextension_built():
        pytest.skip(
            "the lab extension is not built: pip install -e . (or jlpm build in labextension/)"
        )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_NO_INPUT"] = "1"
    dist = tmp_path / "dist"
    subprocess.run(  # no build isolation: offline, with this environment's build tools
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(REPO),
        ],
        check=True,
        env=env,
        timeout=240,
    )
    (wheel,) = dist.glob("rayjupyter-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = "rayjupyter-0.1.0.data/data/"
    labext = f"{data}share/jupyter/labextensions/rayjupyter/"
    assert f"{labext}package.json" in names
    assert f"{labext}install.json" in names
    assert f"{labext}static/style.js" in names
    assert any(n.startswith(f"{labext}static/remoteEntry.") for n in names)
    assert f"{data}etc/jupyter/jupyter_server_config.d/rayjupyter.json" in names
    assert "rayjupyter/server/app.py" in names and "rayjupyter/server/models.py" in names
    assert not [n for n in names if "node_modules" in n or n.endswith(".ts")]

    # install it into a fresh prefix that sees this environment's packages but not this
    # checkout: what a user's `pip install rayjupyter-*.whl` gives
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob("lib/python*/site-packages")
    (site / "shared_env.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n"
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",  # else pip uninstalls this environment's rayjupyter first
            "-q",
            "--prefix",
            str(venv),
            str(wheel),
        ],
        check=True,
        env=env,
        timeout=120,
    )
    python = str(venv / "bin" / "python")
    where = subprocess.run(
        [python, "-c", "import rayjupyter; print(rayjupyter.__file__)"],
        check=True,
        env=env,
        cwd=tmp_path,  # not this checkout
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(str(site)), where

    def listing(module: str) -> str:
        """`jupyter labextension list` / `jupyter server extension list`, by their modules."""
        done = subprocess.run(
            [python, "-m", module, "list"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return ANSI.sub("", done.stdout + done.stderr)

    labextensions = listing("jupyterlab.labextensions")
    assert re.search(r"rayjupyter v0\.1\.0 enabled\s+OK \(python, rayjupyter\)", labextensions), (
        labextensions
    )
    server = listing("jupyter_server.extension.serverextension")
    assert re.search(r"rayjupyter enabled", server), server
    assert re.search(r"rayjupyter 0\.1\.0 OK", server), server

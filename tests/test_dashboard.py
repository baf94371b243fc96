"""The dashboard, on a real cluster and a real dashboard process: the JSON API, the token
gate, bokeh's pages and websocket under a prefix, the process's lifetime, and one real
browser."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import types
import typing
import urllib.error
import urllib.request
from typing import Any, get_args, get_origin, get_type_hints

import pytest
from helpers import wait_for_condition, wait_for_pids_gone

import rayjupyter as rj
from rayjupyter.core import discovery
from rayjupyter.dashboard import models
from rayjupyter.dashboard.auth import cookie_name, dashboard_token
from rayjupyter.dashboard.launch import DashboardError, DashboardProcess, start_dashboard
from rayjupyter.dashboard.pages import PAGES

PREFIX = "/user/alice/rayjupyter/dashboard/abc123"


@rj.remote
def square(x):
    print(f"squaring {x}")
    return x * x


@rj.remote
def explode():
    raise ValueError("boom")


@rj.remote
class Tally:
    def add(self, n):
        return n


@pytest.fixture(scope="module")
def dash(shared_cluster):
    """A dashboard under a proxy-style prefix, after some tasks, a failure and an actor."""
    rj.get([square.remote(i) for i in range(6)], timeout=60)
    with pytest.raises(ValueError):
        rj.get(explode.remote(), timeout=60)
    actor = Tally.options(name="tally").remote()
    assert rj.get(actor.add.remote(2), timeout=60) == 2
    held = rj.put(b"x" * 200_000)  # an object in shared memory while the module runs
    dashboard = start_dashboard(shared_cluster.connect_address, prefix=PREFIX + "/")
    try:
        yield types.SimpleNamespace(
            process=dashboard, context=shared_cluster, actor=actor, held=held
        )
    finally:
        dashboard.stop()
        rj.kill(actor)


# ---------------------------------------------------------------- HTTP helpers


class Answer(typing.NamedTuple):
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def fetch(
    dashboard: DashboardProcess | types.SimpleNamespace,
    path: str,
    *,
    token: str | None = "right",
    headers: dict[str, str] | None = None,
    prefix: str | None = None,
) -> Answer:
    """GET {prefix}/{path}; token "right" adds ?token=<the token>, None adds nothing."""
    root = f"http://127.0.0.1:{dashboard.port}{dashboard.prefix if prefix is None else prefix}/"
    url = root + path
    if token is not None:
        value = dashboard.token if token == "right" else token
        url += ("&" if "?" in url else "?") + f"token={value}"
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=30) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers, error.read())


def conforms(value: Any, kind: Any, where: str = "payload") -> None:
    """Assert that a JSON value matches a model type exactly (keys, types, literals)."""
    origin = get_origin(kind)
    if typing.is_typeddict(kind) or dataclasses.is_dataclass(kind):  # read models: dataclasses
        hints = get_type_hints(kind)
        assert isinstance(value, dict), f"{where}: expected an object, got {value!r}"
        assert set(value) == set(hints), f"{where}: keys {sorted(value)} != {sorted(hints)}"
        for key, hint in hints.items():
            conforms(value[key], hint, f"{where}.{key}")
    elif origin is list:
        assert isinstance(value, list), f"{where}: expected a list, got {value!r}"
        for index, item in enumerate(value):
            conforms(item, get_args(kind)[0], f"{where}[{index}]")
    elif origin is dict:
        assert isinstance(value, dict), f"{where}: expected an object, got {value!r}"
        for key, item in value.items():
            assert isinstance(key, str)
            conforms(item, get_args(kind)[1], f"{where}[{key!r}]")
    elif origin is typing.Literal:
        assert value in get_args(kind), f"{where}: {value!r} not in {get_args(kind)}"
    elif origin in (typing.Union, types.UnionType):
        errors = []
        for option in get_args(kind):
            try:
                conforms(value, option, where)
                return
            except AssertionError as error:
                errors.append(str(error))
        raise AssertionError(f"{where}: {value!r} matches none of {kind}: {errors}")
    elif kind is type(None):
        assert value is None, f"{where}: expected null, got {value!r}"
    elif kind is float:  # JSON has one number type: an int is a valid float
        assert isinstance(value, int | float) and not isinstance(value, bool), where
    elif kind is int:  # counts, bytes and pids are whole numbers, never 2.0 or "2"
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r}"
    else:
        assert isinstance(value, kind), f"{where}: expected {kind}, got {value!r}"


# ---------------------------------------------------------------- the API


def test_every_endpoint_answers_its_documented_model(dash):
    for endpoint, model in models.ENDPOINTS.items():
        answer = fetch(dash.process, f"api/v0/{endpoint}")
        assert answer.status == 200, (endpoint, answer.body)
        assert answer.headers["Content-Type"] == "application/json"
        conforms(answer.json(), model, endpoint)


def test_api_carries_raw_numbers_about_what_ran(dash):
    status = fetch(dash.process, "api/v0/status").json()
    assert status["session"] == dash.context.address_info["session"]
    assert status["address"] == dash.context.address
    assert status["total"]["CPU"] == 2.0
    assert status["store"]["capacity"] > 0 and status["store"]["used_bytes"] >= 200_000
    assert 0 < status["machine"]["memory_used"] <= status["machine"]["memory_total"]
    assert status["drivers"] == 1  # the dashboard is an observer, not a driver

    tasks = fetch(dash.process, "api/v0/tasks?limit=1000").json()["tasks"]
    squares = [t for t in tasks if t["name"] == "square"]
    assert len(squares) >= 6 and all(t["state"] == "FINISHED" for t in squares)
    assert all(t["start_time"] <= t["end_time"] and t["worker_pid"] > 0 for t in squares)
    summary = fetch(dash.process, "api/v0/tasks/summary").json()["summary"]
    assert summary["square"]["FINISHED"] >= 6 and summary["explode"]["FAILED"] >= 1
    assert summary["Tally.add"]["FINISHED"] >= 1

    actors = fetch(dash.process, "api/v0/actors?name=tally").json()["actors"]
    assert [(a["class_name"], a["state"]) for a in actors] == [("Tally", "ALIVE")]
    assert actors[0]["pid"] > 0
    objects = fetch(dash.process, f"api/v0/objects?object_id={dash.held.hex()}").json()
    assert objects["objects"][0]["object_size"] >= 200_000
    assert objects["objects"][0]["where"] == "shared memory"
    nodes = fetch(dash.process, "api/v0/nodes").json()["nodes"]
    assert nodes[0]["Alive"] and nodes[0]["Resources"]["object_store_memory"] > 0

    job_id = rj.get_runtime_context().get_job_id()
    jobs = fetch(dash.process, "api/v0/jobs").json()["jobs"]
    assert [job["job_id"] for job in jobs] == [job_id]  # the dashboard is not a job
    assert jobs[0]["driver_pid"] == os.getpid()

    trace = fetch(dash.process, "api/v0/timeline").json()["traceEvents"]
    ours = [event for event in trace if event["name"] == "square"]
    assert len(ours) >= 6 and all(e["ph"] == "X" and e["dur"] >= 0 for e in ours)
    start = next(t for t in squares if t["task_id"] == ours[0]["args"]["task_id"])
    assert ours[0]["ts"] == pytest.approx(start["start_time"] * 1e6)  # microseconds


def test_logs_endpoint_per_worker(dash):
    def printed() -> list[dict[str, Any]]:
        workers = fetch(dash.process, "api/v0/logs").json()["workers"]
        text = {line["text"] for w in workers for line in w["lines"]}
        return workers if {f"squaring {i}" for i in range(6)} <= text else []

    wait_for_condition(printed, timeout=15)
    worker = next(w for w in printed() if any("squaring" in x["text"] for x in w["lines"]))
    assert worker["lines"][0]["stream"] == "stdout" and worker["lines"][0]["time"] > 0
    one = fetch(dash.process, f"api/v0/logs?pid={worker['pid']}&lines=1").json()["workers"]
    assert [w["pid"] for w in one] == [worker["pid"]] and len(one[0]["lines"]) == 1
    assert fetch(dash.process, "api/v0/logs?pid=1").json() == {"workers": []}


def test_task_filters_and_limit(dash):
    failed = fetch(dash.process, "api/v0/tasks?state=FAILED&name=explode").json()["tasks"]
    assert failed and {(t["name"], t["state"]) for t in failed} == {("explode", "FAILED")}
    assert fetch(dash.process, "api/v0/tasks?state=FAILED&name=square").json() == {"tasks": []}
    assert len(fetch(dash.process, "api/v0/tasks?limit=2").json()["tasks"]) == 2
    calls = fetch(dash.process, "api/v0/tasks?type=ACTOR_TASK").json()["tasks"]
    assert calls and all(t["actor_id"] == dash.actor.binary().hex() for t in calls)


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("tasks?limit=0", "limit must be"),
        ("tasks?limit=many", "limit must be"),
        ("tasks?colour=red", "unknown filter"),
        ("status?x=1", "no parameters"),
        ("logs?pid=me", "pid must be"),
        # past Python's int-digits limit, and digits int() refuses: 400, not 500
        ("tasks?limit=" + "9" * 5000, "limit must be a whole number from 1 to 100000"),
        ("tasks?limit=%C2%B2", "limit must be"),
        ("tasks?limit=100001", "got 100001"),
        ("logs?lines=" + "9" * 5000, "lines must be"),
        ("logs?pid=" + "9" * 5000, "pid must be"),
    ],
)
def test_bad_queries_get_a_one_line_json_error(dash, query, complaint):
    answer = fetch(dash.process, f"api/v0/{query}")
    assert answer.status == 400
    assert complaint in answer.json()["error"] and answer.body.count(b"\n") <= 1


# ---------------------------------------------------------------- the token gate


@pytest.mark.parametrize("path", ["api/v0/status", "api/v0/tasks", "overview", "", "progress"])
def test_no_token_or_a_wrong_one_is_refused(dash, path):
    for token in (None, "wrong", dashboard_token("another secret"), "%C3%A9"):
        answer = fetch(dash.process, path, token=token)
        assert answer.status == 403, (path, token)
        assert answer.body.count(b"\n") == 1 and "token" in answer.json()["error"]


def test_static_files_need_the_token_too(dash):
    page = fetch(dash.process, "overview").body.decode()
    script = re.search(r'<script src="([^"?]*bokeh\.min\.js)', page).group(1)
    static = script[len(PREFIX) + 1 :]
    assert fetch(dash.process, static, token=None).status == 403
    answer = fetch(dash.process, static)
    assert answer.status == 200 and len(answer.body) > 100_000


def test_header_and_cookie_carry_the_token(dash):
    token = dash.process.token
    assert (
        fetch(
            dash.process, "api/v0/jobs", token=None, headers={"Authorization": f"token {token}"}
        ).status
        == 200
    )
    assert (
        fetch(
            dash.process, "api/v0/jobs", token=None, headers={"Authorization": "token nope"}
        ).status
        == 403
    )
    first = fetch(dash.process, "overview")
    cookie = first.headers["Set-Cookie"]
    assert cookie.startswith(f"{cookie_name(token)}={token};")
    assert f"Path={PREFIX}/" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    jar = {"Cookie": f"{cookie_name(token)}={token}"}
    assert fetch(dash.process, "api/v0/status", token=None, headers=jar).status == 200
    forged = {"Cookie": f"{cookie_name(token)}=0000"}
    assert fetch(dash.process, "api/v0/status", token=None, headers=forged).status == 403


def test_token_is_an_hmac_of_the_secret_not_the_secret(dash):
    secret = dash.context.connect_address.split("://", 1)[1].rpartition("@")[0]
    assert dash.process.token == dashboard_token(secret) and secret not in dash.process.token
    assert len(dash.process.token) == 64 and dashboard_token(secret) != dashboard_token("x")
    page = fetch(dash.process, "overview").body.decode()
    assert dash.process.token not in page  # not copied into bokeh's session token


# ---------------------------------------------------------------- bokeh under the prefix


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_renders_with_bokeh_served_locally(dash, page):
    answer = fetch(dash.process, page)
    assert answer.status == 200
    html = answer.body.decode()
    assert f'<script src="{PREFIX}/static/js/bokeh.min.js' in html
    assert "cdn.bokeh.org" not in html and "https://" not in html


def test_prefix_is_required_and_the_root_opens_the_overview(dash):
    assert fetch(dash.process, "api/v0/status", prefix="").status == 404
    assert fetch(dash.process, "overview", prefix="").status == 404
    root = fetch(dash.process, "")
    assert root.status == 302 and root.headers["Location"].startswith(f"{PREFIX}/overview")
    assert dash.process.url == f"http://127.0.0.1:{dash.process.port}{PREFIX}/"


def _session_token(page: str) -> str:
    return re.search(r'"token":"([^"]+)"', page).group(1)


async def _open_bokeh_websocket(
    url: str, headers: dict[str, str], subprotocols: list[str]
) -> dict[str, Any]:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    request = HTTPRequest(url, headers=headers, request_timeout=30)
    connection = await websocket_connect(request, subprotocols=subprotocols)
    try:
        return json.loads(await asyncio.wait_for(connection.read_message(), 30))
    finally:
        connection.close()


def _websocket(dash, headers: dict[str, str], session: str) -> dict[str, Any]:
    """Open the overview's websocket; bokeh's first message (its header)."""
    url = f"ws://127.0.0.1:{dash.process.port}{PREFIX}/overview/ws"
    return asyncio.run(_open_bokeh_websocket(url, headers, ["bokeh", session]))


def test_websocket_with_the_token_works_and_without_is_refused(dash):
    from tornado.httpclient import HTTPClientError

    session = _session_token(fetch(dash.process, "overview").body.decode())
    token = dash.process.token
    proxied = {"Authorization": f"token {token}", "Origin": "https://hub.example.org"}
    assert _websocket(dash, proxied, session)["msgtype"] == "ACK"
    # the page's own signed session token suffices (cross-site iframes, cookie-less proxies)
    assert _websocket(dash, {}, session)["msgtype"] == "ACK"
    with pytest.raises(HTTPClientError, match="403"):
        _websocket(dash, {}, "not-a-session-token")
    from bokeh.util.token import generate_jwt_token, generate_session_id

    key = b"a key that is not the dashboard's own key"
    forged = generate_jwt_token(generate_session_id(key, True), secret_key=key, signed=True)
    with pytest.raises(HTTPClientError, match="403"):
        _websocket(dash, {"Authorization": "token wrong"}, forged)


def test_discovery_file_names_the_dashboard(dash):
    session = dash.context.address_info["session"]
    record = discovery.read_cluster_file(session)
    assert record["dashboard_url"] == dash.process.url
    assert record["dashboard_pid"] == dash.process.pid


def test_an_observer_gets_no_worker_output_and_is_no_job(dash):
    """What the dashboard is to the node: a client that is neither driver nor worker."""
    script = textwrap.dedent(
        f"""
        import sys
        from rayjupyter.core.api import _parse_address
        from rayjupyter.core import protocol as P
        from rayjupyter.core.client import Client
        hostport, secret = _parse_address({dash.context.connect_address!r})
        client = Client(hostport, secret, kind="observer")
        print("connected", flush=True)
        sys.stdin.read()  # until the test has run a printing task
        client.request(P.Ping)
        print("done", flush=True)
        client.close()
        """
    )
    observer = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert observer.stdout.readline() == "connected\n"
        jobs = fetch(dash.process, "api/v0/jobs").json()["jobs"]
        assert [job["driver_pid"] for job in jobs] == [os.getpid()]
        assert rj.get(square.remote(7), timeout=30) == 49  # prints "squaring 7"
        wait_for_condition(
            lambda: "squaring 7" in fetch(dash.process, "api/v0/logs").body.decode(), timeout=15
        )
        out, _ = observer.communicate("", timeout=30)
        assert out == "done\n"  # none of the workers' output reached the observer
    finally:
        if observer.poll() is None:
            observer.kill()
            observer.wait()


# ---------------------------------------------------------------- process lifetime


def test_process_is_gone_after_stop_and_as_context_manager(dash):
    with start_dashboard(dash.context.connect_address) as other:
        assert other.prefix == "" and fetch(other, "api/v0/jobs").status == 200
        pid = other.pid
    wait_for_pids_gone([pid], timeout=10)
    session = dash.context.address_info["session"]  # the first dashboard stays recorded
    assert discovery.read_cluster_file(session)["dashboard_url"] == dash.process.url
    detached = start_dashboard(dash.context.connect_address, detach=True)
    assert fetch(detached, "api/v0/status").status == 200
    detached.stop()
    wait_for_pids_gone([detached.pid], timeout=10)


def test_process_dies_with_its_parent(dash):
    script = textwrap.dedent(
        f"""
        import sys, time
        from rayjupyter.dashboard.launch import start_dashboard
        d = start_dashboard({dash.context.connect_address!r})
        print(d.pid, d.port, flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        pid, port = map(int, parent.stdout.readline().split())
        child = types.SimpleNamespace(port=port, prefix="", token=dash.process.token)
        assert fetch(child, "api/v0/jobs").status == 200
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        wait_for_pids_gone([pid], timeout=15)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_process_stops_when_its_cluster_goes_away(dash):
    script = textwrap.dedent(
        """
        import time
        import rayjupyter as rj
        ctx = rj.init(num_cpus=1)
        print(ctx.connect_address, flush=True)
        time.sleep(120)
        """
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    dashboard = None
    try:
        dashboard = start_dashboard(driver.stdout.readline().strip())
        assert fetch(dashboard, "api/v0/status").status == 200
        driver.kill()  # its cluster stops with it, and then the dashboard
        driver.wait(10)
        wait_for_condition(lambda: not dashboard.running(), timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        if dashboard is not None:
            dashboard.stop()


def test_bad_address_fails_at_once_with_a_clear_error(dash):
    with pytest.raises(ValueError, match="HOST:PORT"):
        start_dashboard("rayjupyter://secret@nowhere")
    with pytest.raises(DashboardError, match="could not start"):
        start_dashboard(dash.context.connect_address, port=dash.process.port)  # port taken


def test_init_with_include_dashboard_owns_one(dash, tmp_path):
    script = textwrap.dedent(
        """
        import json, sys, urllib.request
        import rayjupyter as rj
        from rayjupyter.core import api, discovery
        ctx = rj.init(num_cpus=1, include_dashboard=True, dashboard_port=int(sys.argv[1]))
        url = ctx.dashboard_url
        with urllib.request.urlopen(url.replace("/overview?", "/api/v0/status?")) as r:
            status = json.load(r)
        record = discovery.read_cluster_file(ctx.address_info["session"])
        pid = api._state["dashboard"].pid
        rj.shutdown()
        print(json.dumps({"url": url, "session": status["session"], "pid": pid,
                          "recorded": record["dashboard_url"]}))
        """
    )
    with socket.socket() as probe:  # a free port for dashboard_port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = subprocess.run(
        [sys.executable, "-c", script, str(port)],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert re.match(rf"http://127\.0\.0\.1:{port}/overview\?token=[0-9a-f]{{64}}$", result["url"])
    assert result["url"].startswith(result["recorded"])
    wait_for_pids_gone([result["pid"]], timeout=10)


# ---------------------------------------------------------------- a real browser


from lab_helpers import CHROMIUM, CHROMIUM_ARGS  # noqa: E402 - the browser part


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no {CHROMIUM}: apt-get install chromium")
@pytest.mark.timeout(120)
def test_overview_renders_in_a_real_browser(dash, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    failed: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.on(
                "response",
                lambda response: failed.append(response.url) if response.status >= 400 else None,
            )
            page.goto(dash.process.page_url("overview"))
            page.wait_for_selector("div[data-root-id] .bk-Figure canvas", timeout=60_000)
            page.wait_for_selector("text=tasks running", timeout=30_000)
            # the cookie set by the ?token= visit carries the websocket and the next pages
            page.goto(dash.process.page_url("progress", with_token=False))
            page.wait_for_selector("div[data-root-id] .bk-Figure canvas", timeout=60_000)
            page.goto(dash.process.page_url("overview", with_token=False))
            page.wait_for_selector("div[data-root-id] .bk-Figure canvas", timeout=60_000)
            page.screenshot(path=str(tmp_path / "overview.png"))
        finally:
            browser.close()
    assert not failed, failed
    assert (tmp_path / "overview.png").stat().st_size > 10_000


def test_ray_dashboard_open_magic_starts_one_owned_by_the_driver(dash, capsys):
    pytest.importorskip("IPython")
    from rayjupyter.core import api
    from rayjupyter.notebook.magics import RayMagics

    magics = RayMagics(shell=None)
    magics.ray_dashboard("--open")
    dashboard = api._state["dashboard"]
    try:
        assert dashboard is not None and dashboard.running()
        assert dash.context.dashboard_url == dashboard.page_url()
        assert f"Dashboard: {dashboard.page_url()}" in capsys.readouterr().out
        magics.ray_dashboard("--open")  # again: the same one
        assert api._state["dashboard"] is dashboard
    finally:
        api._state["dashboard"] = None
        dash.context.dashboard_url = None
        dashboard.stop()

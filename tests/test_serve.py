"""rayjupyter.serve on a real cluster with a real HTTP proxy (uvicorn): handles, HTTP,
a graph of deployments, FastAPI ingress, streaming, errors, status and lifecycle."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest
from fastapi import FastAPI
from starlette.responses import StreamingResponse

import rayjupyter as rj
from rayjupyter import serve
from tests.helpers import wait_for_condition
from tests.serve_helpers import new_gate, serve_url_fixture

ZERO_CPU = {"ray_actor_options": {"num_cpus": 0}}


url = serve_url_fixture()


@serve.deployment(**ZERO_CPU)
class Greeter:
    def __init__(self, greeting):
        self.greeting = greeting
        self.config = None

    async def __call__(self, request):
        body = await request.json()
        return {"message": f"{self.greeting}, {body['name']}"}

    def greet(self, name):
        return f"{self.greeting}, {name}"

    def reconfigure(self, config):
        self.config = config

    def get_config(self):
        return self.config

    def context(self):
        ctx = serve.get_replica_context()
        return ctx.app_name, ctx.deployment, ctx.replica_id

    def fail(self):
        raise KeyError("no such user")


def test_handle_and_http_calls_reach_the_same_deployment(url):
    handle = serve.run(Greeter.bind("Hello"), name="greet", route_prefix="/greet")
    assert handle.greet.remote("Ada").result(timeout_s=10) == "Hello, Ada"
    response = httpx.post(f"{url}/greet", json={"name": "Bob"}, timeout=10)
    assert response.status_code == 200 and response.json() == {"message": "Hello, Bob"}
    assert handle.context.remote().result(timeout_s=10)[:2] == ("greet", "Greeter")
    assert serve.get_app_handle("greet").greet.remote("Cy").result(timeout_s=10) == "Hello, Cy"
    same = serve.get_deployment_handle("Greeter", app_name="greet")
    assert same.greet.remote("Di").result(timeout_s=10) == "Hello, Di"


def test_a_response_is_awaitable_and_errors_keep_their_type(url):
    handle = serve.run(Greeter.bind("Hi"), name="greet", route_prefix="/greet")

    async def both():
        return await handle.greet.remote("A"), await handle.greet.remote("B")

    assert asyncio.run(both()) == ("Hi, A", "Hi, B")
    with pytest.raises(KeyError, match="no such user"):
        handle.fail.remote().result(timeout_s=10)


def test_user_config_is_applied_and_a_redeploy_reconfigures_in_place(url):
    app = Greeter.options(user_config={"threshold": 1}).bind("Hi")
    handle = serve.run(app, name="cfg", route_prefix=None)
    assert handle.get_config.remote().result(timeout_s=10) == {"threshold": 1}
    before = handle.context.remote().result(timeout_s=10)
    serve.run(
        Greeter.options(user_config={"threshold": 2}).bind("Hi"), name="cfg", route_prefix=None
    )
    wait_for_condition(lambda: handle.get_config.remote().result(timeout_s=10) == {"threshold": 2})
    assert handle.context.remote().result(timeout_s=10) == before  # the same replica


@serve.deployment(**ZERO_CPU)
class Preprocess:
    def __call__(self, x):
        return x * 2


@serve.deployment(**ZERO_CPU)
class Model:
    def __init__(self, bias):
        self.bias = bias

    async def predict(self, x):
        return x + self.bias


@serve.deployment(**ZERO_CPU)
class Pipeline:
    def __init__(self, pre, model):
        self.pre, self.model = pre, model

    async def __call__(self, request):
        x = (await request.json())["x"]
        doubled = self.pre.remote(x)  # passed on unresolved
        return {"y": await self.model.predict.remote(doubled)}


def test_a_graph_of_three_deployments_composes_through_handles(url):
    serve.run(Pipeline.bind(Preprocess.bind(), Model.bind(100)), name="graph", route_prefix="/p")
    response = httpx.post(f"{url}/p", json={"x": 21}, timeout=10)
    assert response.json() == {"y": 142}
    status = serve.status().applications["graph"]
    assert status.status == "RUNNING"
    assert set(status.deployments) == {"Pipeline", "Preprocess", "Model"}


api = FastAPI()


@serve.deployment(**ZERO_CPU)
@serve.ingress(api)
class Items:
    def __init__(self):
        self.items = {1: "apple"}

    @api.get("/items/{item_id}")
    def get_item(self, item_id: int, upper: bool = False):
        name = self.items.get(item_id, "none")
        return {"id": item_id, "name": name.upper() if upper else name}

    @api.post("/items/{item_id}")
    def put_item(self, item_id: int, body: dict):
        self.items[item_id] = body["name"]
        return {"stored": item_id}


def test_fastapi_ingress_serves_routes_with_path_parameters(url):
    serve.run(Items.bind(), name="items", route_prefix="/shop")
    assert httpx.get(f"{url}/shop/items/1", timeout=10).json() == {"id": 1, "name": "apple"}
    assert httpx.get(f"{url}/shop/items/1?upper=true", timeout=10).json()["name"] == "APPLE"
    assert httpx.post(f"{url}/shop/items/2", json={"name": "pear"}, timeout=10).status_code == 200
    assert httpx.get(f"{url}/shop/items/2", timeout=10).json()["name"] == "pear"
    assert httpx.get(f"{url}/shop/items/abc", timeout=10).status_code == 422  # FastAPI's check
    bad = httpx.post(f"{url}/shop/items/3", content=b"{not json", timeout=10)
    assert 400 <= bad.status_code < 500


@serve.deployment(**ZERO_CPU)
class Streamer:
    def __init__(self, gate):
        self.gate = gate

    async def __call__(self, request):
        async def lines():
            yield "first\n"
            await self.gate.wait.remote()  # the client has read the first line by now
            for i in range(3):
                yield f"line {i}\n"

        return StreamingResponse(lines(), media_type="text/plain")

    def numbers(self, n):
        for i in range(n):
            yield i * i


def test_streaming_over_http_and_through_a_handle(url):
    gate = new_gate()
    handle = serve.run(Streamer.bind(gate), name="stream", route_prefix="/s")
    with httpx.stream("GET", f"{url}/s", timeout=10) as response:
        chunks = response.iter_text()
        assert next(chunks) == "first\n"  # arrived while the rest waits on the gate
        rj.get(gate.open.remote(), timeout=10)
        assert "".join(chunks) == "line 0\nline 1\nline 2\n"
    assert list(handle.options(stream=True).numbers.remote(4)) == [0, 1, 4, 9]
    stream = handle.options(stream=True).numbers.remote(3)
    assert next(stream) == 0 and list(stream) == [1, 4]


@serve.deployment(**ZERO_CPU)
def broken(request):
    raise ValueError("the model is not loaded")


@serve.deployment(
    ray_actor_options={"num_cpus": 0},
    autoscaling_config={"min_replicas": 0, "max_replicas": 1, "upscale_delay_s": 600},
)
def idle(request):
    return "never"


def test_errors_are_json_500_404_and_503(url):
    serve.run(broken.bind(), name="broken", route_prefix="/broken")
    response = httpx.get(f"{url}/broken", timeout=10)
    assert response.status_code == 500
    assert response.json()["type"] == "ValueError" and "not loaded" in response.json()["detail"]
    unknown = httpx.get(f"{url}/nowhere", timeout=10)
    assert unknown.status_code == 404 and "nowhere" in unknown.json()["error"]
    serve.run(idle.bind(), name="idle", route_prefix="/idle")  # no replica to answer
    unavailable = httpx.get(f"{url}/idle", timeout=10)
    assert unavailable.status_code == 503 and "no healthy replica" in unavailable.json()["error"]


@serve.deployment(**ZERO_CPU)
class FailsToStart:
    def __init__(self):
        raise RuntimeError("weights file missing")


def test_a_constructor_error_fails_run_with_its_message_and_delete_frees_the_route(url):
    with pytest.raises(serve.RayServeException, match="weights file missing"):
        serve.run(FailsToStart.bind(), name="bad", route_prefix="/bad")
    serve.delete("bad")
    assert "bad" not in serve.status().applications
    serve.run(Greeter.bind("Yo"), name="good", route_prefix="/bad")
    assert httpx.post(f"{url}/bad", json={"name": "Z"}, timeout=10).json()["message"] == "Yo, Z"


def test_options_are_checked_and_status_renders_as_a_table(url):
    with pytest.raises(ValueError, match="unknown option"):
        serve.deployment(num_replica=2)
    with pytest.raises(RuntimeError, match=r"serve\.run"):
        Greeter.bind("x").deployment()
    with pytest.raises(RuntimeError, match="within a replica"):
        serve.get_replica_context()
    serve.run(Greeter.options(num_replicas=2).bind("Hi"), name="two", route_prefix="/two")
    status = serve.status()
    assert status.applications["two"].deployments["Greeter"].replica_states == {"RUNNING": 2}
    html = status._repr_html_()
    assert "<table>" in html and "Greeter" in html and "RUNNING: 2" in html
    assert "two" in str(status)
    raw = serve.api._status_raw()["applications"]["two"]["deployments"]["Greeter"]
    pids = set(raw["replica_pids"].values())
    assert len(pids) == 2 and os.getpid() not in pids


def test_the_live_view_shows_each_deployment_with_its_requests_and_latency(url):
    from rayjupyter.serve.display import LiveView

    handle = serve.run(Greeter.options(num_replicas=2).bind("Hi"), name="live", route_prefix=None)
    view = LiveView()
    assert view.refresh()
    for _ in range(20):
        handle.greet.remote("x").result(timeout_s=10)
    assert view.refresh()
    (row,) = [r for r in view.model.update(
        rj.get(serve.api._get_controller().metrics.remote(10.0), timeout=10)
    ) if r.app == "live"]  # fmt: skip
    assert (row.deployment, row.replicas, row.target) == ("Greeter", 2, 2)
    assert row.p50_ms is not None and row.p99_ms >= row.p50_ms
    assert "Greeter" in view.widget.value and "2/2" in view.widget.value
    serve.shutdown()
    assert not view.refresh()  # it stops by itself once serve is gone


def test_a_taken_port_is_refused_naming_the_fix(url):
    import socket

    serve.shutdown()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="http_options"):
            serve.start(http_options={"port": port})
    with pytest.raises(ValueError, match="valid keys"):
        serve.start(http_options={"prot": 1})

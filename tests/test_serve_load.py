"""rayjupyter.serve under load on a real cluster: batching, back-pressure, autoscaling up
and down, and a replica SIGKILLed under load."""

from __future__ import annotations

import os
import signal
import threading

import httpx
import pytest

import rayjupyter as rj
from rayjupyter import serve
from tests.helpers import wait_for_condition
from tests.serve_helpers import new_gate, serve_url_fixture

url = serve_url_fixture()


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=8)
class Batcher:
    @serve.batch(max_batch_size=4, batch_wait_timeout_s=30)
    async def size(self, items):
        return [(item, len(items)) for item in items]

    async def __call__(self, request):
        return {"seen_with": (await self.size(int(request.query_params["i"])))[1]}


def test_four_requests_are_seen_by_one_call_as_a_batch_of_four(url):
    handle = serve.run(Batcher.bind(), name="batch", route_prefix="/b")
    responses = [handle.size.remote(i) for i in range(4)]  # the batch fills: no waiting
    assert [r.result(timeout_s=20) for r in responses] == [(i, 4) for i in range(4)]
    results = []
    threads = [
        threading.Thread(
            target=lambda i=i: results.append(
                httpx.get(f"{url}/b", params={"i": i}, timeout=20).json()["seen_with"]
            )
        )
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [4, 4, 4, 4]


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1, max_queued_requests=1)
class OneAtATime:
    def __init__(self, gate):
        self.gate = gate
        self.now = self.most = 0

    async def work(self):
        self.now += 1
        self.most = max(self.most, self.now)
        await self.gate.wait.remote()
        self.now -= 1
        return "done"

    def peak(self):
        return self.most


def test_max_ongoing_requests_queues_then_refuses_past_max_queued(url):
    gate = new_gate()
    handle = serve.run(OneAtATime.bind(gate), name="bp", route_prefix=None)
    first = handle.work.remote()
    wait_for_condition(lambda: rj.get(gate.count.remote()) == 1)
    second = handle.work.remote()  # queued in the handle: the replica is at its limit
    with pytest.raises(serve.BackPressureError, match="max_queued_requests"):
        handle.work.remote()
    assert rj.get(gate.count.remote()) == 1  # the second never reached the replica
    rj.get(gate.open.remote())
    assert first.result(timeout_s=20) == second.result(timeout_s=20) == "done"
    assert handle.peak.remote().result(timeout_s=10) == 1


@serve.deployment(
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=10,
    autoscaling_config={
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 0,
        "downscale_delay_s": 0.5,
        "metrics_interval_s": 0.1,
        "look_back_period_s": 0.2,
    },
)
class Elastic:
    def __init__(self, gate):
        self.gate = gate

    async def work(self):
        await self.gate.wait.remote()
        return os.getpid()


def _replicas(app, deployment):
    states = serve.status().applications[app].deployments[deployment].replica_states
    return states.get("RUNNING", 0), sum(states.values())


def test_autoscaling_adds_a_replica_under_load_and_removes_it_after(url):
    gate = new_gate()
    handle = serve.run(Elastic.bind(gate), name="auto", route_prefix=None)
    assert _replicas("auto", "Elastic") == (1, 1)
    held = [handle.work.remote() for _ in range(4)]  # 4 ongoing for a target of 1 each
    wait_for_condition(lambda: _replicas("auto", "Elastic")[0] == 2, timeout=20)
    rj.get(gate.open.remote())
    assert all(isinstance(r.result(timeout_s=20), int) for r in held)
    wait_for_condition(lambda: _replicas("auto", "Elastic") == (1, 1), timeout=20)


@serve.deployment(ray_actor_options={"num_cpus": 0}, num_replicas=2, health_check_period_s=0.2)
class Worker:
    def pid(self):
        return os.getpid()

    def __call__(self, request):
        return os.getpid()


def test_a_replica_killed_under_load_loses_at_most_the_request_in_flight(url):
    handle = serve.run(Worker.bind(), name="kill", route_prefix="/w")
    pids = {handle.pid.remote().result(timeout_s=10) for _ in range(20)}
    assert len(pids) == 2
    victim = min(pids)
    failures: list[BaseException] = []
    answered: list[int] = []
    stop = threading.Event()

    def load(use_http):
        while not stop.is_set():
            try:
                if use_http:
                    response = httpx.get(f"{url}/w", timeout=20)
                    if response.status_code != 200:
                        raise RuntimeError(response.text)
                    answered.append(response.json())
                else:
                    answered.append(handle.pid.remote().result(timeout_s=20))
            except Exception as error:
                failures.append(error)

    threads = [threading.Thread(target=load, args=(i == 0,)) for i in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for_condition(lambda: len(answered) > 30, timeout=20)
        os.kill(victim, signal.SIGKILL)
        wait_for_condition(
            lambda: (
                _replicas("kill", "Worker") == (2, 2)
                and victim not in {handle.pid.remote().result(timeout_s=10) for _ in range(10)}
            ),
            timeout=30,
        )
        count = len(answered)
        wait_for_condition(lambda: len(answered) > count + 30, timeout=20)  # still serving
    finally:  # the load stops even when a wait fails
        stop.set()
        for thread in threads:
            thread.join(30)
    assert len(failures) <= 1, failures


@serve.deployment(ray_actor_options={"num_cpus": 0}, health_check_period_s=0.1)
class Flaky:
    def __init__(self):
        self.sick = False

    def make_sick(self):
        self.sick = True
        return os.getpid()

    def check_health(self):
        if self.sick:
            raise RuntimeError("lost the GPU")

    def pid(self):
        return os.getpid()


def test_a_replica_failing_its_health_check_is_replaced():
    handle = serve.run(Flaky.bind(), name="flaky", route_prefix=None)
    sick = handle.make_sick.remote().result(timeout_s=10)
    wait_for_condition(lambda: handle.pid.remote().result(timeout_s=10) != sick, timeout=20)
    wait_for_condition(lambda: _replicas("flaky", "Flaky") == (1, 1), timeout=20)


@serve.deployment(ray_actor_options={"num_cpus": 0}, graceful_shutdown_timeout_s=30)
class Slow:
    def __init__(self, gate):
        self.gate = gate

    async def work(self):
        await self.gate.wait.remote()
        return "finished"


def test_delete_lets_requests_in_flight_finish():
    gate = new_gate()
    handle = serve.run(Slow.bind(gate), name="slow", route_prefix=None)
    response = handle.work.remote()
    wait_for_condition(lambda: rj.get(gate.count.remote()) == 1)
    serve.delete("slow", _blocking=False)
    wait_for_condition(lambda: serve.status().applications["slow"].status == "DELETING")
    rj.get(gate.open.remote())
    assert response.result(timeout_s=20) == "finished"
    wait_for_condition(lambda: "slow" not in serve.status().applications, timeout=20)


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Stuck:
    def __init__(self, gate):
        self.gate = gate

    async def __call__(self, request):
        await self.gate.wait.remote()
        return "late"


def test_a_request_past_request_timeout_s_gets_408():
    serve.shutdown()
    url = serve.start(http_options={"port": 0, "request_timeout_s": 0.3})
    gate = new_gate()
    serve.run(Stuck.bind(gate), name="stuck", route_prefix="/stuck")
    response = httpx.get(f"{url}/stuck", timeout=20)
    assert response.status_code == 408 and "request_timeout_s" in response.json()["error"]
    rj.get(gate.open.remote())
    assert httpx.get(f"{url}/stuck", timeout=20).text == "late"


@serve.deployment(
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=1,
    autoscaling_config={
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 0,
        "downscale_delay_s": 600,
        "metrics_interval_s": 0.1,
        "look_back_period_s": 0.2,
    },
)
class Narrow:
    def __init__(self, gate):
        self.gate = gate

    async def work(self):
        await self.gate.wait.remote()
        return "done"


def test_requests_queued_in_a_handle_count_as_load_for_autoscaling():
    gate = new_gate()
    handle = serve.run(Narrow.bind(gate), name="narrow", route_prefix=None)
    held = [handle.work.remote() for _ in range(3)]  # 1 runs (max_ongoing_requests), 2 wait
    wait_for_condition(lambda: _replicas("narrow", "Narrow")[0] == 2, timeout=20)
    rj.get(gate.open.remote())
    assert [r.result(timeout_s=20) for r in held] == ["done"] * 3

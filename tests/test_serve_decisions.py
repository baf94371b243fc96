"""rayjupyter.serve's decisions with numbers, no processes: the replica plan, the
autoscaling policy, power-of-two routing, route matching, option checks."""

from __future__ import annotations

import random

import pytest

from rayjupyter.serve.config import AutoscalingConfig, check_options
from rayjupyter.serve.decisions import (
    MAX_CONSTRUCTOR_FAILURES,
    AutoscalingPolicy,
    DeploymentPlan,
    DeploymentStatus,
    ReplicaState,
    StartReplica,
    StopReplica,
    choose_replica,
)
from rayjupyter.serve.proxy import match_route


def test_a_plan_starts_the_target_and_is_healthy_once_they_run():
    plan = DeploymentPlan("Model", target=2)
    actions = plan.reconcile()
    assert actions == [StartReplica("Model#1"), StartReplica("Model#2")]
    assert plan.status() is DeploymentStatus.UPDATING
    assert plan.reconcile() == []  # starting ones count: nothing more to do
    plan.on_started("Model#1")
    plan.on_started("Model#2")
    assert plan.status() is DeploymentStatus.HEALTHY
    plan.validate()


def test_a_redeploy_with_more_replicas_is_updating_until_they_run():
    plan = DeploymentPlan("Model", target=1)
    plan.reconcile()
    plan.on_started("Model#1")
    plan.set_target(2, by_autoscaler=False)
    assert plan.status() is DeploymentStatus.UPDATING
    assert plan.reconcile() == [StartReplica("Model#2")]
    plan.on_started("Model#2")
    assert plan.status() is DeploymentStatus.HEALTHY
    plan.validate()


def test_an_unhealthy_replica_is_killed_and_replaced():
    plan = DeploymentPlan("Model", target=1)
    plan.reconcile()
    plan.on_started("Model#1")
    plan.on_unhealthy("Model#1", "health check: ActorDiedError")
    actions = plan.reconcile()
    assert actions == [StopReplica("Model#1", graceful=False), StartReplica("Model#2")]
    plan.on_stopped("Model#1")
    plan.on_started("Model#2")
    assert plan.running() == ["Model#2"] and plan.status() is DeploymentStatus.HEALTHY
    plan.validate()


def test_scaling_down_stops_starting_replicas_before_running_ones():
    plan = DeploymentPlan("Model", target=3)
    plan.reconcile()
    plan.on_started("Model#1")
    plan.on_started("Model#2")
    plan.set_target(2)
    assert plan.status() is DeploymentStatus.DOWNSCALING
    assert plan.reconcile() == [StopReplica("Model#3", graceful=True)]
    plan.on_stopped("Model#3")
    plan.reconcile()
    assert plan.status() is DeploymentStatus.HEALTHY
    plan.validate()


def test_a_constructor_that_keeps_failing_fails_the_deployment():
    plan = DeploymentPlan("Broken", target=1)
    for _ in range(MAX_CONSTRUCTOR_FAILURES):
        (start,) = [a for a in plan.reconcile() if isinstance(a, StartReplica)]
        plan.on_start_failed(start.replica_id, "ValueError: bad weights")
    assert plan.status() is DeploymentStatus.DEPLOY_FAILED
    assert all(isinstance(a, StopReplica) for a in plan.reconcile())  # no more starts
    assert "bad weights" in plan.last_error
    plan.validate()


def test_validate_catches_a_plan_short_of_its_target():
    plan = DeploymentPlan("Model", target=2)
    plan.reconcile()
    plan.replicas.pop("Model#2")  # as if a replica were lost without an event
    with pytest.raises(AssertionError):
        plan.validate()


def test_an_undeclared_transition_raises_naming_the_states():
    plan = DeploymentPlan("Model", target=1)
    plan.reconcile()
    plan.on_unhealthy("Model#1", "gone")
    with pytest.raises(RuntimeError, match="STOPPING -> RUNNING"):
        plan._move("Model#1", ReplicaState.RUNNING)


def _policy(**kw):
    base = dict(min_replicas=1, max_replicas=4, target_ongoing_requests=2,
                upscale_delay_s=3, downscale_delay_s=10, look_back_period_s=0)  # fmt: skip
    return AutoscalingPolicy(AutoscalingConfig(**{**base, **kw}))


def test_autoscaling_waits_for_the_upscale_delay_then_scales_to_the_load():
    policy = _policy()
    assert policy.desired(1, [7]) == 4  # ceil(7 / 2), capped by max_replicas
    assert policy.decide(0.0, 1, [6]) == 1
    assert policy.decide(2.0, 1, [6]) == 1  # not yet 3 s
    assert policy.decide(3.0, 1, [6]) == 3


def test_a_burst_shorter_than_the_delay_changes_nothing():
    policy = _policy()
    assert policy.decide(0.0, 2, [4, 4]) == 2
    assert policy.decide(1.0, 2, [2, 2]) == 2  # back to the target: the clock restarts
    assert policy.decide(3.5, 2, [4, 4]) == 2
    assert policy.decide(6.5, 2, [4, 4]) == 4


def test_autoscaling_scales_down_after_its_delay_and_not_below_min():
    policy = _policy(min_replicas=1)
    assert policy.decide(0.0, 3, [0, 0, 0]) == 3
    assert policy.decide(9.9, 3, [0, 0, 0]) == 3
    assert policy.decide(10.0, 3, [0, 0, 0]) == 1


def test_the_load_is_averaged_over_the_look_back_period():
    policy = _policy(upscale_delay_s=0, look_back_period_s=2)
    assert policy.decide(0.0, 1, [0]) == 1
    assert policy.decide(1.0, 1, [4]) == 1  # mean 2 over the window: 1 replica is enough
    assert policy.decide(2.0, 1, [8]) == 2  # mean (0 + 4 + 8) / 3 = 4
    assert policy.decide(4.5, 2, [8]) == 4  # the old samples left the window


def test_a_scaling_factor_damps_the_step():
    policy = _policy(upscale_delay_s=0, max_replicas=10, upscaling_factor=0.5)
    assert policy.decide(0.0, 2, [10, 10]) == 6  # wish 10, half of the 8-step


def test_power_of_two_choices_picks_the_less_loaded_of_two_and_skips_full_ones():
    rng = random.Random(0)
    assert choose_replica({"a": 0, "b": 3}, limit=5, rng=rng) == "a"
    assert choose_replica({"a": 5, "b": 3}, limit=5, rng=rng) == "b"
    assert choose_replica({"a": 5, "b": 5}, limit=5, rng=rng) is None
    picks = [choose_replica({"a": 0, "b": 0, "c": 4}, limit=5, rng=rng) for _ in range(200)]
    assert {"a", "b"} <= set(picks)  # both idle ones are used


def test_routes_match_the_longest_whole_segment_prefix():
    routes = {"/": 0, "/api": 1, "/api/v2": 2}
    assert match_route(routes, "/api/v2/items") == "/api/v2"
    assert match_route(routes, "/api") == "/api"
    assert match_route(routes, "/apix") == "/"
    assert match_route({"/api": 1}, "/other") is None


def test_deployment_options_are_checked_and_unsupported_ones_refused():
    assert check_options({"num_replicas": 2})["num_replicas"] == 2
    with pytest.raises(ValueError, match="unknown option 'num_replica'"):
        check_options({"num_replica": 2})
    with pytest.raises(ValueError, match=r"serve\.run"):
        check_options({"route_prefix": "/x"})
    with pytest.raises(ValueError, match="not both"):
        check_options({"num_replicas": 2, "autoscaling_config": {"max_replicas": 3}})
    with pytest.raises(ValueError, match="valid keys"):
        check_options({"autoscaling_config": {"max_replica": 3}})


def test_serve_uses_only_the_public_api():
    from pathlib import Path

    from tests.test_layering import _imports

    package = Path(__file__).resolve().parent.parent / "rayjupyter" / "serve"
    bad = [
        f"{path.name}:{line}: {module}"
        for path in sorted(package.glob("*.py"))
        for line, module in _imports(path)
        if module == "rayjupyter.core" or module.startswith("rayjupyter.core.")
    ]
    assert not bad, bad


def test_the_notebook_link_goes_through_jupyter_when_it_can(monkeypatch):
    import importlib.util

    from rayjupyter.serve import display

    direct = "http://127.0.0.1:8123"
    assert display.proxied_url(direct, "/model", None) is None  # not behind a Jupyter server
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert display.proxied_url(direct, "/model", "/user/ada/") == "/user/ada/proxy/8123/model"
    link = display.ApplicationLink("m", direct + "/model", "/user/ada/proxy/8123/model")
    assert "/user/ada/proxy/8123/model" in link._repr_html_() and "ready at" in repr(link)


def test_the_live_view_derives_requests_per_second_and_percentiles():
    from rayjupyter.serve.display import MetricsModel, render_rows

    model = MetricsModel()

    def snapshot(t, completed, latencies):
        row = {"replicas": 2, "target": 2, "status": "HEALTHY", "ongoing": 3,
               "completed": completed, "latencies": latencies}  # fmt: skip
        return {"time": t, "deployments": {"app": {"Model": row}}}

    (first,) = model.update(snapshot(10.0, 100, []))
    assert first.requests_per_s == 0.0 and first.p50_ms is None  # no earlier snapshot yet
    (row,) = model.update(snapshot(12.0, 300, [0.001] * 98 + [0.050, 0.100]))
    assert row.requests_per_s == 100.0  # 200 requests in 2 s
    assert row.p50_ms == 1.0 and row.p99_ms == 100.0
    (after,) = model.update(snapshot(13.0, 50, []))  # a replica went away with its count
    assert after.requests_per_s == 0.0
    html = render_rows([row])
    assert "<table" in html and "Model" in html and "2/2" in html and "100.0" in html

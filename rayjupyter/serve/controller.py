"""The controller: one named, detached async actor that owns every application.

It keeps each deployment's ``DeploymentPlan`` (decisions.py) and carries out what the
plan says: it creates replica actors and initializes them, stops (gracefully, then kills)
the ones the plan drops, checks health every ``health_check_period_s``, reads ongoing
requests every ``metrics_interval_s`` for autoscaling, and tells routers and the proxy
about changes through long polls (``listen``, ``listen_routes``): each change bumps a
version and wakes the waiters. A reconcile loop on the actor's event loop does this every
``_TICK_S``; everything it decides comes from the pure objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import time
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

import rayjupyter as rj
from rayjupyter.serve.config import DeploymentConfig, HTTPOptions
from rayjupyter.serve.decisions import (
    AutoscalingPolicy,
    DeploymentPlan,
    DeploymentStatus,
    ReplicaState,
    StartReplica,
)
from rayjupyter.serve.deployment import DeploymentSpec

_TICK_S = 0.05
# a router's queue report counts this long (routers repeat it while calls wait)
_QUEUE_REPORT_TTL_S = 2.0
# calls that may wait in a replica at once beyond max_ongoing_requests (health checks,
# metrics, and requests from several routers waiting for a slot there)
_REPLICA_CONCURRENCY = 1000


class AppStatus:
    NOT_STARTED = "NOT_STARTED"
    DEPLOYING = "DEPLOYING"
    DEPLOY_FAILED = "DEPLOY_FAILED"
    RUNNING = "RUNNING"
    UNHEALTHY = "UNHEALTHY"
    DELETING = "DELETING"


@dataclass
class _Deployment:
    app: str
    spec: DeploymentSpec
    code: bytes  # the pickled class and constructor args: a change replaces the replicas
    plan: DeploymentPlan
    policy: AutoscalingPolicy | None
    actors: dict[str, Any] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    ongoing: dict[str, int] = field(default_factory=dict)
    version: int = 0
    last_health: float = 0.0
    last_metrics: float = 0.0
    busy: set[str] = field(default_factory=set)  # replicas with a check in flight
    # router id -> (calls queued in it, when it said so), one entry per calling process
    queued: dict[str, tuple[int, float]] = field(default_factory=dict)

    @property
    def config(self) -> DeploymentConfig:
        return self.spec.config


@dataclass
class _App:
    name: str
    route_prefix: str | None
    ingress: str
    deployments: list[str]
    deployed_at: float
    deleting: bool = False


class ServeController:
    def __init__(self) -> None:
        self.apps: dict[str, _App] = {}
        self.deployments: dict[tuple[str, str], _Deployment] = {}
        self.changed: asyncio.Condition | None = None
        self.routes_version = 0
        # one counter for every deployment's replica-set version, so a router that outlives
        # a deleted deployment never mistakes a re-created one's versions for old ones
        self.versions = 0
        self.loop_task: asyncio.Task[None] | None = None
        self.proxy: Any = None
        self.proxy_url: str | None = None
        self.http_options: HTTPOptions | None = None
        self.tasks: set[asyncio.Task[Any]] = set()  # held so they are not collected midway

    def _next_version(self) -> int:
        self.versions += 1
        return self.versions

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------------ the loop

    def _start(self) -> asyncio.Condition:
        if self.changed is None:
            self.changed = asyncio.Condition()
            self.loop_task = asyncio.get_running_loop().create_task(self._run())
        return self.changed

    async def _notify(self) -> None:
        async with self._start():
            self._start().notify_all()

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            for key, dep in list(self.deployments.items()):
                try:
                    await self._tick(key, dep, now)
                except Exception as error:  # one deployment's trouble must not stop the rest
                    dep.plan.last_error = f"controller error: {error!r}"
            for name, app in list(self.apps.items()):
                if app.deleting and not any((name, d) in self.deployments for d in app.deployments):
                    del self.apps[name]
                    self.routes_version += 1
                    await self._notify()
            await asyncio.sleep(_TICK_S)

    async def _tick(self, key: tuple[str, str], dep: _Deployment, now: float) -> None:
        plan = dep.plan
        if (
            dep.policy is not None
            and now - dep.last_metrics >= dep.policy.config.metrics_interval_s
        ):
            dep.last_metrics = now
            running = plan.running()
            if running:
                counts = [dep.ongoing.get(r, 0) for r in running]
                queued = sum(n for n, at in dep.queued.values() if now - at < _QUEUE_REPORT_TTL_S)
                counts.append(queued)  # calls waiting in handles count as load too
                plan.set_target(dep.policy.decide(now, plan.target, counts))
            for replica in running:
                self._check(dep, replica, metrics_only=True)
        if now - dep.last_health >= dep.config.health_check_period_s:
            dep.last_health = now
            for replica in plan.running():
                self._check(dep, replica, metrics_only=False)
        for action in plan.reconcile():
            if isinstance(action, StartReplica):
                self._start_replica(dep, action.replica_id)
            else:
                await self._stop_replica(dep, action.replica_id, action.graceful)
        plan.validate()
        if plan.target == 0 and not plan.replicas and self.apps.get(dep.app, None) is not None:
            app = self.apps[dep.app]
            if app.deleting or dep.spec.name not in app.deployments:
                del self.deployments[key]
                dep.version = self._next_version()
                await self._notify()

    def _start_replica(self, dep: _Deployment, replica_id: str) -> None:
        from rayjupyter.serve.replica import Replica

        # replicas spread over the nodes, as Ray Serve places them
        options = {"scheduling_strategy": "SPREAD", **dep.config.ray_actor_options}
        actor = (
            rj.remote(Replica)
            .options(**options, max_concurrency=_REPLICA_CONCURRENCY)
            .remote(
                dep.app,
                dep.spec.name,
                replica_id,
                dep.spec.target,
                dep.spec.init_args,
                dep.spec.init_kwargs,
                dep.config.max_ongoing_requests,
            )
        )
        dep.actors[replica_id] = actor

        async def initialize() -> None:
            try:
                pid = await actor.initialize.remote(dep.config.user_config)
            except Exception as error:
                dep.plan.on_start_failed(replica_id, f"{type(error).__name__}: {error}")
                return
            dep.pids[replica_id] = pid
            dep.plan.on_started(replica_id)
            if dep.plan.replicas.get(replica_id) is ReplicaState.RUNNING:
                dep.version = self._next_version()
                await self._notify()

        self._spawn(initialize())

    async def _stop_replica(self, dep: _Deployment, replica_id: str, graceful: bool) -> None:
        actor = dep.actors.pop(replica_id, None)
        dep.pids.pop(replica_id, None)
        dep.ongoing.pop(replica_id, None)
        dep.version = self._next_version()  # routers stop sending to it now
        await self._notify()

        async def stop() -> None:
            if actor is not None:
                if graceful:
                    # dead, stuck or its __del__ failed: it is killed anyway
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(
                            asyncio.wrap_future(
                                actor.prepare_for_shutdown.remote(
                                    dep.config.graceful_shutdown_timeout_s,
                                    dep.config.graceful_shutdown_wait_loop_s,
                                ).future()
                            ),
                            dep.config.graceful_shutdown_timeout_s + 1.0,
                        )
                with contextlib.suppress(Exception):  # already dead
                    rj.kill(actor)
            dep.plan.on_stopped(replica_id)

        self._spawn(stop())

    def _check(self, dep: _Deployment, replica_id: str, metrics_only: bool) -> None:
        actor = dep.actors.get(replica_id)
        tag = ("m:" if metrics_only else "h:") + replica_id
        if actor is None or tag in dep.busy:
            return
        dep.busy.add(tag)

        async def check() -> None:
            try:
                method = actor.check_health if not metrics_only else actor.ongoing_requests
                ref = method.remote()
                dep.ongoing[replica_id] = await asyncio.wait_for(
                    asyncio.wrap_future(ref.future()), dep.config.health_check_timeout_s
                )
            except Exception as error:
                if not metrics_only or isinstance(error, rj.exceptions.RayActorError):
                    dep.plan.on_unhealthy(
                        replica_id, f"health check: {type(error).__name__}: {error}"
                    )
            finally:
                dep.busy.discard(tag)

        self._spawn(check())

    # ------------------------------------------------------------------ deploying

    async def deploy_app(
        self, name: str, route_prefix: str | None, specs: list[DeploymentSpec]
    ) -> None:
        self._start()
        for other in self.apps.values():
            if (
                other.name != name
                and route_prefix is not None
                and other.route_prefix == route_prefix
            ):
                raise ValueError(
                    f"route_prefix {route_prefix!r} is taken by application {other.name!r}; "
                    "pick another or serve.delete that one"
                )
        ingress = next(s.name for s in specs if s.is_ingress)
        old = self.apps.get(name)
        if old is not None:
            for dep_name in old.deployments:
                if dep_name not in {s.name for s in specs}:
                    self.deployments[(name, dep_name)].plan.set_target(0)
        self.apps[name] = _App(name, route_prefix, ingress, [s.name for s in specs], time.time())
        for spec in specs:
            code = cloudpickle.dumps(
                (spec.target, spec.init_args, spec.init_kwargs), protocol=pickle.HIGHEST_PROTOCOL
            )
            key = (name, spec.name)
            existing = self.deployments.get(key)
            config = spec.config
            target = config.initial_target()
            if (
                existing is not None
                and existing.code == code
                and (
                    existing.config.max_ongoing_requests == config.max_ongoing_requests
                    and existing.config.ray_actor_options == config.ray_actor_options
                )
            ):
                # same code: keep the replicas, apply the new count and user_config
                if config.user_config != existing.config.user_config:
                    for actor in existing.actors.values():
                        actor.reconfigure.remote(config.user_config)
                existing.spec = spec
                existing.policy = (
                    AutoscalingPolicy(config.autoscaling_config)
                    if (config.autoscaling_config)
                    else None
                )
                if existing.policy is None:
                    existing.plan.set_target(target, by_autoscaler=False)
                existing.plan.constructor_failures = 0
                continue
            if existing is not None:  # new code: stop every old replica, start new ones
                for replica in existing.plan.live():
                    existing.plan.on_unhealthy(replica, "replaced by a new version")
                existing.spec, existing.code = spec, code
                existing.plan.target = target
                existing.plan.constructor_failures = 0
                existing.policy = (
                    AutoscalingPolicy(config.autoscaling_config)
                    if (config.autoscaling_config)
                    else None
                )
                continue
            policy = (
                AutoscalingPolicy(config.autoscaling_config) if config.autoscaling_config else None
            )
            self.deployments[key] = _Deployment(
                name,
                spec,
                code,
                DeploymentPlan(spec.name, target),
                policy,
                version=self._next_version(),
            )
        self.routes_version += 1
        await self._notify()

    def _app_status(self, app: _App) -> tuple[str, str]:
        if app.deleting:
            return AppStatus.DELETING, ""
        statuses = []
        for dep_name in app.deployments:
            dep = self.deployments.get((app.name, dep_name))
            if dep is None:
                return AppStatus.DEPLOYING, ""
            statuses.append((dep_name, dep.plan.status(), dep.plan.last_error))
        for dep_name, status, error in statuses:
            if status is DeploymentStatus.DEPLOY_FAILED:
                return AppStatus.DEPLOY_FAILED, f"deployment {dep_name!r} failed to start: {error}"
        if all(
            s
            in (DeploymentStatus.HEALTHY, DeploymentStatus.UPSCALING, DeploymentStatus.DOWNSCALING)
            for _, s, _ in statuses
        ):
            return AppStatus.RUNNING, ""
        if any(s is DeploymentStatus.UNHEALTHY for _, s, _ in statuses):
            return AppStatus.UNHEALTHY, "; ".join(e for _, s, e in statuses if e)
        return AppStatus.DEPLOYING, ""

    async def wait_app(self, name: str, timeout_s: float) -> tuple[str, str]:
        """Wait until the application is RUNNING or DEPLOY_FAILED (or the timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            app = self.apps.get(name)
            if app is None:
                return AppStatus.NOT_STARTED, f"no application {name!r}"
            status, message = self._app_status(app)
            if status in (AppStatus.RUNNING, AppStatus.DEPLOY_FAILED) or loop.time() >= deadline:
                return status, message
            await asyncio.sleep(_TICK_S)

    async def delete_app(self, name: str, timeout_s: float) -> bool:
        self._start()
        app = self.apps.get(name)
        if app is None:
            return False
        app.deleting = True
        for dep_name in app.deployments:
            dep = self.deployments.get((name, dep_name))
            if dep is not None:
                dep.policy = None
                dep.plan.set_target(0)
        self.routes_version += 1
        await self._notify()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while name in self.apps and loop.time() < deadline:
            await asyncio.sleep(_TICK_S)
        return name not in self.apps

    async def shutdown(self, timeout_s: float) -> None:
        for name in list(self.apps):
            await self.delete_app(name, timeout_s)
        for dep in self.deployments.values():  # anything left after the timeout
            for actor in dep.actors.values():
                rj.kill(actor)
        if self.proxy is not None:
            rj.kill(self.proxy)
            self.proxy = None

    # ------------------------------------------------------------------ reading

    async def listen(self, app: str, deployment: str, known: int, timeout_s: float) -> Any:
        """The running replicas once their version differs from ``known`` (or after the
        timeout): (version, [(id, actor)], max_ongoing, queue cap), None if it is gone."""
        changed = self._start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            dep = self.deployments.get((app, deployment))
            if dep is None:
                return None
            if dep.version != known or loop.time() >= deadline:
                running = [(r, dep.actors[r]) for r in dep.plan.running() if r in dep.actors]
                return dep.version, running, dep.config.max_ongoing_requests, dep.config.queue_cap()
            async with changed:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), max(deadline - loop.time(), 0.01))

    async def listen_routes(
        self, known: int, timeout_s: float
    ) -> tuple[int, dict[str, tuple[str, str]]]:
        changed = self._start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.routes_version == known and loop.time() < deadline:
            async with changed:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), max(deadline - loop.time(), 0.01))
        routes = {
            a.route_prefix: (a.name, a.ingress)
            for a in self.apps.values()
            if a.route_prefix is not None and not a.deleting
        }
        return self.routes_version, routes

    def status(self) -> dict[str, Any]:
        apps: dict[str, Any] = {}
        for app in self.apps.values():
            status, message = self._app_status(app)
            deployments = {}
            for dep_name in app.deployments:
                dep = self.deployments.get((app.name, dep_name))
                if dep is None:
                    continue
                deployments[dep_name] = {
                    "status": dep.plan.status().value,
                    "replica_states": dep.plan.counts(),
                    "target_replicas": dep.plan.target,
                    "message": dep.plan.last_error,
                    "ongoing_requests": sum(dep.ongoing.get(r, 0) for r in dep.plan.running()),
                    "replica_pids": dict(dep.pids),
                }
            apps[app.name] = {
                "status": status,
                "message": message,
                "route_prefix": app.route_prefix,
                "last_deployed_time_s": app.deployed_at,
                "deployments": deployments,
            }
        return {"applications": apps, "proxy_url": self.proxy_url}

    def report_queued(self, app: str, deployment: str, router_id: str, queued: int) -> None:
        """A router's queue length (its calls waiting for a replica slot)."""
        dep = self.deployments.get((app, deployment))
        if dep is None:
            return
        if queued:
            dep.queued[router_id] = (queued, time.monotonic())
        else:
            dep.queued.pop(router_id, None)

    async def metrics(self, window_s: float) -> dict[str, Any]:
        """Each deployment's replicas now: ongoing and completed requests, and the latencies
        of the last ``window_s`` seconds (the live view's rows; it derives requests/s)."""
        found: dict[str, Any] = {}
        asked = []
        for (app, name), dep in self.deployments.items():
            for replica in dep.plan.running():
                actor = dep.actors.get(replica)
                if actor is not None:
                    asked.append((app, name, actor.stats.remote(window_s)))
            found.setdefault(app, {})[name] = {
                "replicas": len(dep.plan.running()),
                "target": dep.plan.target,
                "status": dep.plan.status().value,
                "ongoing": 0,
                "completed": 0,
                "latencies": [],
            }
        for app, name, ref in asked:
            try:
                ongoing, completed, latencies = await asyncio.wait_for(
                    asyncio.wrap_future(ref.future()), 2.0
                )
            except Exception:  # a replica going away: the next poll will not ask it
                continue
            row = found[app][name]
            row["ongoing"] += ongoing
            row["completed"] += completed
            row["latencies"] += latencies
        return {"time": time.monotonic(), "deployments": found}

    def app_ingress(self, name: str) -> str | None:
        app = self.apps.get(name)
        return None if app is None or app.deleting else app.ingress

    def deployment_exists(self, app: str, deployment: str) -> bool:
        return (app, deployment) in self.deployments

    # ------------------------------------------------------------------ HTTP

    async def start_proxy(self, http_options: HTTPOptions) -> str:
        """Start the HTTP proxy once; returns its URL. A second start with other options
        raises, naming serve.shutdown."""
        self._start()
        if self.proxy is not None:
            if http_options != self.http_options:
                raise RuntimeError(
                    f"serve is already running with http_options {self.http_options}; "
                    "call serve.shutdown() first to change them"
                )
            return self.proxy_url or ""
        from rayjupyter.serve.proxy import Proxy

        proxy = rj.remote(Proxy).options(num_cpus=0, max_concurrency=100).remote()
        try:
            port = await proxy.start.remote(http_options)
        except Exception as error:
            rj.kill(proxy)
            if isinstance(error, OSError):  # the port is taken, or the host is not ours
                raise OSError(
                    f"the HTTP proxy cannot listen on {http_options.host}:{http_options.port} "
                    f"({error}); pass serve.start(http_options={{'port': N}}), 0 picks a free one"
                ) from None
            raise
        self.proxy, self.http_options = proxy, http_options
        host = http_options.host if http_options.host not in ("0.0.0.0", "::") else "127.0.0.1"
        self.proxy_url = f"http://{host}:{port}{http_options.root_path}"
        return self.proxy_url

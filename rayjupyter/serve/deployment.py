"""``@serve.deployment``, ``.options()``, ``.bind()`` and ``@serve.ingress``: the user's side.

A ``Deployment`` is a class or function plus checked options; ``.bind(*args)`` makes an
``Application``, a node of the graph whose arguments may be other applications. At
``serve.run`` the graph is flattened into one ``DeploymentSpec`` per deployment, each
bound application argument replaced by a ``DeploymentHandle`` to that deployment, so a
replica's constructor receives handles to the deployments it calls.
"""

from __future__ import annotations

import copyreg
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rayjupyter.serve.config import DeploymentConfig, build_config, check_options

ASGI_APP_ATTR = "__serve_asgi_app__"


class Deployment:
    """A class or function to run as replicas; made by ``@serve.deployment``."""

    def __init__(self, target: Callable[..., Any], options: dict[str, Any]) -> None:
        self._target = target
        self._options = options

    @property
    def name(self) -> str:
        return str(self._options.get("name") or self._target.__name__)

    @property
    def func_or_class(self) -> Callable[..., Any]:
        return self._target

    @property
    def num_replicas(self) -> int:
        return self.config.num_replicas

    @property
    def user_config(self) -> Any:
        return self.config.user_config

    @property
    def max_ongoing_requests(self) -> int:
        return self.config.max_ongoing_requests

    @property
    def max_queued_requests(self) -> int:
        return self.config.max_queued_requests

    @property
    def ray_actor_options(self) -> dict[str, Any]:
        return dict(self.config.ray_actor_options)

    @property
    def config(self) -> DeploymentConfig:
        return build_config(self._options)

    def options(self, **options: Any) -> Deployment:
        """A copy with these options changed (the same names as ``@serve.deployment``)."""
        return Deployment(self._target, {**self._options, **check_options(options)})

    def bind(self, *args: Any, **kwargs: Any) -> Application:
        """An application: this deployment with its constructor's (or nothing for a
        function's) arguments, which may be other bound applications."""
        if not inspect.isclass(self._target) and (args or kwargs):
            raise TypeError(
                f"function deployment {self.name!r} takes no bind() arguments; "
                "bind arguments go to a class deployment's constructor"
            )
        return Application(self, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"deployment {self.name!r} cannot be called directly: use "
            f"serve.run({self.name}.bind(...)) and call the handle it returns"
        )

    def __repr__(self) -> str:
        return f"Deployment(name={self.name!r})"


class Application:
    """A bound deployment: what ``serve.run`` deploys (and what another bind may take)."""

    def __init__(self, deployment: Deployment, args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.deployment = deployment
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return f"Application({self.deployment.name!r})"


@dataclass
class DeploymentSpec:
    """One deployment of an application, ready for the controller."""

    name: str
    target: Callable[..., Any]
    init_args: tuple[Any, ...]
    init_kwargs: dict[str, Any]
    config: DeploymentConfig
    is_ingress: bool


def deployment(_func_or_class: Callable[..., Any] | None = None, **options: Any) -> Any:
    """``@serve.deployment`` or ``@serve.deployment(num_replicas=2, ...)`` on a class or
    function. Unknown or unsupported options raise at once, naming the valid ones."""
    checked = check_options(options)

    def wrap(target: Callable[..., Any]) -> Deployment:
        if not callable(target):
            raise TypeError(f"@serve.deployment goes on a class or function, got {target!r}")
        return Deployment(target, checked)

    return wrap(_func_or_class) if _func_or_class is not None else wrap


def ingress(app: Any) -> Callable[[type], type]:
    """``@serve.ingress(fastapi_app)`` on a deployment class: HTTP requests go to the app's
    routes, whose endpoints may be the class's methods (``self`` is the replica's
    instance). Any ASGI app works; FastAPI's methods are bound per replica."""
    if not callable(app):
        raise TypeError(f"@serve.ingress takes an ASGI app such as FastAPI(), got {app!r}")
    _make_starlette_state_picklable()

    def wrap(cls: type) -> type:
        if not inspect.isclass(cls):
            raise TypeError("@serve.ingress goes on a class (under @serve.deployment)")
        setattr(cls, ASGI_APP_ATTR, app)
        return cls

    return wrap


def _make_starlette_state_picklable() -> None:
    """A FastAPI/starlette app travels with its class to the replicas, but starlette's
    ``State`` cannot be unpickled as it is (its ``__getattr__`` recurses before its dict
    is back): pickle it as the dict it holds."""
    try:
        from starlette.datastructures import State
    except ImportError:
        return
    copyreg.pickle(State, _reduce_state)


def _reduce_state(state: Any) -> Any:
    return _rebuild_state, (dict(state._state),)


def _rebuild_state(values: dict[str, Any]) -> Any:
    from starlette.datastructures import State

    return State(values)


def flatten(app: Application, make_handle: Callable[[str], Any]) -> list[DeploymentSpec]:
    """The graph's deployments, ingress last, each bound argument a handle.

    Two different bound nodes with the same deployment name get ``name_1``, ``name_2``...
    as in Ray; the same node bound twice is deployed once.
    """
    specs: list[DeploymentSpec] = []
    names: dict[int, str] = {}
    taken: set[str] = set()

    def visit(node: Application, is_ingress: bool) -> str:
        if id(node) in names:
            return names[id(node)]
        args = tuple(convert(a) for a in node.args)
        kwargs = {k: convert(v) for k, v in node.kwargs.items()}
        name = node.deployment.name
        suffix = 0
        while name in taken:
            suffix += 1
            name = f"{node.deployment.name}_{suffix}"
        taken.add(name)
        names[id(node)] = name
        specs.append(
            DeploymentSpec(
                name,
                node.deployment.func_or_class,
                args,
                kwargs,
                node.deployment.config,
                is_ingress,
            )
        )
        return name

    def convert(value: Any) -> Any:
        if isinstance(value, Application):
            return make_handle(visit(value, False))
        if isinstance(value, list | tuple) and any(isinstance(v, Application) for v in value):
            return type(value)(convert(v) for v in value)
        if isinstance(value, dict) and any(isinstance(v, Application) for v in value.values()):
            return {k: convert(v) for k, v in value.items()}
        return value

    if not isinstance(app, Application):
        raise TypeError(f"serve.run takes an application (a deployment's .bind(...)), got {app!r}")
    visit(app, True)
    return specs


_make_starlette_state_picklable()  # every process that pickles a spec (driver, controller)

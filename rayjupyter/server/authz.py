"""Who may do what through the server extension: Jupyter's Authorizer decides.

Jupyter's token or login cookie says who a user is; its Authorizer (a custom one, or
JupyterHub's scopes) says what that user may do, per action (read, write, execute) and
resource. The extension's routes are a resource of their own, ``rayjupyter``:

- ``read``: list clusters and their status, open their dashboards;
- ``write``: start a cluster, add one by address, stop or forget one.

A cluster's connect address carries its secret, and whoever holds the secret can run
code on the cluster. So it is sent only to a user allowed to ``execute`` on
``rayjupyter`` *and* on ``kernels``: Jupyter already guards running code with
kernels:execute, and a user it denies (a read-only share, say) must not get the same
power through a cluster instead. Other users see ``connect_address: null``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized

from rayjupyter.server.models import ClusterInfo, KernelCluster

AUTH_RESOURCE = "rayjupyter"
# what a user needs to be given connect addresses (the secret runs code on the cluster)
RUN_CODE = (("execute", AUTH_RESOURCE), ("execute", "kernels"))

# the 403s of @authorized (also given when nobody is logged in: jupyter_server checks that)
READ_REFUSED = (
    "Seeing clusters and their dashboards needs read on resource 'rayjupyter': log in to "
    "Jupyter, or ask its administrator for that permission."
)
WRITE_REFUSED = (
    "Starting, adding or stopping clusters needs write on resource 'rayjupyter': log in "
    "to Jupyter, or ask its administrator for that permission."
)


Method = TypeVar("Method", bound=Callable[..., Awaitable[None]])


def requires(action: str) -> Callable[[Method], Method]:
    """jupyter_server's ``@authorized(action, "rayjupyter")``, typed, with our 403 message."""
    message = READ_REFUSED if action == "read" else WRITE_REFUSED
    return cast(Callable[[Method], Method], authorized(action, AUTH_RESOURCE, message))


async def may_run_code(handler: Any) -> bool:
    """Whether the handler's user may be given secrets that run code on a cluster."""
    user = handler.current_user
    if not user:
        return False
    for action, resource in RUN_CODE:
        allowed = await ensure_async(
            handler.authorizer.is_authorized(handler, user, action, resource)
        )
        if not allowed:
            return False
    return True


def without_secret(info: ClusterInfo) -> ClusterInfo:
    """The cluster's model for a user who may not run code: no connect address."""
    redacted = info.copy()
    redacted["connect_address"] = None
    return redacted


def kernel_cluster_without_secret(found: KernelCluster) -> KernelCluster:
    redacted = found.copy()
    if found["cluster"] is not None:
        redacted["cluster"] = without_secret(found["cluster"])
    return redacted

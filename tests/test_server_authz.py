"""The server extension under a restrictive Jupyter Authorizer (a custom one, as JupyterHub's
scopes or a site's policy would be): what a user may not read, write or execute is refused,
and a cluster's secret goes only to users who may run code."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import pytest
from helpers import wait_for_pids_gone
from jupyter_server.auth.authorizer import Authorizer
from tornado.httpclient import HTTPClientError

from rayjupyter.core import discovery

pytest_plugins = ["pytest_jupyter.jupyter_server"]


class PolicyAuthorizer(Authorizer):
    """Allows everything but the (action, resource) pairs a test denies; async, as a
    JupyterHub authorizer that asks the Hub would be."""

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


@pytest.fixture
def deny() -> Iterator[set[tuple[str, str]]]:
    """The pairs the server's Authorizer refuses (empty: everything is allowed)."""
    PolicyAuthorizer.denied = set()
    yield PolicyAuthorizer.denied
    PolicyAuthorizer.denied = set()


@contextlib.asynccontextmanager
async def started_cluster(jp_fetch: Any, jp_serverapp: Any) -> AsyncIterator[dict[str, Any]]:
    """A local cluster started from the panel by an allowed user; stopped at the end."""
    response = await jp_fetch(
        "rayjupyter", "api", "clusters", method="POST", body=json.dumps({"num_cpus": 1})
    )
    info = json.loads(response.body)
    node_pid = int(discovery.read_cluster_file(info["id"])["pid"])  # type: ignore[index]
    try:
        yield info
    finally:
        PolicyAuthorizer.denied.clear()
        await jp_serverapp.extension_manager.stop_all_extensions()
        wait_for_pids_gone([node_pid], timeout=20)


async def fetch(jp_fetch: Any, *parts: str, **kwargs: Any) -> tuple[int, str]:
    """Status and body of a request, successful or not."""
    if kwargs.get("method") == "POST" and "body" not in kwargs:
        kwargs["body"] = "{}"
    try:
        response = await jp_fetch(*parts, **kwargs)
    except HTTPClientError as exc:
        assert exc.response is not None
        return exc.code, exc.response.body.decode()
    return response.code, response.body.decode()


async def test_a_user_who_may_not_run_code_never_gets_the_secret(
    jp_fetch: Any, jp_serverapp: Any, deny: set[tuple[str, str]]
) -> None:
    async with started_cluster(jp_fetch, jp_serverapp) as cluster:
        await check_no_secret(jp_fetch, deny, cluster)


async def check_no_secret(jp_fetch: Any, deny: set[tuple[str, str]], cluster: Any) -> None:
    session, address = cluster["id"], cluster["connect_address"]
    assert address.startswith("rayjupyter://")  # an allowed user gets it
    secret = address.removeprefix("rayjupyter://").split("@")[0]
    # denied execute on our resource, or on kernels (a read-only share): no secret anywhere
    for denied in [("execute", "rayjupyter"), ("execute", "kernels")]:
        deny.clear()
        deny.add(denied)
        code, body = await fetch(jp_fetch, "rayjupyter", "api", "clusters")
        assert code == 200, body
        assert secret not in body, denied
        (info,) = [c for c in json.loads(body)["clusters"] if c["id"] == session]
        assert info["connect_address"] is None
        assert info["status"]["nodes_alive"] == 1  # still sees the cluster and its status
        code, body = await fetch(jp_fetch, "rayjupyter", "api", "clusters", session)
        assert code == 200 and secret not in body
        assert json.loads(body)["connect_address"] is None
        # adding it by address (which a user may know) does not echo the secret either
        code, body = await fetch(
            jp_fetch,
            "rayjupyter",
            "api",
            "clusters",
            method="POST",
            body=json.dumps({"address": address}),
        )
        assert code == 201 and secret not in body, body
    deny.clear()
    code, body = await fetch(jp_fetch, "rayjupyter", "api", "clusters", session)
    assert code == 200 and json.loads(body)["connect_address"] == address


async def test_a_user_who_may_not_write_cannot_start_or_stop_clusters(
    jp_fetch: Any, jp_serverapp: Any, deny: set[tuple[str, str]]
) -> None:
    async with started_cluster(jp_fetch, jp_serverapp) as cluster:
        await check_no_write(jp_fetch, jp_serverapp, deny, cluster)


async def check_no_write(
    jp_fetch: Any, jp_serverapp: Any, deny: set[tuple[str, str]], cluster: Any
) -> None:
    session = cluster["id"]
    node_pid = int(discovery.read_cluster_file(session)["pid"])  # type: ignore[index]
    deny.add(("write", "rayjupyter"))
    registry = jp_serverapp.web_app.settings["rayjupyter"].service.registry
    before = set(registry._started)
    code, body = await fetch(
        jp_fetch, "rayjupyter", "api", "clusters", method="POST", body=json.dumps({"num_cpus": 1})
    )
    assert code == 403 and "write on resource 'rayjupyter'" in json.loads(body)["message"]
    assert set(registry._started) == before  # nothing was started
    code, body = await fetch(jp_fetch, "rayjupyter", "api", "clusters", session, method="DELETE")
    assert code == 403 and "write" in json.loads(body)["message"]
    code, body = await fetch(jp_fetch, "rayjupyter", "api", "clusters", session)
    assert code == 200 and json.loads(body)["status"]["nodes_alive"] == 1  # still running
    assert discovery.read_cluster_file(session)["pid"] == node_pid  # type: ignore[index]
    # the dashboard's pages may be read, but nothing else goes through the proxy
    code, body = await fetch(
        jp_fetch, "rayjupyter", "dashboard", session, "x", method="POST", body="{}"
    )
    assert code == 403


async def test_a_user_who_may_not_read_sees_no_cluster_and_no_dashboard(
    jp_fetch: Any, jp_ws_fetch: Any, jp_serverapp: Any, deny: set[tuple[str, str]]
) -> None:
    async with started_cluster(jp_fetch, jp_serverapp) as cluster:
        await check_no_read(jp_fetch, jp_ws_fetch, jp_serverapp, deny, cluster)


async def check_no_read(
    jp_fetch: Any, jp_ws_fetch: Any, jp_serverapp: Any, deny: set[tuple[str, str]], cluster: Any
) -> None:
    session = cluster["id"]
    deny.add(("read", "rayjupyter"))
    for parts in [
        ("rayjupyter", "api", "clusters"),
        ("rayjupyter", "api", "clusters", session),
        ("rayjupyter", "api", "kernels", "abc", "cluster"),
        ("rayjupyter", "dashboard", session, "overview"),
    ]:
        code, body = await fetch(jp_fetch, *parts, follow_redirects=False)
        assert code == 403, (parts, body)
        assert "read on resource 'rayjupyter'" in json.loads(body)["message"]
    with pytest.raises(HTTPClientError) as info:
        await jp_ws_fetch("rayjupyter", "dashboard", session, "overview", "ws")
    assert info.value.code == 403
    dashboards = jp_serverapp.web_app.settings["rayjupyter"].service.dashboards
    assert dashboards.running() == {}  # no dashboard was started for them

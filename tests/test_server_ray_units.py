"""The Ray side of the server extension without a cluster: addresses, and which proxied
requests act on a Ray cluster (and so need a user who may run code)."""

from __future__ import annotations

import pytest

from rayjupyter.server.dashboards import Upstream
from rayjupyter.server.ray_clusters import RAY_ACTING_PATHS, is_ray_address, parse_ray_address


def test_ray_addresses_name_the_dashboard_and_the_client() -> None:
    assert parse_ray_address("ray://10.1.2.3:10001").dashboard == "http://10.1.2.3:8265"
    assert parse_ray_address("ray://head-svc").client == "ray://head-svc:10001"
    http = parse_ray_address("http://head:8265/")
    assert (http.dashboard, http.client) == ("http://head:8265", "ray://head:10001")
    assert parse_ray_address("https://h/ray").dashboard == "https://h:443/ray"
    with pytest.raises(ValueError, match="ray://HOST:10001"):
        parse_ray_address("ftp://h")


def test_ray_addresses_are_told_from_ours() -> None:
    assert is_ray_address("ray://h:10001") and is_ray_address(" HTTP://h:8265")
    assert not is_ray_address("rayjupyter://s@h:6380") and not is_ray_address("s@h:6380")


@pytest.mark.parametrize(
    ("method", "path", "acts"),
    [
        ("GET", "/api/v0/nodes", False),
        ("GET", "/", False),
        ("GET", "/workers", False),
        ("GET", "/memory_profiles", False),
        ("GET", "/worker/traceback", True),
        ("GET", "/task/cpu_profile", True),
        ("GET", "/memory_profile", True),
        # as Ray's router sees them: percent-decoded, slashes and dot segments folded
        ("GET", "/%77orker/traceback", True),
        ("GET", "//worker//traceback", True),
        ("GET", "/api/../worker/cpu_profile", True),
        ("HEAD", "/worker/traceback", True),
        ("POST", "/api/jobs/", True),
        ("DELETE", "/api/jobs/x", True),
    ],
)
def test_requests_that_act_on_a_ray_cluster(method: str, path: str, acts: bool) -> None:
    ray = Upstream("http://h:8265", acting_paths=RAY_ACTING_PATHS, guard_writes=True)
    assert ray.acts(method, path) is acts
    ours = Upstream("http://127.0.0.1:1")
    assert ours.acts(method, path) is False


def test_ray_paths_lose_the_proxy_prefix() -> None:
    prefix = "/base/rayjupyter/dashboard/session_1/"
    ray = Upstream("http://h:8265/ray", strip=prefix)
    assert ray.path(prefix + "api/version") == "/api/version"
    assert ray.path(prefix) == "/"
    assert Upstream("http://127.0.0.1:1").path(prefix + "x") == prefix + "x"


def test_ray_redirects_come_back_under_the_proxy_prefix() -> None:
    from rayjupyter.server.proxy import _local_location

    prefix = "/base/rayjupyter/dashboard/session_1/"
    ray = Upstream("http://h:8265", strip=prefix)
    assert _local_location("/#/overview", ray) == prefix + "#/overview"
    assert _local_location("http://h:8265/api/jobs/", ray) == prefix + "api/jobs/"
    assert _local_location("https://elsewhere/x", ray) == "https://elsewhere/x"
    assert _local_location("//elsewhere/x", ray) == "//elsewhere/x"

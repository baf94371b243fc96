"""``init`` as Ray users call it: which cluster it attaches to (a head started here,
'auto', 'local', RAYJUPYTER_ADDRESS / RAY_ADDRESS), secrets found on this machine, every
Ray argument honoured or refused, and the context it returns."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for_pids_gone
from test_cli import Cli, free_port

import rayjupyter as rj
from rayjupyter.core import connect

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A head started with `rayjupyter start --head`, this test's RAYJUPYTER_HOME naming it."""
    cli = Cli(tmp_path / "home")
    port = free_port()
    out = cli("start", "--head", "--port", str(port), "--num-cpus", "1", "--resources", '{"h": 1}')
    assert out.returncode == 0, out.stderr
    monkeypatch.setenv("RAYJUPYTER_HOME", str(cli.home))
    try:
        yield f"127.0.0.1:{port}"
    finally:
        rj.shutdown()
        pids = cli.started_pids()
        cli("stop")
        wait_for_pids_gone(pids, timeout=15)


def test_init_attaches_to_the_head_started_here(head, monkeypatch):
    address = head
    for how in ({}, {"address": "auto"}):
        ctx = rj.init(**how)
        assert not ctx.local and ctx.address == address and ctx["address"] == address
        assert rj.cluster_resources().get("h") == 1.0  # the head's own resource
        rj.shutdown()
    ctx = rj.init(address="local", num_cpus=1)  # 'local': a cluster of its own, always
    assert ctx.local and rj.cluster_resources().get("h") is None
    rj.shutdown()
    with pytest.raises(ValueError, match="must not be given"):
        rj.init(num_cpus=2)  # as Ray: resources are the running cluster's


def test_the_environment_names_the_cluster_and_its_secret_is_found_here(head, monkeypatch):
    address = head
    for name in ("RAY_ADDRESS", "RAYJUPYTER_ADDRESS"):
        monkeypatch.setenv(name, address)  # HOST:PORT only: the secret is on this machine
        ctx = rj.init()
        assert not ctx.local and ctx.address == address
        rj.shutdown()
        monkeypatch.delenv(name)
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert rj.init(num_cpus=1).local
    rj.shutdown()


def test_a_dead_or_missing_head_is_never_attached_to(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("RAYJUPYTER_HOME", str(home))
    with pytest.raises(ConnectionError, match="rayjupyter start --head"):
        rj.init(address="auto")
    home.mkdir()
    (home / "cluster.json").write_text(json.dumps({"address": "127.0.0.1:1", "secret": "x"}))
    assert connect.live_head() is None
    ctx = rj.init(num_cpus=1)  # a stale file: a local cluster, as with none
    try:
        assert ctx.local
    finally:
        rj.shutdown()


def test_a_cluster_added_in_the_jupyter_panel_lends_its_secret_to_kernels(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYJUPYTER_HOME", str(tmp_path / "home"))
    assert connect.find_secret("10.1.2.3:6380") == ""
    connect.remember_secret("10.1.2.3:6380", "s3cret")
    path = tmp_path / "home" / connect.KNOWN_FILE
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert connect.find_secret("10.1.2.3:6380") == "s3cret"
    assert rj.core.api._parse_address("10.1.2.3:6380") == ("10.1.2.3:6380", "s3cret")
    connect.forget_secret("10.1.2.3:6380")
    assert connect.find_secret("10.1.2.3:6380") == ""


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ({"labels": {"zone": "a"}}, "labels"),
        ({"_temp_dir": "/var/tmp/x"}, "/tmp/rayjupyter"),
        ({"_redis_password": "p"}, "no Redis"),
        ({"enable_resource_isolation": True}, "cgroups"),
        ({"logging_config": object()}, "LoggingConfig"),
        ({"_node_ip_address": "10.0.0.5"}, "loopback"),
        ({"_enable_object_reconstruction": False}, "always on"),
        ({"job_config": {"metadata": {"team": "a"}}}, "metadata"),
        ({"job_config": {"default_actor_lifetime": "detached"}}, "lifetime"),
    ],
)
def test_what_cannot_be_honoured_is_refused_with_its_reason(arguments, reason):
    with pytest.raises(ValueError, match=reason):
        rj.init(num_cpus=1, **arguments)
    assert not rj.is_initialized()  # refused before anything started


def test_a_ray_client_address_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="there is no Ray Client"):
        rj.init(address="ray://127.0.0.1:10001")


def test_an_unknown_argument_is_a_type_error():
    with pytest.raises(TypeError, match="no_such_option"):
        rj.init(no_such_option=1)


def test_what_can_be_honoured_is(capfd):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctx = rj.init(
            num_cpus=1,
            local_mode=True,
            job_config={"runtime_env": {"env_vars": {"FROM_JOB": "yes"}}, "ray_namespace": "jc"},
            log_to_driver=False,
            logging_level="warning",
            labels={},  # empty: asks for nothing
            _skip_env_hook=True,
        )
    try:
        assert any("local_mode" in str(w.message) for w in caught)
        assert rj.init(ignore_reinit_error=True) is ctx

        @rj.remote
        def job_env():
            print("not for the driver's terminal")
            return os.environ.get("FROM_JOB")

        assert rj.get(job_env.remote(), timeout=30) == "yes"
        assert rj.core.api._client().namespace == "jc"
        import logging

        assert logging.getLogger("rayjupyter").level == logging.WARNING
        rj.core.api.queries.ping(rj.core.api._client())
        assert "not for the driver" not in capfd.readouterr().out
    finally:
        rj.shutdown(_exiting_interpreter=False)


def test_the_context_is_rays(cluster):
    ctx = cluster
    assert ctx["address"] == ctx.address == ctx.address_info["gcs_address"]
    assert ctx["node_ip_address"] == "127.0.0.1"
    assert "node_id" in ctx and dict(ctx) == ctx.address_info
    assert ctx.dashboard_url is None and ctx.address_info["webui_url"] is None
    assert ctx.python_version.count(".") == 2 and ctx.ray_version == rj.__version__
    assert os.path.isdir(ctx.address_info["session_dir"])


def test_ray_connect_with_host_port_only_finds_the_secret(cluster):
    """What the lab panel's "Connect notebook" writes: no secret in the notebook."""
    from kernel_helpers import running_kernel

    with running_kernel("%load_ext rayjupyter", "import rayjupyter as rj") as kernel:
        kernel.ok(f"%ray_connect {cluster.address}")
        assert kernel.value("rj.core.api._state['context'].address") == repr(cluster.address)
        assert kernel.value("rj.core.api._state['context'].local") == "False"
        reply = kernel.execute(f"%ray_connect 127.0.0.1:{free_port()}", timeout=30)
        assert reply.error is not None, reply.messages  # nothing there: one line, no switch
        assert "No rayjupyter cluster at" in reply.error["evalue"]
        assert kernel.value("rj.core.api._state['context'].address") == repr(cluster.address)
        kernel.ok("%ray_disconnect")


def test_ray_connect_auto_attaches_to_the_head_started_here(head):
    from kernel_helpers import running_kernel

    with running_kernel("%load_ext rayjupyter", "import rayjupyter as rj") as kernel:
        kernel.ok("%ray_connect auto")
        assert kernel.value("rj.core.api._state['context'].address") == repr(head)
        assert kernel.value("rj.cluster_resources().get('h')") == "1.0"
        kernel.ok("%ray_disconnect")

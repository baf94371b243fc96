"""runtime/netns.py: namespaces on a bridge reach each other until a link is cut; all is cleaned.

No rayjupyter cluster here: a tiny TCP echo server stands in for it. Needs root and `ip netns`;
skips with the reason elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from helpers import alive_pids, wait_for_condition, wait_for_pids_gone

_NETNS_PY = Path(__file__).resolve().parents[1] / "runtime" / "netns.py"


def _load_netns() -> ModuleType:
    """runtime/ is not a package (it is not shipped): load the launcher from its path."""
    spec = importlib.util.spec_from_file_location("rayjupyter_runtime_netns", _NETNS_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


netns = _load_netns()
_OK, _REASON = netns.available()
needs_netns = pytest.mark.skipif(not _OK, reason=f"network namespaces unavailable: {_REASON}")

# listens on every address of its namespace, prints its port, echoes one message per connection
_ECHO_SERVER = """
import socket
srv = socket.socket()
srv.bind(("0.0.0.0", 0))
srv.listen()
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        conn.sendall(conn.recv(1024))
"""
# exit 0 and print the echo if HOST:PORT answers within TIMEOUT seconds, else exit 1
_CLIENT = """
import socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(b"ping")
        print(conn.recv(1024).decode())
except OSError as exc:
    sys.exit(f"{type(exc).__name__}: {exc}")
"""

# starts a child, says so, then both sleep
_PARENT = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print("up", flush=True)
time.sleep(300)
"""


def _host_state(name: str) -> tuple[list[str], list[str]]:
    """Namespaces and links on this machine whose names start with `name` (read with `ip`)."""
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return (
        [line.split()[0] for line in spaces.splitlines() if line.startswith(name)],
        [line.split(":")[1].strip() for line in links.splitlines() if f": {name}" in line],
    )


def _start_echo(net: ModuleType, i: int) -> tuple[subprocess.Popen[str], int]:
    """The echo server in namespace i and its port."""
    proc = net.run(i, [sys.executable, "-c", _ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 30.0)
    assert ready, "the echo server did not report its port within 30 s"
    return proc, int(proc.stdout.readline())


def _reach(net: ModuleType, i: int, host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a client in namespace i gets the echo back from HOST:PORT."""
    client = net.run(
        i,
        [sys.executable, "-c", _CLIENT, host, str(port), str(timeout)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, _ = client.communicate(timeout=timeout + 30.0)
    return client.returncode == 0 and out.strip() == "ping"


@pytest.fixture
def net() -> Iterator[ModuleType]:
    network = netns.Netns.up(3)
    try:
        yield network
    finally:
        network.down()


def test_available_says_why() -> None:
    ok, reason = netns.available()
    assert isinstance(ok, bool)
    assert ok == (reason == "")


@needs_netns
def test_namespaces_reach_each_other_until_the_link_is_cut(net: ModuleType) -> None:
    assert len({net.ip(i) for i in (1, 2, 3)}) == 3
    server, port = _start_echo(net, 2)
    assert server.pid in net.pids(2)  # the Popen is the command itself, not `ip netns exec`
    assert server.pid not in net.pids(1)

    assert _reach(net, 1, net.ip(2), port)
    assert not _reach(net, 1, "127.0.0.1", port)  # namespace 1's loopback is its own
    with socket.create_connection((net.ip(2), port), timeout=5.0) as conn:  # host -> ns 2
        conn.sendall(b"ping")
        assert conn.recv(1024) == b"ping"

    net.cut(2)
    assert not net.link_up(2)
    assert not _reach(net, 1, net.ip(2), port)
    assert _reach(net, 1, net.ip(1), 9) is False  # nothing listens: refused, not a hang
    assert server.poll() is None  # a cut link leaves the process running

    net.restore(2)
    assert net.link_up(2)
    wait_for_condition(lambda: _reach(net, 1, net.ip(2), port), timeout=30.0, interval=0.1)

    name, pids = net.name, net.pids(2) + net.pids(1)
    net.down()
    net.down()  # idempotent
    assert server.poll() is not None
    wait_for_pids_gone(pids)
    assert _host_state(name) == ([], [])
    assert not (netns.STATE_DIR / f"{name}.json").exists()


@needs_netns
def test_kill_ends_a_process_and_its_children(net: ModuleType) -> None:
    parent = net.run(1, [sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None and parent.stdout.readline().strip() == "up"
    wait_for_condition(lambda: len(net.pids(1)) == 2, timeout=10.0)
    inside = net.pids(1)
    net.kill(parent, graceful=False)
    assert not alive_pids(inside)
    assert net.pids(1) == []


@needs_netns
@pytest.mark.skipif(
    not (_OK and netns.netem_available()), reason="tc netem unavailable (kernel sch_netem)"
)
def test_loss_cut_drops_traffic_and_restores(net: ModuleType) -> None:
    _, port = _start_echo(net, 2)
    assert _reach(net, 3, net.ip(2), port)
    net.cut(2, how="loss")
    assert net.link_up(2)  # the link stays up, every packet is lost
    assert not _reach(net, 3, net.ip(2), port)
    net.restore(2)
    wait_for_condition(lambda: _reach(net, 3, net.ip(2), port), timeout=30.0, interval=0.1)


@needs_netns
def test_leftovers_of_a_crashed_owner_are_cleaned_up() -> None:
    crash = f"""
import importlib.util, os, signal, subprocess, sys
spec = importlib.util.spec_from_file_location("netns", {str(_NETNS_PY)!r})
mod = importlib.util.module_from_spec(spec)
sys.modules["netns"] = mod
spec.loader.exec_module(mod)
net = mod.Netns.up(2)
sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
proc = net.run(1, sleeper, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(net.name, proc.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, timeout=60)
    assert done.returncode == -9, done.stderr
    name, pid = done.stdout.split()
    try:
        spaces, links = _host_state(name)
        assert len(spaces) == 2 and f"{name}br" in links  # the owner died without cleaning
        assert alive_pids([int(pid)])  # its process in namespace 1 lives on

        assert name in netns.cleanup_stale()
        assert _host_state(name) == ([], [])
        wait_for_pids_gone([int(pid)])
        assert name not in netns.cleanup_stale()
    finally:
        netns.teardown(name)


@needs_netns
def test_script_up_exec_cut_restore_down() -> None:
    def script(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, str(_NETNS_PY), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    up = script("up", "2", "--json")
    assert up.returncode == 0, up.stderr
    layout = json.loads(up.stdout)
    name = layout["name"]
    try:
        ns2, ip2 = layout["namespaces"]["2"]
        assert ns2 == f"{name}-2"
        shown = script("exec", "--name", name, "2", "--", "ip", "-4", "-o", "addr", "show", "eth0")
        assert shown.returncode == 0 and f"inet {ip2}/24" in shown.stdout, shown.stderr
        assert f"{name}: 2 namespaces" in script("list").stdout
        assert script("cut", "--name", name, "2").returncode == 0
        assert not netns.Netns.attach(name).link_up(2)
        assert script("restore", "--name", name, "2").returncode == 0
        assert netns.Netns.attach(name).link_up(2)
        bad = script("exec", "--name", name, "7", "--", "true")
        assert bad.returncode == 1 and "1..2" in bad.stderr  # one line that names the range
        assert script("down", name).returncode == 0
        assert script("down", name).returncode == 0  # idempotent
        assert _host_state(name) == ([], [])
    finally:
        netns.teardown(name)


@needs_netns
def test_parallel_networks_get_their_own_names_and_subnets() -> None:
    with netns.Netns.up(1) as first, netns.Netns.up(1) as second:
        assert first.name != second.name
        assert not first.subnet.overlaps(second.subnet)
        with pytest.raises(netns.NetnsError, match="already up"):
            netns.Netns.up(1, name=first.name)
    assert _host_state(first.name) == ([], []) and _host_state(second.name) == ([], [])

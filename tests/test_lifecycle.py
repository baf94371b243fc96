"""Starting, attaching, stopping and securing local clusters, with real processes."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest
import zmq
from helpers import wait_for_condition, wait_for_pids_gone

import rayjupyter as rj
from rayjupyter.core import auth, protocol


def _tree(pid: int) -> set[int]:
    import psutil

    root = psutil.Process(pid)
    return {pid} | {child.pid for child in root.children(recursive=True)}


def test_init_shutdown_is_initialized_and_reinit(cluster):
    assert rj.is_initialized()
    with pytest.raises(RuntimeError, match="ignore_reinit_error"):
        rj.init()
    assert rj.init(ignore_reinit_error=True) is cluster
    assert cluster.address.startswith("127.0.0.1:")


def test_auto_init_on_first_use_and_shutdown_stops_everything():
    assert not rj.is_initialized()

    @rj.remote
    def one():
        return 1

    assert rj.get(one.remote(), timeout=60) == 1  # started a local cluster on demand
    assert rj.is_initialized()
    context = rj.init(ignore_reinit_error=True)
    session = context.address_info["session"]
    rj.shutdown()
    assert not rj.is_initialized()
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"rj-{session}-")]


def test_init_options_set_the_cluster_resources():
    rj.init(num_cpus=3, num_gpus=1, resources={"accelerator": 2}, object_store_memory=2**28)
    try:
        total = rj.cluster_resources()
        assert total["CPU"] == 3 and total["GPU"] == 1 and total["accelerator"] == 2
        assert total["object_store_memory"] == 2**28
    finally:
        rj.shutdown()


def test_another_process_attaches_by_address(cluster, tmp_path):
    ref = rj.put("shared through the cluster")
    script = textwrap.dedent(
        f"""
        import rayjupyter as rj
        rj.init(address={cluster.connect_address!r})

        @rj.remote
        def double(x):
            return 2 * x

        print(rj.get(double.remote(21), timeout=60), rj.cluster_resources()["CPU"])
        # on the node's machine: its Unix socket (local_channel.py), not zmq
        print(type(rj.core.api._state["client"].transport).__name__ == "ChannelTransport")
        rj.shutdown()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["42", "2.0", "True"]
    assert rj.get(ref, timeout=10) == "shared through the cluster"  # still up after it left


def test_attach_without_secret_is_a_clear_error(cluster):
    # a cluster of this user on this machine needs none (its record has it); another does
    assert (
        rj.core.api._parse_address(cluster.address)[1]
        == cluster.connect_address.split("://")[1].rpartition("@")[0]
    )
    with pytest.raises(ValueError, match="secret"):
        rj.core.api._parse_address("10.255.255.1:6380")


def test_connection_without_the_secret_is_refused_and_nothing_is_unpickled(cluster, tmp_path):
    witness = tmp_path / "unpickled"
    evil = pickle.dumps(_Evil(str(witness)), protocol=5)  # creates the witness if unpickled
    stop = protocol.dumps([protocol.StopCluster()])  # would stop the cluster if served
    host_port = cluster.address
    context = zmq.Context()
    sockets = []
    try:
        # no credentials; PLAIN with a wrong secret; PLAIN with the right secret (over tcp
        # only CurveZMQ is accepted: the secret never crosses a network in clear); CurveZMQ
        # with the keys of another secret
        for credentials in (None, "wrong-secret", cluster._secret, "curve:wrong-secret"):
            sock = context.socket(zmq.DEALER)
            sock.linger = 0
            if credentials is not None and credentials.startswith("curve:"):
                other = credentials[len("curve:") :]
                sock.curve_publickey, sock.curve_secretkey = auth.client_keys(other)
                sock.curve_serverkey = auth.server_keys(other)[0]
            elif credentials is not None:
                sock.plain_username = b"rayjupyter"
                sock.plain_password = credentials.encode()
            sock.connect(f"tcp://{host_port}")
            sock.send(evil)
            sock.send(stop)
            sockets.append(sock)
        for sock in sockets:
            assert not sock.poll(1500), "an unauthenticated peer got an answer"
    finally:
        for sock in sockets:
            sock.close(0)
        context.term()
    assert not witness.exists()

    @rj.remote
    def still_works():
        return "ok"

    assert rj.get(still_works.remote(), timeout=30) == "ok"


def test_local_socket_refuses_a_wrong_secret_before_unpickling(cluster, tmp_path):
    """Drivers on the node's machine attach over its Unix socket: a connection that does
    not open with proof of the secret is closed unanswered, and nothing it sent is read."""
    import socket

    from rayjupyter.core import channel, local_channel

    witness = tmp_path / "unpickled"
    evil = pickle.dumps(_Evil(str(witness)), protocol=5)
    framed = b"".join(
        channel.HEADER.pack(len(payload)) + payload
        for payload in (evil, protocol.dumps([protocol.StopCluster()]))
    )
    path = local_channel.socket_path(cluster.address_info["session"])
    for first in (b"", local_channel.auth_frame("wrong-secret", b"\0" * 8), b"RJCH1"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(local_channel.AUTH_TIMEOUT_S + 5)
        try:
            sock.connect(path)
            sock.sendall(first + (framed if first != b"RJCH1" else b""))
            try:
                answer = sock.recv(1)
            except ConnectionResetError:  # closed with our frames unread
                answer = b""
            assert answer == b"", "an unproven connection got an answer"
        finally:
            sock.close()
    assert not witness.exists()
    assert rj.get(rj.put("still up"), timeout=10) == "still up"


class _Evil:
    """Unpickling this runs code: touching the witness file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_local_cluster_dies_with_a_sigkilled_driver(tmp_path):
    script = textwrap.dedent(
        """
        import os, sys, time
        import rayjupyter as rj
        rj.init(num_cpus=2)

        @rj.remote
        def pid():
            return os.getpid()

        rj.get([pid.remote() for _ in range(4)], timeout=60)
        from rayjupyter.core.api import _state
        print(_state["cluster"].pid, flush=True)
        time.sleep(600)
        """
    )
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        node_pid = int(driver.stdout.readline())
        wait_for_condition(lambda: len(_tree(node_pid)) >= 3, timeout=30)  # node + 2 workers
        cluster_pids = _tree(node_pid)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
        driver.stdout.close()
    wait_for_pids_gone(cluster_pids, timeout=10)


def test_get_on_a_cluster_whose_node_died_raises_instead_of_hanging():
    from rayjupyter.core.api import _state
    from rayjupyter.exceptions import ClusterConnectionError

    rj.init(num_cpus=1)
    try:

        @rj.remote
        def slow():
            import time

            time.sleep(60)

        ref = slow.remote()
        node = _state["cluster"].process
        cluster_pids = _tree(node.pid)
        node.send_signal(signal.SIGKILL)
        with pytest.raises(ClusterConnectionError, match="exited"):
            rj.get(ref, timeout=30)
        wait_for_pids_gone(cluster_pids, timeout=10)  # its workers follow it
    finally:
        rj.shutdown()


def test_unreachable_address_is_a_clear_error_in_bounded_time():
    import time

    from rayjupyter.exceptions import ClusterConnectionError

    started = time.monotonic()
    with pytest.raises(ClusterConnectionError, match="No answer from a rayjupyter node"):
        rj.init(address="rayjupyter://not-the-secret@127.0.0.1:9")
    assert time.monotonic() - started < 10
    assert not rj.is_initialized()


def test_attached_driver_gives_up_on_a_dead_node_instead_of_hanging(cluster, tmp_path):
    from rayjupyter.core.api import _state

    marker = tmp_path / "started"
    script = textwrap.dedent(
        f"""
        import os, time
        import rayjupyter as rj
        from rayjupyter.exceptions import ClusterConnectionError
        rj.init(address={cluster.connect_address!r})

        @rj.remote
        def slow(path):
            open(path, "w").close()
            time.sleep(600)

        started = time.monotonic()
        try:
            rj.get(slow.remote({str(marker)!r}))
        except ClusterConnectionError as error:
            print("gave up", round(time.monotonic() - started), flush=True)
        """
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_condition(marker.exists, timeout=60)
        _state["cluster"].process.send_signal(signal.SIGKILL)  # the node, without goodbye
        out, err = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert out.startswith("gave up"), err


def test_tcp_traffic_is_encrypted(cluster):
    """A peer with the secret talks CurveZMQ over tcp: the bytes on the wire are not the
    pickled messages (a local proxy records what crosses it)."""
    import socket
    import threading

    host, port = cluster.address.rsplit(":", 1)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    seen = bytearray()

    def pump(src, dst):
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                seen.extend(data)
                dst.sendall(data)

    def serve():
        with contextlib.suppress(OSError):
            while True:
                inbound, _ = listener.accept()
                outbound = socket.create_connection((host, int(port)))
                for a, b in ((inbound, outbound), (outbound, inbound)):
                    threading.Thread(target=pump, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    proxy = f"rayjupyter://{cluster._secret}@127.0.0.1:{listener.getsockname()[1]}"
    marker = "a-very-recognisable-string-" * 4
    script = (
        f"import rayjupyter as rj; rj.init(address={proxy!r}); "
        f"print(rj.get(rj.put({marker!r}), timeout=30)); rj.shutdown()"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    listener.close()
    assert done.returncode == 0 and marker in done.stdout, done.stderr
    assert len(seen) > 1000
    assert marker.encode() not in seen and cluster._secret.encode() not in seen


def test_a_closed_client_is_freed_at_once_not_by_the_garbage_collector():
    """No reference cycle runs through a client's parts: left to the collector, a dropped
    client's zmq context could be terminated before its sockets close, and block a later
    test (or a user's program) inside a finalizer."""
    import gc
    import weakref

    from rayjupyter.core.api import _client

    rj.init(num_cpus=1)
    try:
        assert rj.get(rj.put(1), timeout=30) == 1
        client = weakref.ref(_client())
    finally:
        gc.disable()
        try:
            rj.shutdown()
            assert client() is None
        finally:
            gc.enable()

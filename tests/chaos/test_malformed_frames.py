"""What the protocol fuzzer found first, pinned down without hypothesis: an authenticated
client's frame that is not a batch of messages must not take the node down.

Before the fix, ``protocol.loads`` raised out of the node's loop (a pickled None was
enough), and a zmq message of several frames shifted every later frame by one.
"""

from __future__ import annotations

import os
import pickle
import re
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from helpers import is_alive

import rayjupyter as rj
from rayjupyter.core import auth, discovery, local_channel, protocol
from rayjupyter.core import protocol as P
from rayjupyter.core.ids import new_client_id

pytestmark = pytest.mark.chaos


@pytest.fixture
def node(cluster: Any) -> Iterator[dict[str, Any]]:
    record = next(r for r in discovery.list_local_clusters() if r["address"] == cluster.address)
    found = re.match(r"rayjupyter://([^@]+)@", record["connect_address"])
    assert found is not None
    ctx = zmq.Context()
    yield {"record": record, "secret": found.group(1), "zmq": ctx}
    ctx.destroy(0)


class _Dealers:
    """A client's two DEALER sockets, as transport.ZmqTransport makes them."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, secret: str) -> None:
        client_id = new_client_id()
        self.tx, self.rx = (ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER))
        for sock, suffix in ((self.tx, b"t"), (self.rx, b"r")):
            sock.routing_id = client_id + suffix
            sock.linger = 0
            auth.secure_client(sock, secret, endpoint)
            sock.connect(endpoint)

    def close(self) -> None:
        self.tx.close(0)
        self.rx.close(0)


@rj.remote
def echo(x: int) -> int:
    return x


def _hello() -> bytes:
    return protocol.dumps([P.Hello("driver", os.getpid(), protocol.PROTOCOL_VERSION, "t")])


def _framed(payload: bytes) -> bytes:
    return struct.pack("<Q", len(payload)) + payload


@pytest.mark.parametrize(
    "frame",
    [pickle.dumps(None), pickle.dumps([None]), b"not a pickle"],
    ids=["None", "[None]", "noise"],
)
def test_channel_bad_frame_closes_the_connection_and_the_node_lives(
    node: dict[str, Any], frame: bytes
) -> None:
    path = local_channel.socket_path(node["record"]["session"])
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        proof = local_channel.auth_frame(node["secret"], new_client_id())
        sock.sendall(proof + _framed(_hello()) + _framed(frame))
        while sock.recv(65536):  # maybe a Welcome, then the close (a timeout fails here)
            pass
    assert rj.get(echo.remote(7), timeout=10) == 7  # it still serves a real client
    assert is_alive(int(node["record"]["pid"]))


def test_zmq_bad_frames_are_dropped_and_later_ones_still_handled(node: dict[str, Any]) -> None:
    endpoint = f"tcp://{node['record']['address']}"
    client = _Dealers(node["zmq"], endpoint, node["secret"])
    try:
        client.rx.send(_hello())
        assert client.rx.poll(10_000), "no Welcome"
        client.rx.recv()
        client.tx.send_multipart([pickle.dumps(None), b"second frame", b"third"])  # 3 frames
        client.tx.send(pickle.dumps(None))
        client.tx.send(b"\x80\x05garbage")
        client.tx.send(protocol.dumps([P.Ping(41)]))  # a good one after the bad ones
        replies: list[Any] = []
        while client.rx.poll(10_000):
            replies += protocol.loads(client.rx.recv())
            if any(isinstance(m, P.Reply) and m.request_id == 41 for m in replies):
                break
        else:
            raise AssertionError(f"the Ping after the bad frames got no answer: {replies}")
        said = [m.text for m in replies if isinstance(m, P.LogLines)]
        assert any("malformed frame" in text for text in said), said  # told why, each time
    finally:
        client.close()
    assert rj.get(echo.remote(7), timeout=10) == 7
    assert is_alive(int(node["record"]["pid"]))

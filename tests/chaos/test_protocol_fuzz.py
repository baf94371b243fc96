"""The protocol fuzzer: malformed, truncated, oversized and reordered frames on every socket
of a head and of a joined node, before authentication and after it.

Sockets: the head's TCP ROUTER (CurveZMQ) and Unix ROUTER (PLAIN, node.sock), its local
channel (channel.sock), the joined node's TCP ROUTER and channel, and the dashboard's HTTP
port. Before authentication: raw bytes, ZMTP greetings whole and cut, oversized writes, zmq
clients with a wrong secret, and in every stream a pickle that would make a marker directory
if unpickled. After authentication (the real handshake, then a real Hello): batches of
well-formed rows of random kinds in random order with fields of any type, rows of unknown
kinds or wrong arity, things that are not batches, cut batches, noise, oversized frames,
multi-frame zmq messages; on the dashboard, every endpoint with fuzzed query strings.

What must hold: the node never dies and still answers a real client; nothing is unpickled
before authentication (the marker never appears; the control test shows it does appear when
the same pickle is sent after authentication); a bad frame gets an error, a closed
connection or silence, never a crash. CI spends about 1 s per socket and phase;
RAYJUPYTER_FUZZ_SECONDS=N spends N.
"""

from __future__ import annotations

import os
import re
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from chaos_report import FuzzRow, reporter
from cluster_helpers import Nodes
from conftest import _SHARED
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.core import discovery, local_channel
from rayjupyter.core.config import session_dir

hypothesis = pytest.importorskip("hypothesis", reason="the fuzzer needs hypothesis (test extra)")
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from protocol_fuzz import (  # noqa: E402
    Big,
    Outcome,
    ZmqAttacker,
    authed_frames,
    fuzz_seconds,
    marker_pickle,
    materialize,
    raw_frames,
    send_channel_authed,
    send_stream,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]
BUDGET_S = fuzz_seconds(1.0)


@rj.remote(num_cpus=0)
def where() -> str:
    return rj.get_runtime_context().get_node_id()


@dataclass
class Target:
    """A node's sockets as a client finds them."""

    name: str
    pid: int
    host: str
    port: int
    session: str
    node_id: str = ""

    @property
    def channel(self) -> str:
        return local_channel.socket_path(self.session)

    @property
    def ipc(self) -> str:
        return f"{session_dir(self.session)}/node.sock"


def _let_outlive_tests(pid: int) -> None:
    """The module's own processes (the attacker, restarted after an abort) are no test's leak."""
    _SHARED.roots.add(pid)


@dataclass
class FuzzCluster:
    head: Target
    node: Target
    secret: str
    dashboard: str  # http://host:port/prefix/
    token: str
    nodes: Nodes
    attacker: ZmqAttacker = field(default_factory=lambda: ZmqAttacker(_let_outlive_tests))

    def alive(self, target: Target) -> bool:
        try:
            return psutil.Process(target.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def answers(self) -> None:
        """A real client gets answers from both nodes: the node table, and a task on each."""
        rows = {row["NodeID"]: row["Alive"] for row in rj.nodes()}
        assert rows.get(self.node.node_id), f"the joined node is not alive: {rows}"
        ran = rj.get(
            [where.remote(), where.options(resources={"fuzzpeer": 0.01}).remote()], timeout=30
        )
        assert ran[1] == self.node.node_id, ran


def _start() -> FuzzCluster:
    ctx = rj.init(num_cpus=1, include_dashboard=True)
    host, port = str(ctx.address).rsplit(":", 1)
    record = next(r for r in discovery.list_local_clusters() if r["address"] == ctx.address)
    secret = re.match(r"rayjupyter://([^@]+)@", record["connect_address"]).group(1)  # type: ignore[union-attr]
    head = Target("head", int(record["pid"]), host, int(port), str(record["session"]))
    nodes = Nodes(ctx)
    joined = nodes.join(num_cpus=1, fuzzpeer=1)
    nhost, nport = joined.address.rsplit(":", 1)
    node = Target("node", joined.pid, nhost, int(nport), joined.session)
    wait_for_condition(lambda: sum(r["Alive"] for r in rj.nodes()) == 2, timeout=30)
    node.node_id = rj.get(where.options(resources={"fuzzpeer": 0.01}).remote(), timeout=30)
    url = str(ctx.dashboard_url)
    token = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)["token"][0]
    base = url.split("?")[0].rsplit("/", 1)[0] + "/"
    return FuzzCluster(head, node, secret, base, token, nodes)


class Holder:
    cluster: FuzzCluster | None = None


@pytest.fixture(scope="module")
def holder() -> Iterator[Holder]:
    held = Holder()
    _SHARED.active = True
    try:
        yield held
    finally:
        _SHARED.active, _SHARED.roots = False, set()
        if held.cluster is not None:
            held.cluster.nodes.stop()
            held.cluster.attacker.close()
        rj.shutdown()


@pytest.fixture
def cluster(holder: Holder) -> FuzzCluster:
    """The module's head and joined node, started again if a previous test killed one."""
    found = holder.cluster
    if found is not None and not (found.alive(found.head) and found.alive(found.node)):
        found.nodes.stop()
        found.attacker.close()
        rj.shutdown()
        found = None
    if found is None:
        direct = {p.pid for p in psutil.Process().children()}
        found = _start()
        _SHARED.roots = {p.pid for p in psutil.Process().children()} - direct
        holder.cluster = found
    return found


def _row(request: pytest.FixtureRequest, target: str, phase: str) -> FuzzRow:
    report = reporter(request.config)
    return report.fuzz_row(request.node.nodeid, target, phase)


BATCH = 8  # examples per hypothesis run: the budget is checked between runs


def fuzz_for(budget: Budget, body: Callable[..., None], /, **strategies: Any) -> None:
    """Run `body` on examples drawn from `strategies` until the budget is spent: hypothesis
    runs of BATCH examples each, seeded from RAYJUPYTER_FUZZ_SEED and the run's number (so a
    failure says how to replay it), with no shrinking (a dead node cannot be shrunk against)
    and no example database."""
    base = int(os.environ.get("RAYJUPYTER_FUZZ_SEED", "16"))
    rounds = 0
    while not budget.spent:

        @seed(base * 100_000 + rounds)
        @settings(
            max_examples=BATCH,
            deadline=None,
            phases=[Phase.generate],
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(**strategies)
        def batch(**example: Any) -> None:
            if not budget.spent:
                body(**example)

        try:
            batch()
        except BaseException as exc:
            exc.add_note(f"replay: RAYJUPYTER_FUZZ_SEED={base}, hypothesis run {rounds}")
            raise
        rounds += 1


class Budget:
    """The seconds one socket and phase may spend."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.began = time.monotonic()

    @property
    def spent(self) -> bool:
        return time.monotonic() - self.began > self.seconds


def _after_each(cluster: FuzzCluster, target: Target, row: FuzzRow, frames: Any) -> None:
    if not cluster.alive(target):
        row.crashes += 1
        shown = [f if isinstance(f, Big) else f[:200] for f in frames]
        raise AssertionError(f"the {target.name} node died after these frames: {shown!r}")


def _fill(row: FuzzRow, out: Outcome, began: float) -> None:
    row.frames += out.frames
    row.errors_answered += out.answered
    row.closed += out.closed
    row.seconds += time.monotonic() - began


# ----------------------------------------------------------------------------- before auth

PRE_AUTH = ["head tcp", "head ipc", "head channel", "node tcp", "node channel"]


@pytest.mark.parametrize("socket_name", PRE_AUTH)
def test_before_auth_nothing_is_unpickled_and_the_node_lives(
    socket_name: str, cluster: FuzzCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    which, kind = socket_name.split()
    target = cluster.head if which == "head" else cluster.node
    row = _row(request, socket_name, "before auth")
    marker = tmp_path / "unpickled"
    bomb = marker_pickle(str(marker))
    out = Outcome()
    budget = Budget(BUDGET_S)
    wrong = os.urandom(16).hex()

    def fuzz(frames: list[bytes | Big], bomb_at: int) -> None:
        chunks = [materialize(f) for f in frames]
        chunks.insert(min(bomb_at, len(chunks)), bomb)
        if kind == "tcp":
            send_stream((target.host, target.port), chunks, out)
            if bomb_at % 2 == 0:  # a zmq client with the wrong secret, frames and all
                cluster.attacker.send(
                    f"tcp://{target.host}:{target.port}",
                    wrong,
                    [[c] for c in chunks],
                    out,
                    hello=True,
                )
        elif kind == "ipc":
            send_stream(target.ipc, chunks, out)
            if bomb_at % 2 == 0:
                cluster.attacker.send(
                    f"ipc://{target.ipc}",
                    wrong,
                    [[c] for c in chunks],
                    out,
                    hello=True,
                )
        else:  # channel: noise, or a well-shaped proof with the wrong secret, then frames
            if bomb_at % 2 == 0:
                proof = local_channel.auth_frame(wrong, os.urandom(8))
                framed = [len(c).to_bytes(8, "little") + c for c in chunks]
                chunks = [proof, *framed]
            send_stream(target.channel, chunks, out)
        _after_each(cluster, target, row, frames)
        assert not marker.exists(), f"unpickled before authentication on {socket_name}"

    began = time.monotonic()
    try:
        fuzz_for(
            budget,
            fuzz,
            frames=st.lists(raw_frames, min_size=1, max_size=4),
            bomb_at=st.integers(0, 4),
        )
    finally:
        _fill(row, out, began)
        row.unpickled_before_auth += int(marker.exists())
    assert not marker.exists()
    cluster.answers()


def test_dashboard_before_auth(
    cluster: FuzzCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Without the token every request is refused (403) or dropped, malformed ones too."""
    row = _row(request, "dashboard http", "before auth")
    parsed = urllib.parse.urlparse(cluster.dashboard)
    address = (parsed.hostname, parsed.port)
    bomb = marker_pickle(str(tmp_path / "unpickled"))
    budget = Budget(BUDGET_S)
    out = Outcome()
    codes: dict[str, int] = {}

    def fuzz(
        method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        status = _http(address, parsed.path, method, path, query, headers, body)
        codes[status] = codes.get(status, 0) + 1
        out.frames += 1
        assert status in ("403", "400", "404", "405", "closed", "none", "431", "414", "413"), (
            f"{method} {path}?{query} without the token answered {status}"
        )

    began = time.monotonic()
    try:
        fuzz_for(
            budget,
            fuzz,
            method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "G\0T", ""]),
            path=st.one_of(st.sampled_from(API_PATHS), st.text(max_size=60)),
            query=st.text(max_size=80),
            headers=st.lists(st.tuples(st.text(max_size=20), st.text(max_size=60)), max_size=4),
            body=st.one_of(st.just(bomb), st.binary(max_size=512)),
        )
    finally:
        out.closed = codes.get("closed", 0)
        out.answered = sum(v for k, v in codes.items() if k[:1] == "4")
        row.server_errors += sum(v for k, v in codes.items() if re.fullmatch(r"5\d\d", k))
        _fill(row, out, began)
        row.notes.append(f"status codes: {codes}")
        row.unpickled_before_auth += int((tmp_path / "unpickled").exists())
    assert not (tmp_path / "unpickled").exists()
    assert (
        _http(address, parsed.path, "GET", "api/v0/status", f"token={cluster.token}", [], b"")
        == "200"
    )


API_PATHS = [
    "api/v0/status",
    "api/v0/nodes",
    "api/v0/tasks",
    "api/v0/tasks/summary",
    "api/v0/actors",
    "api/v0/objects",
    "api/v0/jobs",
    "api/v0/logs",
    "api/v0/timeline",
    "overview",
    "",
]


def _http(
    address: tuple[Any, ...],
    prefix: str,
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> str:
    """One raw HTTP/1.1 request; the status code, 'closed' or 'none' (no answer in 5 s)."""
    target = urllib.parse.quote(prefix.rstrip("/") + "/" + path, safe="/%")
    if query:
        target += "?" + urllib.parse.quote(query, safe="=&%")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {address[0]}:{address[1]}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
    with socket.create_connection(address, timeout=5) as sock:
        try:
            sock.sendall(raw)
            data = sock.recv(256)
        except TimeoutError:
            return "none"
        except OSError:
            return "closed"
    if not data:
        return "closed"
    found = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return found.group(1).decode() if found else "garbage"


# ----------------------------------------------------------------------------- after auth

POST_AUTH = ["head tcp", "head ipc", "head channel", "node tcp", "node channel"]


@pytest.mark.parametrize("socket_name", POST_AUTH)
def test_after_auth_a_buggy_client_never_crashes_the_node(
    socket_name: str, cluster: FuzzCluster, request: pytest.FixtureRequest
) -> None:
    which, kind = socket_name.split()
    target = cluster.head if which == "head" else cluster.node
    row = _row(request, socket_name, "after auth")
    out = Outcome()
    budget = Budget(BUDGET_S)

    def fuzz(messages: list[list[bytes | Big]]) -> None:
        parts = [[materialize(f) for f in message] for message in messages]
        if kind == "channel":
            send_channel_authed(target.channel, cluster.secret, [f for m in parts for f in m], out)
        else:
            endpoint = (
                f"tcp://{target.host}:{target.port}" if kind == "tcp" else f"ipc://{target.ipc}"
            )
            cluster.attacker.send(endpoint, cluster.secret, parts, out, hello=True)
        _after_each(cluster, target, row, [f for m in messages for f in m])

    messages = st.lists(st.lists(authed_frames, min_size=1, max_size=3), min_size=1, max_size=4)
    began = time.monotonic()
    try:
        fuzz_for(budget, fuzz, messages=messages)
    finally:
        _fill(row, out, began)
    if not (cluster.alive(cluster.head) and cluster.alive(cluster.node)):
        row.crashes += 1
    cluster.answers()


def test_dashboard_after_auth(cluster: FuzzCluster, request: pytest.FixtureRequest) -> None:
    """With the token, fuzzed query strings on every endpoint: 200 or a 4xx, never a 5xx."""
    row = _row(request, "dashboard http", "after auth")
    parsed = urllib.parse.urlparse(cluster.dashboard)
    address = (parsed.hostname, parsed.port)
    budget = Budget(BUDGET_S)
    out = Outcome()
    codes: dict[str, int] = {}
    keys = st.sampled_from(["limit", "state", "name", "pid", "lines", "filter", "kind", "x"])
    numbers = st.one_of(
        st.integers(-(2**80), 2**80).map(str),
        st.integers(4000, 6000).map(lambda n: "9" * n),
        st.text(max_size=20),
    )

    def fuzz(path: str, args: list[tuple[str, str]]) -> None:
        query = "&".join(
            f"{k}={urllib.parse.quote(v)}" for k, v in [("token", cluster.token), *args]
        )
        status = _http(address, parsed.path, "GET", path, query, [], b"")
        codes[status] = codes.get(status, 0) + 1
        out.frames += 1

    began = time.monotonic()
    try:
        fuzz_for(
            budget,
            fuzz,
            path=st.sampled_from(API_PATHS),
            args=st.lists(st.tuples(keys, numbers), max_size=3),
        )
    finally:
        out.answered = sum(v for k, v in codes.items() if k[:1] in "24")
        out.closed = codes.get("closed", 0)
        row.server_errors += sum(v for k, v in codes.items() if re.fullmatch(r"5\d\d", k))
        _fill(row, out, began)
        row.notes.append(f"status codes: {codes}")
    assert (
        _http(address, parsed.path, "GET", "api/v0/status", f"token={cluster.token}", [], b"")
        == "200"
    )
    assert row.server_errors == 0, f"5xx answers: {codes}"


def test_dashboard_many_digit_limit(cluster: FuzzCluster) -> None:
    """What the fuzzer found on the dashboard (issue 16, fixed on main since): limit=<5,000
    nines> answered 500 (Python's int-digits limit), not a 400."""
    parsed = urllib.parse.urlparse(cluster.dashboard)
    address = (parsed.hostname, parsed.port)
    query = f"token={cluster.token}&limit={'9' * 5000}"
    assert _http(address, parsed.path, "GET", "api/v0/tasks", query, [], b"") == "400"


# ----------------------------------------------------------------------------- the control


def test_control_the_marker_shows_an_unpickling(cluster: FuzzCluster, tmp_path: Path) -> None:
    """The same pickle sent after the real handshake is unpickled (an authenticated client
    may run code): so the marker would have shown any unpickling before authentication."""
    marker = tmp_path / "unpickled"
    out = Outcome()
    send_channel_authed(cluster.head.channel, cluster.secret, [marker_pickle(str(marker))], out)
    wait_for_condition(marker.exists, timeout=10)
    cluster.answers()

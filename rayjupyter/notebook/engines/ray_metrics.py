"""Each Ray node's machine CPU and memory, for the charts and the status card: Ray's core API
has none, but every node's metrics agent serves them in Prometheus' text format at
``http://NODE:MetricsExportPort/metrics`` (``ray.nodes()`` names the port), without the
dashboard and without the cluster's token. Parsing and combining are pure functions; the
scraper asks the live nodes in parallel, at most every ``MIN_INTERVAL_S`` per node (the
agents sample every few seconds), and leaves a node that does not answer for a while."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rayjupyter.core.read_models import MachineUsage

#: the gauges read (``ray_node_*``, one sample per node's own endpoint)
CPU_PERCENT = "ray_node_cpu_utilization"  # 0-100 over all the node's cores
CPU_COUNT = "ray_node_cpu_count"
MEMORY_USED = "ray_node_mem_used"  # bytes
MEMORY_TOTAL = "ray_node_mem_total"  # bytes
WANTED = (CPU_PERCENT, CPU_COUNT, MEMORY_USED, MEMORY_TOTAL)
MIN_INTERVAL_S = 2.0
TIMEOUT_S = 1.5
DOWN_RETRY_S = 30.0  # a node whose endpoint failed is asked again only this much later
MAX_THREADS = 16


def parse_gauges(text: str, names: Sequence[str] = WANTED) -> dict[str, float]:
    """The value of each named metric in a Prometheus text page (its first sample)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("ray_node_"):
            continue
        head, _, value = line.rpartition(" ")
        name = head.partition("{")[0].strip()
        if name in names and name not in found:
            try:
                found[name] = float(value)
            except ValueError:
                continue
    return found


def machine_usage(gauges: Mapping[str, float], at: float) -> MachineUsage | None:
    """One node's machine from its gauges; None until its agent has reported memory."""
    total = gauges.get(MEMORY_TOTAL, 0.0)
    if total <= 0 or CPU_PERCENT not in gauges:
        return None
    return MachineUsage(
        cpu_percent=max(0.0, min(100.0, gauges[CPU_PERCENT])),
        memory_total=total,
        memory_used=max(0.0, gauges.get(MEMORY_USED, 0.0)),
        time=at,
    )


def combine(machines: Sequence[MachineUsage], at: float) -> MachineUsage:
    """The cluster's line: mean CPU % of the nodes, memory summed (as the server's Ray card)."""
    if not machines:
        return MachineUsage(cpu_percent=0.0, memory_total=0.0, memory_used=0.0, time=at)
    return MachineUsage(
        cpu_percent=sum(m.cpu_percent for m in machines) / len(machines),
        memory_total=sum(m.memory_total for m in machines),
        memory_used=sum(m.memory_used for m in machines),
        time=at,
    )


def metrics_url(node: Mapping[str, Any]) -> str | None:
    """Where a ``ray.nodes()`` row's metrics agent answers (None: dead, or no port)."""
    port = int(node.get("MetricsExportPort") or 0)
    address = str(node.get("NodeManagerAddress") or "")
    if not node.get("Alive") or not port or not address:
        return None
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}/metrics"


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        return bytes(response.read()).decode("utf-8", "replace")


class NodeMetrics:
    """Node id -> its machine, scraped from the nodes' metrics agents (cached briefly)."""

    def __init__(
        self,
        fetch: Callable[[str], str] = _fetch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetch = fetch
        self.clock = clock
        self._last: dict[str, tuple[float, MachineUsage]] = {}  # node id -> (asked at, usage)
        self._down_until: dict[str, float] = {}

    @property
    def answered(self) -> bool:
        """Whether any node's agent has given its machine."""
        return bool(self._last)

    def sample(self, nodes: Sequence[Mapping[str, Any]]) -> dict[str, MachineUsage]:
        """Each live node's machine now (nodes whose agent has not answered yet left out)."""
        now = self.clock()
        due: dict[str, str] = {}
        live: set[str] = set()
        for node in nodes:
            node_id, url = str(node.get("NodeID", "")), metrics_url(node)
            if url is None:
                continue
            live.add(node_id)
            asked = self._last.get(node_id, (-1e18, None))[0]
            if now - asked >= MIN_INTERVAL_S and now >= self._down_until.get(node_id, 0.0):
                due[node_id] = url
        if due:
            self._scrape(due, now)
        for gone in set(self._last) - live:
            del self._last[gone]
        return {node_id: usage for node_id, (_at, usage) in self._last.items()}

    def _scrape(self, due: Mapping[str, str], now: float) -> None:
        at = time.time()
        with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(due))) as pool:
            pages = dict(zip(due, pool.map(self._page, due.values()), strict=True))
        for node_id, page in pages.items():
            usage = machine_usage(parse_gauges(page), at) if page is not None else None
            if usage is None:
                if page is None:
                    self._down_until[node_id] = now + DOWN_RETRY_S
                continue
            self._down_until.pop(node_id, None)
            self._last[node_id] = (now, usage)

    def _page(self, url: str) -> str | None:
        try:
            return self.fetch(url)
        except Exception:  # unreachable, refused, slow: this node is left out for a while
            return None

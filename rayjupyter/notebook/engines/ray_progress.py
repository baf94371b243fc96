"""Progress bars over Ray's ObjectRefs: a ProgressSource from ``ray.wait`` and the cluster's
resources, and the hook that gives a blocking ``ray.get`` of many refs the automatic bar
(ours is fed by the runtime's ``wait_observer``; Ray has none, so ``ray.get`` is wrapped
while this kernel is connected through ``%ray_connect --ray``, or after a cell that called
``ray.init()`` itself)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import Any

#: what the hook replaced, to put back on disconnect
_original_get: list[Any] = []


class RayProgress:
    """Which refs are ready (``ray.wait`` without fetching) and how many CPU slots are busy.

    Ray's wait does not say whether a finished task failed: its error shows at ``get``, and
    the bar counts it done. Running is the cluster's CPUs in use (all drivers' tasks)."""

    def __init__(self, refs: Sequence[Any]) -> None:
        self.refs = {ref.binary(): ref for ref in refs}

    @property
    def _ray(self) -> Any:
        return sys.modules["ray"]

    def _unfinished(self, object_ids: Sequence[bytes]) -> list[Any]:
        return [self.refs[oid] for oid in object_ids if oid in self.refs]

    def add(self, refs: Sequence[Any]) -> None:
        self.refs.update((ref.binary(), ref) for ref in refs)

    def finished(self, object_ids: Sequence[bytes]) -> dict[bytes, bool]:
        refs = self._unfinished(object_ids)
        if not refs or self.closed:
            return {}
        ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        return {ref.binary(): False for ref in ready}

    def running(self) -> int:
        ray = self._ray
        try:
            cpus = float(ray.cluster_resources().get("CPU", 0.0))
            free = float(ray.available_resources().get("CPU", 0.0))
        except Exception:  # disconnected while drawing: nothing runs for us any more
            return 0
        return max(0, round(cpus - free))

    def name(self, object_id: bytes) -> str:
        return "task"

    def wait(self, object_ids: Sequence[bytes], seconds: float) -> None:
        refs = self._unfinished(object_ids)
        if refs and not self.closed:
            self._ray.wait(refs, num_returns=len(refs), timeout=seconds, fetch_local=False)

    @property
    def closed(self) -> bool:
        ray = sys.modules.get("ray")
        return ray is None or not ray.is_initialized()


def install_get_hook(ray: Any, *, only_in_kernel: bool = True) -> None:
    """Wrap ``ray.get`` so a slow get of many refs shows the automatic progress bar
    (``only_in_kernel=False``: outside a kernel too, for measuring its cost)."""
    from rayjupyter.notebook.kernel import in_kernel

    if _original_get or (only_in_kernel and not in_kernel()):
        return
    original = ray.get

    @functools.wraps(original)
    def get(object_refs: Any, *args: Any, **kwargs: Any) -> Any:
        from rayjupyter.notebook.progress_display import AUTO

        if (
            not AUTO.enabled
            or not isinstance(object_refs, list)
            or len(object_refs) < AUTO.min_refs
            or not all(isinstance(ref, ray.ObjectRef) for ref in object_refs)
        ):
            return original(object_refs, *args, **kwargs)
        with AUTO.watch(RayProgress(object_refs), [ref.binary() for ref in object_refs]):
            return original(object_refs, *args, **kwargs)

    _original_get[:] = [original]
    ray.get = get


def uninstall_get_hook(ray: Any) -> None:
    if _original_get:
        ray.get = _original_get.pop()


def follow_ray_sessions(*_result: Any) -> None:
    """After each cell (IPython's post_run_cell): a ``ray.init()`` the user called gets the
    hook too, from the next cell on; after a ``ray.shutdown()`` Ray's own get is put back."""
    ray = sys.modules.get("ray")
    if ray is None:
        return
    if ray.is_initialized():
        install_get_hook(ray)
    elif _original_get:
        uninstall_get_hook(ray)

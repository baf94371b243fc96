"""``ray.cluster_utils`` for the shim: a multi-node cluster on this machine."""

from __future__ import annotations

from typing import Any

from benchmarks.ray_compat.internals import skip_internal

cluster_not_supported = False


class Cluster:
    """Ray's test helper that starts nodes as local processes: not provided yet."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        skip_internal("ray.cluster_utils.Cluster (multi-node helper not in the shim yet)")

"""Ray's ``as_completed`` and ``map_unordered``: results as they are ready, in batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from rayjupyter.core import api
from rayjupyter.core.object_ref import ObjectRef

DEFAULT_CHUNK_SIZE = 10


def _check(chunk_size: int, kwargs: dict[str, Any]) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError("`chunk_size` must be >= 1")
    if "num_returns" in kwargs:
        raise ValueError("Use the `chunk_size` argument instead of `num_returns`.")


def _batch(
    refs: list[ObjectRef], chunk_size: int, yield_obj_refs: bool, kwargs: dict[str, Any]
) -> tuple[list[Any], list[ObjectRef]]:
    ready, pending = api.wait(refs, num_returns=min(chunk_size, len(refs)), **kwargs)
    return (list(ready) if yield_obj_refs else api.get(list(ready))), list(pending)


def as_completed(
    refs: Sequence[ObjectRef],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    yield_obj_refs: bool = False,
    **kwargs: Any,
) -> Iterator[Any]:
    """Yield the values of ``refs`` (or the refs, ``yield_obj_refs=True``) as they are
    ready, ``chunk_size`` at a time; ``kwargs`` go to ``wait`` (``timeout``, ``fetch_local``).
    """
    _check(chunk_size, kwargs)
    pending = list(refs)
    while pending:
        results, pending = _batch(pending, chunk_size, yield_obj_refs, kwargs)
        yield from results


def map_unordered(
    fn: Any,
    items: Iterable[Any],
    *,
    backpressure_size: int | None = 100,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    yield_obj_refs: bool = False,
    **kwargs: Any,
) -> Iterator[Any]:
    """``fn.remote(item)`` for each item, at most ``backpressure_size`` in flight (None: no
    bound), yielding results in the order they finish."""
    _check(chunk_size, kwargs)
    if not hasattr(fn, "remote"):
        raise TypeError(f"map_unordered needs a remote function, got {fn!r}")
    if backpressure_size is not None and backpressure_size < 1:
        raise ValueError("`backpressure_size` must be >= 1, or None for no bound")
    pending: list[ObjectRef] = []
    for item in items:
        pending.append(fn.remote(item))
        if backpressure_size is not None and len(pending) >= backpressure_size:
            results, pending = _batch(pending, chunk_size, yield_obj_refs, kwargs)
            yield from results
    while pending:
        results, pending = _batch(pending, chunk_size, yield_obj_refs, kwargs)
        yield from results

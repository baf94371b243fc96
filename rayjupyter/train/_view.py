"""The run's view while ``fit()`` runs; none for now (a text and notebook view come next)."""

from __future__ import annotations

from typing import Any


def live_view(num_workers: int) -> Any:
    return None

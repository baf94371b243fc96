"""The functions every backend runs as tasks; nothing heavy is imported, so workers load it fast."""

from __future__ import annotations

import os
import time


def noop() -> None:
    """Do nothing, so a timing measures only the runtime's own overhead."""


def sleep_pid(seconds: float) -> int:
    """Hold a worker for ``seconds`` and name it, so concurrent calls prove every worker is live."""
    time.sleep(seconds)
    return os.getpid()

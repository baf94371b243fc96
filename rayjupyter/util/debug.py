"""Ray's small logging helpers in ``ray.util``: log something once, or now and then."""

from __future__ import annotations

import threading
import time

_lock = threading.Lock()
_logged: set[str] = set()
_disabled = False
_periodic_s = 0.0
_last_reset = time.monotonic()


def log_once(key: str) -> bool:
    """True the first time ``key`` is seen (again every period once periodic logging is on)."""
    global _last_reset
    with _lock:
        if _disabled:
            return False
        if _periodic_s and time.monotonic() - _last_reset > _periodic_s:
            _logged.clear()
            _last_reset = time.monotonic()
        if key in _logged:
            return False
        _logged.add(key)
        return True


def disable_log_once_globally() -> None:
    """Make ``log_once`` return False from now on."""
    global _disabled
    _disabled = True


def enable_periodic_logging() -> None:
    """Let each ``log_once`` key log again every 60 seconds."""
    global _periodic_s
    _periodic_s = 60.0

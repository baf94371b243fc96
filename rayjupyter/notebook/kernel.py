"""Where this process runs (a Jupyter kernel, terminal IPython or plain Python), asked cheaply."""

from __future__ import annotations

import contextvars
import sys
from typing import Any


def get_shell() -> Any | None:
    """The running IPython shell, without importing IPython when it is not loaded."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    return ipython.get_ipython()


def in_kernel() -> bool:
    """True inside a Jupyter kernel, where widgets render (not in terminal IPython)."""
    shell = get_shell()
    return shell is not None and getattr(shell, "kernel", None) is not None


def cell_context() -> contextvars.Context:
    """The caller's context: output and displays made in it from any thread land under the
    cell that is running now (ipykernel keeps the cell's message header in a context var)."""
    return contextvars.copy_context()

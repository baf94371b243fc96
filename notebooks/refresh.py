"""Re-run the example notebooks and store their outputs for nbval.

    .venv/bin/python notebooks/refresh.py [NAME.ipynb ...]

Cells marked ``# NBVAL_IGNORE_OUTPUT`` (timings, addresses, widgets, bokeh's embedded
BokehJS) are stored without outputs, so the committed notebooks stay small and nbval
checks only what is deterministic.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import ipykernel.kernelspec
import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
IGNORE = "NBVAL_IGNORE_OUTPUT"


def _this_python_kernel() -> KernelManager:
    """An IPython kernel on this Python, as ``pytest --nbval-current-env`` runs them."""

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> Any:
            return self.kernel_spec_class(
                resource_dir=ipykernel.kernelspec.RESOURCES,
                **ipykernel.kernelspec.get_kernel_dict(),
            )

    return KernelManager(kernel_name="this-python", kernel_spec_manager=ThisPython())


def refresh(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook,
        km=_this_python_kernel(),
        timeout=120,
        resources={"metadata": {"path": str(HERE)}},
        store_widget_state=False,
    ).execute()
    for cell in notebook.cells:
        if cell.cell_type == "code" and IGNORE in cell.source:
            cell.outputs = []
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, path)
    print(f"refreshed {path.name}")


def main(names: list[str]) -> None:
    paths = [HERE / name for name in names] or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        refresh(path)


if __name__ == "__main__":
    main(sys.argv[1:])

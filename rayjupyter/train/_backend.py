"""What a framework adds to the generic data-parallel run (Ray Train's Backend): set-up
on the started workers before the loop, and clean-up after it."""

from __future__ import annotations

from typing import Any


class Backend:
    """Hooks the controller calls on the driver with the worker group."""

    def on_start(self, worker_group: Any, backend_config: BackendConfig) -> None:
        """After the workers start, before the loop: e.g. the process group."""

    def on_shutdown(self, worker_group: Any, backend_config: BackendConfig) -> None:
        """After the loop, while the workers still live."""


class BackendConfig:
    """A framework's settings; ``backend_cls`` says which Backend applies them."""

    @property
    def backend_cls(self) -> type[Backend]:
        return Backend

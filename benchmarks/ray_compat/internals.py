"""Stand-ins for Ray's internals (``ray._private``, ``ray._raylet``, GCS, raylet, ...).

A test that touches one is skipped with the name it touched, not failed: those tests check
how Ray is built, not the API a user ports. Every attribute of a stand-in is another
stand-in; using one (calling it, comparing it, iterating it, entering it) skips the test.
"""

from __future__ import annotations

import types
from typing import Any, NoReturn

SKIP_PREFIX = "needs Ray internals: "


def skip_internal(path: str) -> NoReturn:
    """Skip the running test because it needs Ray's internal ``path``."""
    import pytest

    pytest.skip(SKIP_PREFIX + path)


class Internal:
    """A name inside Ray's internals; any use of it skips the test that used it."""

    def __init__(self, path: str) -> None:
        object.__setattr__(self, "_path", path)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return Internal(f"{self._path}.{name}")

    def __setattr__(self, name: str, value: Any) -> None:
        skip_internal(f"{self._path}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        skip_internal(self._path)

    def __eq__(self, other: object) -> bool:
        skip_internal(self._path)

    def __ne__(self, other: object) -> bool:
        skip_internal(self._path)

    def __hash__(self) -> int:
        return hash(self._path)

    def __bool__(self) -> bool:
        skip_internal(self._path)

    def __iter__(self) -> Any:
        skip_internal(self._path)

    def __getitem__(self, key: Any) -> Any:
        skip_internal(self._path)

    def __enter__(self) -> Any:
        skip_internal(self._path)

    def __exit__(self, *exc: Any) -> None:
        skip_internal(self._path)

    def __repr__(self) -> str:
        return f"<Ray internal {self._path}>"

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        skip_internal(self._path)


class InternalModule(types.ModuleType):
    """A module of Ray's internals: importable, and each name in it is an ``Internal``."""

    def __init__(self, name: str, known: dict[str, Any] | None = None) -> None:
        super().__init__(name)
        self.__path__: list[str] = []  # a package, so its submodules import too
        self.__dict__.update(known or {})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return Internal(f"{self.__name__}.{name}")

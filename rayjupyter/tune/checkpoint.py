"""``Checkpoint``: a directory of files a trial saved, referred to by its path.

As in Ray, a checkpoint is a directory, not an object in memory: the trial writes files,
``report`` copies them under the experiment's storage path, and restoring reads them back.
The storage path must be reachable by every node that runs trials (local disk on one
machine, a shared filesystem across machines), as Ray requires for multi-node runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

_METADATA = ".metadata.json"


class Checkpoint:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str]) -> Checkpoint:
        if not os.path.isdir(path):
            raise ValueError(f"Checkpoint.from_directory: {os.fspath(path)!r} is not a directory")
        return cls(os.path.abspath(path))

    def to_directory(self, path: str | os.PathLike[str] | None = None) -> str:
        """Copy the files to ``path`` (a new temporary directory if None) and return it."""
        target = os.fspath(path) if path is not None else tempfile.mkdtemp(prefix="checkpoint_")
        shutil.copytree(self.path, target, dirs_exist_ok=True)
        return target

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        """The checkpoint as a local directory: its own path (it is local), not a copy."""
        yield self.path

    def get_metadata(self) -> dict[str, Any]:
        try:
            with open(os.path.join(self.path, _METADATA)) as f:
                data: dict[str, Any] = json.load(f)
                return data
        except FileNotFoundError:
            return {}

    def set_metadata(self, metadata: dict[str, Any]) -> None:
        with open(os.path.join(self.path, _METADATA), "w") as f:
            json.dump(metadata, f)

    def update_metadata(self, metadata: dict[str, Any]) -> None:
        self.set_metadata({**self.get_metadata(), **metadata})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Checkpoint) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"Checkpoint(path={self.path!r})"

"""``Checkpoint``: a directory of files, as Ray Train's.

A checkpoint is only a path. The training loop makes one from a local folder
(``Checkpoint.from_directory``) and passes it to ``report``; the session copies its files
into the run's storage (``storage_path/name/checkpoint_XXXXXX``), and the checkpoint that
``get_checkpoint`` and ``Result`` hand back points there. Storage is a local or a shared
folder, so every node of a multi-node run must see ``storage_path`` at the same path.

This is also ``rayjupyter.tune.Checkpoint`` (the very same class, as in Ray), so a
checkpoint a Train run reports is the one a Tune trial keeps and restores from.
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
    """Files in a directory; ``path`` is where they are."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str]) -> Checkpoint:
        """A checkpoint of the files under `path` (read when reported, not now)."""
        return cls(os.path.abspath(os.fspath(path)))

    def to_directory(self, path: str | os.PathLike[str] | None = None) -> str:
        """Copy the files into `path` (a new temporary folder by default) and return it."""
        target = os.fspath(path) if path is not None else tempfile.mkdtemp(prefix="checkpoint_")
        os.makedirs(target, exist_ok=True)
        shutil.copytree(self.path, target, dirs_exist_ok=True)
        return target

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        """The files as a local folder, read-only by contract: storage is a local or shared
        folder here, so no copy is made and nothing is deleted afterwards."""
        yield self.path

    def get_metadata(self) -> dict[str, Any]:
        """The dict stored with the files by ``set_metadata`` ({} if none)."""
        try:
            with open(os.path.join(self.path, _METADATA)) as file:
                data: dict[str, Any] = json.load(file)
                return data
        except FileNotFoundError:
            return {}

    def set_metadata(self, metadata: dict[str, Any]) -> None:
        with open(os.path.join(self.path, _METADATA), "w") as file:
            json.dump(metadata, file)

    def update_metadata(self, metadata: dict[str, Any]) -> None:
        self.set_metadata({**self.get_metadata(), **metadata})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Checkpoint) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"Checkpoint(path={self.path!r})"

"""Writers: one file per block, named ``{unique}_{index}.{ext}`` under the output folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from rayjupyter.data.block import batch_from_table

_EXT = {"parquet": "parquet", "csv": "csv", "json": "json", "numpy": "npy"}


@dataclass
class _Writer:
    kind: str
    path: str
    options: dict[str, Any]

    def __call__(self, table: pa.Table, name: str) -> str:
        os.makedirs(self.path, exist_ok=True)
        out = os.path.join(self.path, f"{name}.{_EXT[self.kind]}")
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, out, **self.options)
        elif self.kind == "csv":
            import pyarrow.csv as pcsv

            pcsv.write_csv(table, out, **self.options)
        elif self.kind == "json":
            frame = batch_from_table(table, "pandas")
            options = {"orient": "records", "lines": True, **self.options}
            frame.to_json(out, **options)
        else:
            import numpy as np

            column = self.options["column"]
            np.save(out, batch_from_table(table.select([column]), "numpy")[column])
        return out


def writer(kind: str, path: str, options: dict[str, Any]) -> Callable[[pa.Table, str], str]:
    return _Writer(kind, os.fspath(path), dict(options))

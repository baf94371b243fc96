"""rayjupyter.data: Ray Data's API on rayjupyter (``import rayjupyter.data as rd``).

Datasets are lazy plans of Arrow blocks; see ``dataset.py`` for the API, ``plan.py`` for the
optimizer, ``executor.py`` and ``operators.py`` for the streaming execution, and
``resources.py`` for back-pressure. pandas is imported only by what needs it.
"""

from __future__ import annotations

from rayjupyter.data.aggregate import AggregateFn, Count, Max, Mean, Min, Std, Sum
from rayjupyter.data.context import DataContext, ExecutionOptions, ExecutionResources
from rayjupyter.data.dataset import Dataset, GroupedData, MaterializedDataset, Schema
from rayjupyter.data.iterator import DataIterator
from rayjupyter.data.read_api import (
    from_arrow,
    from_arrow_refs,
    from_items,
    from_numpy,
    from_numpy_refs,
    from_pandas,
    from_pandas_refs,
    range,
    range_tensor,
    read_binary_files,
    read_csv,
    read_images,
    read_json,
    read_numpy,
    read_parquet,
    read_text,
)

__all__ = [
    "AggregateFn",
    "Count",
    "DataContext",
    "DataIterator",
    "Dataset",
    "ExecutionOptions",
    "ExecutionResources",
    "GroupedData",
    "MaterializedDataset",
    "Max",
    "Mean",
    "Min",
    "Schema",
    "Std",
    "Sum",
    "from_arrow",
    "from_arrow_refs",
    "from_items",
    "from_numpy",
    "from_numpy_refs",
    "from_pandas",
    "from_pandas_refs",
    "range",
    "range_tensor",
    "read_binary_files",
    "read_csv",
    "read_images",
    "read_json",
    "read_numpy",
    "read_parquet",
    "read_text",
]

"""Benchmarks comparing rayjupyter with Ray, Dask and multiprocessing: ``python -m benchmarks``.

Kept import-light on purpose: workers import ``benchmarks.tasks`` and must not pay for the runner.
"""

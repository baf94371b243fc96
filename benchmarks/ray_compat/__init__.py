"""Ray's own test files as the yardstick: run them against rayjupyter and against Ray.

``python -m benchmarks.ray_compat --tests DIR`` runs each file of Ray's tests in DIR twice:
once with ``import ray`` shimmed to rayjupyter (``shim/ray``), once on the installed Ray,
with the same fixtures of our own (``plugin.py``), and prints passed/failed/skipped side by
side. Ray's files are never copied into this repository; the folder is given at run time.
"""

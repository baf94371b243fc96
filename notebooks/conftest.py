"""The notebooks that need an optional package run only where it is installed: torch is
the `train` extra, which CI does not install (see pyproject.toml)."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("torch") else ["train_lenet.ipynb"]

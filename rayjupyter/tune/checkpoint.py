"""``Checkpoint``: Tune's is Train's (``rayjupyter.tune.Checkpoint is
rayjupyter.train.Checkpoint``, as in Ray), a directory of files referred to by its path.

A trial writes files, ``report`` copies them under the trial's directory, and restoring
reads them back. The storage path must be reachable by every node that runs trials.
"""

from rayjupyter.train._checkpoint import Checkpoint

__all__ = ["Checkpoint"]

"""``python -m rayjupyter``: the same as the ``rayjupyter`` command."""

import sys

from rayjupyter.cli import main

sys.exit(main())

"""``python -m benchmarks.ray_compat --tests DIR [FILE ...]``"""

import sys

from benchmarks.ray_compat.runner import main

sys.exit(main())

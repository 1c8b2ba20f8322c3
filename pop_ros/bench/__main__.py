"""`python -m pop_ros.bench`: pop-bench."""

import sys

from pop_ros.bench.cli import main

sys.exit(main())

"""``python -m scratch_diffusion.metrics``."""

import sys

from scratch_diffusion.metrics.cli import main

sys.exit(main())

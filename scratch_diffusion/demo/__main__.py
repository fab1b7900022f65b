"""``python -m scratch_diffusion.demo`` (``make demo``)."""

import sys

from scratch_diffusion.demo.cli import main

sys.exit(main())

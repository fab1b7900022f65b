"""``python -m scratch_diffusion.likelihood PATH``: see :mod:`scratch_diffusion.likelihood.cli`."""

import sys

from .cli import main

sys.exit(main())

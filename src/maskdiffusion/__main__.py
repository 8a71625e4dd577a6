"""``python -m maskdiffusion``: the command line."""

import sys

from maskdiffusion.cli import main

sys.exit(main())

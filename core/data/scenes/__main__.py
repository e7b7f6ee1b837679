"""``python -m core.data.scenes``: see ``core.data.scenes.cli``."""

import sys

from core.data.scenes.cli import main

sys.exit(main())

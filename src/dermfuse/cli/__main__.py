"""``python -m dermfuse.cli`` (as before the CLI became a package)."""

import sys

from . import main

sys.exit(main())

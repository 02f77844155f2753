"""``python -m dermfuse`` (and ``torchrun -m dermfuse train …``)."""

import sys

from .cli import main

sys.exit(main())

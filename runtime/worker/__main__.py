"""``python -m runtime.worker SCRIPT ...``: see ``runtime.worker``."""

import sys

from runtime.worker import main

sys.exit(main())

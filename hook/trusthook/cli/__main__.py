"""``python -m trusthook.cli``: the ``trusthook`` command."""

import sys

from trusthook.cli import main

sys.exit(main())

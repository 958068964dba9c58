"""``python -m service`` is the ``collector`` command."""

import sys

from service.cli import main

sys.exit(main())

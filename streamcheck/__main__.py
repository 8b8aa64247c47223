"""``python -m streamcheck``: the same as the ``streamcheck`` command."""

import sys

from streamcheck.cli.main import main

sys.exit(main())

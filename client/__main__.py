"""``python -m client``: the ``morag`` command."""

import sys

from client.cli import main

sys.exit(main())

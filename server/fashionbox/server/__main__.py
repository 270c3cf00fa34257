"""``python -m fashionbox.server``: the launcher alone (what ``fashionbox serve`` runs)."""

import sys

from fashionbox.server.cli import main

sys.exit(main())

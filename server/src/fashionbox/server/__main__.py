"""``python -m fashionbox.server``: the launcher alone (what ``fashionbox serve`` runs)."""

import sys

from fashionbox.server import _main

sys.exit(_main())

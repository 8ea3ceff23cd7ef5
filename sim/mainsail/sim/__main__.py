"""``python -m mainsail.sim``: the simulator's command line (same as ``mainsail sim``)."""

from __future__ import annotations

import sys

from mainsail.sim.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

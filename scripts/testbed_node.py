#!/usr/bin/env python3
"""Bring up the test bed's single-node Kubernetes by hand (as root); see docs/testbed.md.

    scripts/testbed_node.py up [--kuberay] [--image TAR ...]   # prints how to reach it; Ctrl-C ends
    scripts/testbed_node.py prepare                            # build binaries and small images
    scripts/testbed_node.py cleanup                            # remove instances of dead owners

A launcher for tests/support/node.py, which the cluster test tier uses.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.node import main

if __name__ == "__main__":
    sys.exit(main())

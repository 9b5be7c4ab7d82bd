#!/usr/bin/env python3
"""Run N real `flava-node` processes on 127.0.0.1 over a speaker-partitioned corpus.

The harness lives in the package (``flava_p2p/testing/cluster.py``, type-checked with it);
this is its command line:

    .venv/bin/python scripts/local_cluster.py --corpus data/synth --nodes 4 --seconds 60
"""

from __future__ import annotations

import sys

from flava_p2p.testing.cluster import main

if __name__ == "__main__":
    sys.exit(main())

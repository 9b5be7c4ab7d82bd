"""``flava-sim``: research tooling — corpora, centralized baselines, simulations."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flava_p2p.cli import sim_commands
from flava_p2p.cli.common import HelpFormatter, add_logging_args, run_cli

DESCRIPTION = """\
Research tooling for FLAVA-P2P: build the synthetic speech corpus, train centralized
keyword-spotting baselines (with or without DP-SGD), and run simulations.
"""

EPILOG = """\
examples:
  flava-sim dataset synth --out data/synth            voice a Speech Commands-style corpus
  flava-sim centralized --data data/synth --json      non-private centralized baseline
  flava-sim centralized --data data/synth --dp-epsilon 8
  flava-sim run configs/sim_demo.yaml                 16 DP nodes, 2 Byzantine, plots
  flava-sim sweep simulations/privacy_sweep.yaml      ε ∈ {1, 3, 8, ∞} on both cores
  flava-sim report runs/a runs/b --out runs/cmp       compare finished runs
"""


def build_parser() -> argparse.ArgumentParser:
    """The full ``flava-sim`` argument parser (also used to render --help)."""
    parser = argparse.ArgumentParser(
        prog="flava-sim", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    add_logging_args(parser, top_level=True)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    sim_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flava-sim`` console script."""
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

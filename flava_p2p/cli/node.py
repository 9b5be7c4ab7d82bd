"""``flava-node``: run and manage one FLAVA-P2P node on this device."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import yaml

from flava_p2p.cli.common import HelpFormatter, add_logging_args, run_cli
from flava_p2p.config import NodeConfig, load_config

DESCRIPTION = """\
Run one FLAVA-P2P node: it learns a keyword-spotting model from this device's own audio with
example-level differential privacy (DP-SGD) and gossips noised model deltas with peers.
Raw audio, features and labels never leave the device.
"""

EPILOG = """\
examples:
  flava-node config check configs/node.yaml      validate a config file
  flava-node config show                         print every setting with its default
"""


def build_parser() -> argparse.ArgumentParser:
    """The full ``flava-node`` argument parser (also used to render --help)."""
    parser = argparse.ArgumentParser(
        prog="flava-node", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    add_logging_args(parser, top_level=True)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    config = sub.add_parser(
        "config", help="validate or print node configuration", formatter_class=HelpFormatter
    )
    add_logging_args(config, top_level=False)
    config_sub = config.add_subparsers(title="config commands", metavar="ACTION")
    check = config_sub.add_parser(
        "check",
        help="validate a node.yaml and report every problem with its field path",
        formatter_class=HelpFormatter,
    )
    check.add_argument("file", help="path to a node YAML config")
    check.add_argument("--json", action="store_true", help="print the resolved config as JSON")
    add_logging_args(check, top_level=False)
    check.set_defaults(func=_cmd_config_check)
    show = config_sub.add_parser(
        "show", help="print the default configuration as YAML", formatter_class=HelpFormatter
    )
    add_logging_args(show, top_level=False)
    show.set_defaults(func=_cmd_config_show)
    return parser


def _cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.file, NodeConfig)
    if args.json:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    else:
        print(f"{args.file}: OK")
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    yaml.safe_dump(NodeConfig().model_dump(mode="json"), sys.stdout, sort_keys=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flava-node`` console script."""
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

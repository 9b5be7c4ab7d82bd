"""Pieces shared by both CLIs: logging flags, clean error reporting."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence

from flava_p2p.errors import FlavaError
from flava_p2p.runtime.logs import configure_logging

EXIT_USER_ERROR = 2


def add_logging_args(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """Add ``--log-format``/``--log-level``; accepted before or after the subcommand.

    The top-level parser holds the defaults; subcommand copies use SUPPRESS so that they only
    override when given (argparse would otherwise reset a value given before the subcommand).
    """
    group = parser.add_argument_group("logging")
    group.add_argument(
        "--log-format",
        choices=["console", "json"],
        default="console" if top_level else argparse.SUPPRESS,
        help="console: readable lines; json: one JSON object per line (default: console)",
    )
    group.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info" if top_level else argparse.SUPPRESS,
        help="minimum level written to stderr (default: info)",
    )


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps hand-wrapped descriptions and epilogs (the examples) as written."""


def quiet_known_warnings() -> None:
    """Hide third-party warnings that are expected and harmless, so users see only real issues."""
    for message in (
        "Full backward hook is firing",  # Opacus hooks on the first conv's input (no grad)
        "Secure RNG turned off",  # nodes seed DP noise from OS entropy themselves
        "Optimal order is the",  # RDP accountant at the edge of its order grid
    ):
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv``, configure logging, dispatch to ``args.func``; user errors exit 2 cleanly."""
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USER_ERROR
    configure_logging(args.log_format, args.log_level)
    quiet_known_warnings()
    try:
        return func(args)
    except FlavaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

"""Subcommands of ``flava-sim``; each imports its heavy dependencies only when it runs."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add every ``flava-sim`` subcommand to the subparsers action ``sub``."""
    _ = argparse  # subcommands are added by the learning stack
    _ = sub

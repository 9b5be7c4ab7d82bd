"""structlog configuration, done once per process by the CLI entry points."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["console", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]


def configure_logging(fmt: LogFormat = "console", level: LogLevel = "info") -> None:
    """Route structlog (and stdlib logging from libraries) to stderr as console text or JSON."""
    numeric = getattr(logging, level.upper())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # Look sys.stderr up per logger, not once: it may be replaced (pytest, daemons).
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    # Libraries using stdlib logging (opacus, aiohttp) follow the same level, on stderr.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, force=True)


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    return structlog.PrintLogger(file=sys.stderr)

"""structlog configuration, done once per process by the CLI entry points.

One pipeline for everything: structlog's own events and the stdlib ``logging`` records of
libraries (opacus, aiohttp, asyncio, onnxruntime's Python side) go through the same processors
(structlog's ``ProcessorFormatter``), so a log shipper sees one format — console lines for
people, one JSON object per line for machines — with the same context fields, e.g. the node's
``peer_id`` bound once at start (:func:`bind_node`).
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["console", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (pytest and daemons replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


_configured: tuple[LogFormat, LogLevel] = ("console", "info")


def logging_settings() -> tuple[LogFormat, LogLevel]:
    """The format and level of the last :func:`configure_logging` (for child processes)."""
    return _configured


def configure_logging(fmt: LogFormat = "console", level: LogLevel = "info") -> None:
    """Route structlog events and stdlib log records to stderr as console text or JSON."""
    global _configured  # noqa: PLW0603 (one configuration per process, by design)
    _configured = (fmt, level)
    numeric = getattr(logging, level.upper())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        # Records from plain stdlib loggers get the same fields before rendering.
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([structlog.processors.format_exc_info] if fmt == "json" else []),
            renderer,
        ],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    # Third-party chatter below WARNING stays out unless the user asks for debug.
    for noisy in ("aiohttp.access", "asyncio", "opacus", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)


def bind_node(peer_id: str) -> None:
    """Put the node's PeerID into every later log line of this process (and its tasks)."""
    structlog.contextvars.bind_contextvars(peer_id=peer_id)

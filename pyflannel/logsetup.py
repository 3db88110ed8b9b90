"""Logging: structlog rendering for every record, ours and the libraries'.

Text for people (``--log-format=text``, the default, coloured on a terminal) and one
JSON object per line for journald or a log shipper (``--log-format=json``). ``-v``
(glog's verbosity flag) above 0 turns on DEBUG. Records from asyncio pass through the
same processors; its debug chatter only shows from ``-v=5`` on.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def setup_logging(*, verbosity: int = 0, fmt: str = "auto", stream: Any = None) -> None:
    """Route all logging to ``stream`` (stderr) in the chosen format."""
    out = stream or sys.stderr
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        colors = fmt == "auto" and hasattr(out, "isatty") and out.isatty()
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
    logging.getLogger("asyncio").setLevel(logging.DEBUG if verbosity >= 5 else logging.WARNING)

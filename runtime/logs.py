"""structlog set-up: readable console lines by default, JSON lines when asked
(``CHAINS_LOG_JSON=1`` or ``--log-json``). Loggers are bound to session and node."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO, cast

import structlog

_configured = False


class _CurrentStderr:
    """Whatever sys.stderr is at write time (test runners swap it)."""

    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(json: bool | None = None, level: str | None = None) -> None:
    global _configured
    if json is None:
        json = os.environ.get("CHAINS_LOG_JSON", "") not in ("", "0", "false")
    lvl = getattr(logging, (level or os.environ.get("CHAINS_LOG_LEVEL", "WARNING")).upper(), logging.WARNING)
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(**bind: Any) -> Any:
    if not _configured:
        configure()
    return structlog.get_logger("chains").bind(**bind)

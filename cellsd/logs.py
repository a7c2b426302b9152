"""Log observers for the daemon: readable text, or JSON lines."""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


def make_observer(fmt: str = "text", level: str = "info", file: str | None = None) -> ILogObserver:
    """An observer writing ``fmt`` ("text" or "json") at ``level`` and above
    to ``file`` (standard output when None). JSON records are RFC 7464
    (each prefixed with ``\\x1e``), one per line, with every event field
    (``uuid=``, ``cell=``, ``method=`` …) kept as a key."""
    stream: IO[Any] = sys.stdout if file in (None, "-") else open(file, "a")  # noqa: SIM115
    observer = jsonFileLogObserver(stream) if fmt == "json" else textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS.get(level, LogLevel.info))
    return FilteringLogObserver(observer, [predicate])

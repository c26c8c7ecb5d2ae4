"""Log lines for people, through the standard `logging` module.

Every module logs to its own logger (`logging.getLogger(__name__)`, all under "moescale"); nothing
passes `print` around. The CLI shows INFO and above on stdout as plain lines (warnings and errors
prefixed so they stand out); the trainer also appends every line, timestamped, to its run's
`train.log`. A library user sees nothing below WARNING unless they configure logging themselves.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = "moescale"


class _Plain(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        if record.levelno >= logging.ERROR:
            return f"error: {msg}"
        if record.levelno >= logging.WARNING:
            return f"warning: {msg}"
        return msg


def configure_console(level: int = logging.INFO) -> None:
    """Send moescale's log lines to stdout (one handler per process; later calls change the
    level and point it at the sys.stdout of the moment: a later command's redirect or test
    capture, never a stream closed since, which `logs_to_stderr` would fail to flush)."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(level)
    console = [h for h in logger.handlers if getattr(h, "_moescale_console", False)]
    for h in console:
        h.stream = sys.stdout  # type: ignore[attr-defined]  # not setStream: it flushes the old
    if not console:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(_Plain("%(message)s"))
        handler._moescale_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


@contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Append moescale's log lines (INFO and above, timestamped) to `path` while inside."""
    logger = logging.getLogger(ROOT)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(previous)

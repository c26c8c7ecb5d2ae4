"""Numbers for humans: one formatter for every command, log line and table."""

from __future__ import annotations

import math


def human(n: float) -> str:
    """1234567 -> '1.23M' (three significant digits, SI suffix)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def duration(seconds: float) -> str:
    """7300 -> '2h01m', 192 -> '3m12s', 'nan' -> '?'."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def sig(v: float | int | None, digits: int = 6) -> str:
    """A value to `digits` significant digits; '-' for a missing or non-finite one."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}g}"


def count(v: float) -> str:
    """Integers with thousands separators below 1e7, scientific above: '123,456', '1.235e+09'."""
    return f"{v:,.0f}" if abs(v) < 1e7 else f"{v:.4g}"


def plural(n: int, word: str, words: str | None = None) -> str:
    """'1 row', '2 rows'."""
    return f"{n} {word if n == 1 else (words or word + 's')}"

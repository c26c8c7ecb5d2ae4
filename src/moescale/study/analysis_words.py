"""How the study's claims, headline and report write numbers and architectures: one place, so
that a sentence in study.json, on the console and in the report reads the same.

Input is the analysis after `jsonable` (non-finite numbers are None)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

NAMES = {"dense": "dense", "moe": "standard MoE", "fine-grained": "fine-grained MoE"}


def display(key: str) -> str:
    """An architecture's name for a sentence: a variant, or a hyper-law key such as
    'moe E8 k2 G1' ('standard MoE (E 8, k 2)')."""
    if key in NAMES:
        return NAMES[key]
    parts = key.split(" ")
    if len(parts) == 4:
        e, k, gr = (p[1:] for p in parts[1:])
        gtxt = f", G {gr}" if gr != "1" else ""
        return f"{NAMES.get(parts[0], parts[0])} (E {e}, k {k}{gtxt})"
    return key


def cap(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def g(v: Any, digits: int = 3) -> str:
    """A number to `digits` significant digits ('?' when missing)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "?"
    return f"{v:.{digits}g}"


def iv(t: Sequence[Any] | None, digits: int = 3) -> str:
    """'v [lo, hi]' of a [value, lo, hi] triple; 'v (no interval)' without bounds."""
    if not t:
        return "?"
    if len(t) < 3 or t[1] is None or t[2] is None:
        return f"{g(t[0], digits)} (no interval)"
    return f"{g(t[0], digits)} [{g(t[1], digits)}, {g(t[2], digits)}]"


def sign(t: Sequence[Any] | None) -> int | None:
    """+1 / −1 when the interval excludes zero on that side, 0 when it includes zero, None
    without an interval."""
    if not t or len(t) < 3 or t[1] is None or t[2] is None:
        return None
    return 1 if t[1] > 0 else -1 if t[2] < 0 else 0


def skipped(section: Any) -> bool:
    return not section or (isinstance(section, Mapping) and "skipped" in section)


def design_label(d: Mapping[str, Any]) -> str:
    """A matched design (its experts and granularity) in words: "E 8" or "E 8, G 4"."""
    return f"E {g(d['experts'])}" + (f", G {g(d['granularity'])}" if d["granularity"] > 1 else "")

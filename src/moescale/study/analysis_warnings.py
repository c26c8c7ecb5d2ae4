"""Study analysis, part 7: the warnings of an analysis, each with the section it came from.

Why apart from the claims: a claim states what the data support; a warning says where a number
rests on less than it seems (an extrapolated plan, a fit with too few points, an optimum outside
the trained runs, a comparison that the shared hyperparameters could decide).

Input is the analysis after `jsonable` (non-finite numbers are None).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from moescale.study.analysis_claims import best_swept
from moescale.study.analysis_words import NAMES, g, skipped


def _range_warnings(v: str, plans: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The plans' "beyond the fitted compute" warnings of one architecture as one line."""
    far = []
    for p in plans:
        m = re.search(r"lies ([0-9.]+) decades (beyond|below)", " ".join(p.get("warnings", [])))
        if m:
            far.append(f"{g(p['budget'])} ({m.group(1)} decades {m.group(2)})")
    if not far:
        return []
    return [{"section": f"plans/{v}", "code": "extrapolation",
             "message": f"the {NAMES[v]} plans at {', '.join(far)} lie outside the compute the "
             "fit saw: they rest on the law's form alone"}]  # fmt: skip


def collect_warnings(a: Mapping[str, Any]) -> list[dict[str, str]]:
    """Every warning of the laws engine and of the selection, with the section it came from,
    each once (a plan's copies of its fit's warnings are not repeated)."""
    out: list[dict[str, str]] = []
    for note in a["data"]["notes"]:
        out.append({"section": "data", "code": "selection", "message": note})
    for v, sec in a["laws"].items():
        if skipped(sec):
            continue
        for law, f in sec["laws"].items():
            for w in f.get("warnings", []):
                out.append({"section": f"laws/{v}/{law}", **w})
        out += [{"section": f"laws/{v}", "code": "identification", "message": n}
                for n in sec.get("notes", [])]  # fmt: skip
        if "skipped" in sec["family"]:
            out.append({"section": f"laws/{v}", "code": "no_family",
                        "message": f"no model family read from the runs: "
                        f"{sec['family']['skipped']}"})  # fmt: skip
    for v, sec in a["isoflop"].items():
        for w in [] if skipped(sec) else sec.get("warnings", []):
            out.append({"section": f"isoflop/{v}", **w})
    for v in NAMES:
        plans = a["plans"].get(v)
        if skipped(plans):
            continue
        out += _range_warnings(v, [p for p in plans if not skipped(p)])
        for p in plans:
            for w in p.get("warnings", []):
                if not w.startswith(("--fit: ", "--compare: ")):
                    out.append({"section": f"plans/{v}", "code": "plan", "message": w})
    rows = a["equal_compute"]["fits"]
    for r in [] if skipped(rows) else rows[:1]:  # the compute every architecture's data spans
        for v, far in r.get("outside_data", {}).items():
            out.append({"section": f"equal_compute/{v}", "code": "optimum_outside_data",
                        "message": f"at {g(r['compute'])} FLOPs, within the data, the "
                        f"{NAMES[v]} law puts its optimum outside the trained runs ({far}): "
                        "the fitted comparison there is extrapolation; the matched pairs "
                        "are measured"})  # fmt: skip
        for key, laws in r.get("law_sensitivity", {}).items():
            v, (law, gap), (_, alt) = key.split("_vs_")[0], *laws.items()
            out.append({"section": f"equal_compute/{v}", "code": "law_sensitivity",
                        "message": f"at {g(r['compute'])} FLOPs the fitted {NAMES[v]} minus "
                        f"dense gap is {gap[0]:.3g} with the {law} law and {alt[0]:.3g} with "
                        "Chinchilla on its own points, intervals apart: the law decides it, "
                        "not the data"})  # fmt: skip
    if not skipped(a["hyper"]):
        out += [{"section": "hyper", "code": "note", "message": n} for n in a["hyper"]["notes"]]
        out += [{"section": "hyper", "code": "shared_hyperparameters", "message": m}
                for m in best_swept(a) if "reverses (resolved" in m]  # fmt: skip
    seen, uniq = set(), []
    for w in out:
        key = (w["section"], w.get("message"))
        if key not in seen:
            seen.add(key)
            uniq.append(w)
    return uniq

"""Study analysis, part 5: batch size, learning rate and the gradient noise scale.

Why (docs/science.md §4–5): Wang et al. (2024) find that at equal loss MoE prefers a smaller
batch and a larger learning rate than dense, and tie it to a lower gradient noise scale. The
study's hyperparameter axes (results rows with `hyper` = "batch_size" or "lr": runs whose batch
or LR differs from the ladder's base at one size) are read two ways by the laws engine:

- `curve_laws`: from the training curves (Wang et al.'s heatmaps): B_opt(L) and η_opt(L);
  only constant-LR and WSD runs qualify (a cosine run's loss halfway depends on its length);
- `fit_hyper_laws`: the near-optimal band of final losses, per (arch, N, D) cell.

The heatmaps (training loss over (batch, tokens) and (LR, tokens) with the optimum line) are the
engine's `heatmap` on each run's smoothed curve resampled to one token grid. A value at a common
loss L* comes from a log-log fit centred on L* (`fit_loglinear` on L/L*), so its coefficient
*is* the value at L* and its bootstrap interval is that value's interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from moescale.errors import UserError
from moescale.laws import batch_heatmap, curve_laws, fit_hyper_laws, fit_loglinear, lr_heatmap
from moescale.laws.hyper import GOOD_SCHEDULES, arch_keys
from moescale.study.analysis_compare import Z95
from moescale.study.analysis_data import (
    Curve,
    num,
    seed_point,
    skipped,
    text,
    usable,
    variant_of,
)

AXES = {"batch_size": "batch", "lr": "lr"}
HEAT_ROWS = 24


def at_common(x: np.ndarray, y: np.ndarray, x_star: float, bootstrap: int,
              seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """y = c·(x/x*)^e by OLS in log space: c is y at x*, with its bootstrap interval."""
    law = fit_loglinear({"x": np.asarray(x, float) / x_star}, np.asarray(y, float),
                        bootstrap=bootstrap, seed=seed)  # fmt: skip
    return {
        "at": x_star,
        "value": law.coef,
        "interval": law.intervals.get("coef"),
        "exponent": law.exponent,
        "exponent_interval": law.intervals.get("x"),
        "n": law.n,
    }


def common_level(ranges: Sequence[tuple[float, float]]) -> tuple[float, bool]:
    """A loss inside every range (the geometric middle of their overlap), and whether one
    exists; without an overlap, the middle of all of them (an extrapolation)."""
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    if lo <= hi:
        return math.sqrt(lo * hi), True
    return math.sqrt(min(r[0] for r in ranges) * max(r[1] for r in ranges)), False


def _sweeps(results: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[str]]:
    """The hyperparameter-axis runs and the ladder runs at their base (same variant, E, G, k
    and N_active; the longest of each), with notes on what was left out."""
    ok = [r for r in results if usable(r)]
    hyp = [r for r in ok if text(r.get("hyper"))]

    def key(r: Mapping[str, Any]) -> tuple[Any, ...]:
        return (variant_of(r), *(round(num(r.get(k)), 3) for k in
                ("experts", "granularity", "top_k", "params_active")))  # fmt: skip

    keys = {key(r) for r in hyp}
    base: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    for r in ok:
        if not text(r.get("hyper")) and key(r) in keys:
            if key(r) not in base or num(r.get("tokens")) > num(base[key(r)].get("tokens")):
                base[key(r)] = r
    return hyp + list(base.values()), [
        f"{len(keys) - len(base)} swept configuration(s) have no ladder run at their base"
    ] if len(base) < len(keys) else []


def _arch_names(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The laws engine's architecture key of each row ('dense', 'moe E8 k2 G1', ...), from the
    row's variant: the names the heatmaps, the laws and the comparisons here share."""
    if not rows:
        return np.array([])
    table = {k: np.array([variant_of(r) if k == "arch" else num(r.get(k)) for r in rows])
             for k in ("arch", "experts", "top_k", "granularity")}  # fmt: skip
    return arch_keys(table, len(rows))


def _curve_table(rows: Sequence[Mapping[str, Any]], curves: Mapping[str, Curve]
                 ) -> dict[str, np.ndarray]:  # fmt: skip
    """The long table `curve_laws` reads: one row per logged step of every run given."""
    cols: dict[str, list[Any]] = {k: [] for k in (
        "run", "arch", "experts", "granularity", "top_k", "params_active", "batch_size",
        "batch_tokens", "lr", "schedule", "tokens", "loss")}  # fmt: skip
    for r in rows:
        c = curves.get(text(r.get("run")))
        if c is None:
            continue
        m = len(c.tokens)
        for k in ("experts", "granularity", "top_k", "params_active", "batch_size",
                  "batch_tokens", "lr"):  # fmt: skip
            cols[k] += [num(r.get(k))] * m
        cols["run"] += [text(r.get("run"))] * m
        cols["arch"] += [variant_of(r)] * m
        cols["schedule"] += [text(r.get("schedule")) or "constant"] * m
        cols["tokens"] += list(c.tokens)
        cols["loss"] += list(c.loss)
    return {k: np.array(v) for k, v in cols.items()}


def _heatmaps(rows: Sequence[Mapping[str, Any]], curves: Mapping[str, Curve]) -> list[dict]:
    """Per architecture, size and axis: the loss over (value, tokens) and its optimum line."""
    names = _arch_names(rows)
    out = []
    for axis in AXES:
        other = "lr" if axis == "batch_size" else "batch_size"
        groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
        for r, name in zip(rows, names, strict=True):
            if text(r.get("hyper")) in (axis, "") and text(r.get("run")) in curves:
                groups.setdefault((str(name), round(num(r.get("params_active")), -2)), []).append(r)
        for (name, size), grp in sorted(groups.items()):
            base_other = [num(r.get(other)) for r in grp if not text(r.get("hyper"))]
            grp = [r for r in grp if not base_other or
                   math.isclose(num(r.get(other)), base_other[0], rel_tol=0.05)]  # fmt: skip
            if len({num(r.get(axis)) for r in grp}) < 2:
                continue
            cs = [curves[text(r.get("run"))] for r in grp]
            lo = min(c.tokens[0] for c in cs)
            # up to the longest swept run (a longer base run would fill rows alone), from 3 %
            # of it (past the first steps, whose losses would swamp the colour scale)
            end = max(c.tokens[-1] for c, r in zip(cs, grp, strict=True) if text(r.get("hyper")))
            grid = np.geomspace(max(lo, 0.03 * end), end, HEAT_ROWS)
            vals, toks, loss = [], [], []
            for r, c in zip(grp, cs, strict=True):
                sm = c.smooth()
                lg = np.log(grid)
                inside = (lg >= math.log(c.tokens[0])) & (lg <= math.log(c.tokens[-1]) + 1e-9)
                vals += [num(r.get(axis))] * int(inside.sum())
                toks += list(grid[inside])
                loss += list(np.interp(lg[inside], np.log(c.tokens), sm))
            make = batch_heatmap if axis == "batch_size" else lr_heatmap
            hm = make(np.array(vals), np.array(toks), np.array(loss))
            out.append(
                {
                    "arch": name,
                    "variant": name.split(" ")[0],
                    "n_active": size,
                    "axis": axis,
                    "values": hm.values,
                    "tokens": hm.tokens,
                    "grid": hm.grid,
                    "best": hm.best,
                    "runs": len(grp),
                    "unit": "sequences" if axis == "batch_size" else "peak LR",
                }
            )
    return out


def hyper_section(results: Sequence[Mapping[str, Any]], curves: Mapping[str, Curve],
                  bootstrap: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """Hyperparameter laws and heatmaps (module doc), or why the study has none."""
    rows, notes = _sweeps(results)
    axes = sorted({text(r.get("hyper")) for r in rows if text(r.get("hyper"))})
    if not axes:
        return skipped(
            "the study has no hyperparameter axes (no result rows with hyper = "
            "'batch_size' or 'lr'), so no B_opt or η_opt law can be fitted"
        )
    good = [r for r in rows if (text(r.get("schedule")) or "constant") in GOOD_SCHEDULES]
    out: dict[str, Any] = {
        "axes": axes,
        "runs": len(rows),
        "batch_unit": "sequences",
        "notes": notes,
    }
    if len(good) < len(rows):
        out["notes"].append(f"{len(rows) - len(good)} swept run(s) use a cosine schedule: left "
                            "out of the curve laws and heatmaps (their mid-run loss depends on "
                            "their length)")  # fmt: skip
    out["curve_laws"] = _curve_laws(good, curves, bootstrap, seed)
    out["band_laws"] = _band_laws(rows, bootstrap, seed)
    out["heatmaps"] = _heatmaps(good, curves)
    out["at_common_loss"] = _hyper_at_common(out["curve_laws"], bootstrap, seed)
    out["at_best_swept"] = at_best_swept(results)
    return out


def at_best_swept(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Where the sweep ran (one size, one token count): every architecture at the study's
    shared base batch size and LR, and each at the best of its swept points.

    Why: the ladder trains all architectures with one batch size and LR, and their optima
    differ (Wang et al. 2024), so an equal-compute comparison at the base may measure how well
    the base suits each. If the order of the architectures holds at each one's best swept
    point, the shared base did not make it. Seeds of one setting count at their mean."""
    ok = [r for r in results if usable(r)]

    def cell(r: Mapping[str, Any]) -> tuple[float, float, float]:
        return num(r.get("n_layers")), num(r.get("d_model")), num(r.get("tokens"))

    swept = {cell(r) for r in ok if text(r.get("hyper"))}
    rows = [r for r in ok if cell(r) in swept]
    by: dict[tuple[float, ...], dict[str, dict[tuple[Any, ...], list]]] = {}
    for r, arch in zip(rows, _arch_names(rows), strict=True):
        setting = (text(r.get("hyper")), num(r.get("batch_size")), num(r.get("lr")))
        by.setdefault(cell(r), {}).setdefault(str(arch), {}).setdefault(setting, []).append(r)
    cells = []
    for (layers, d_model, tokens), archs in sorted(by.items()):
        entry = {}
        for arch, settings in sorted(archs.items()):
            pts = {s: seed_point(runs) for s, runs in settings.items()}
            base = [s for s in pts if not s[0]]
            if base and len(pts) > 1:
                best = min(pts, key=lambda s: pts[s].loss)
                entry[arch] = {k: {"axis": s[0] or "base", "batch_size": s[1], "lr": s[2],
                                   "loss": pts[s].loss, "se": pts[s].loss_se}
                               for k, s in (("base", base[0]), ("best", best))}  # fmt: skip
        if len(entry) > 1:
            order = {k: sorted(entry, key=lambda a: entry[a][k]["loss"]) for k in ("base", "best")}
            cells.append({"n_layers": layers, "d_model": d_model, "tokens": tokens,
                          "archs": entry, "order_base": order["base"],
                          "order_best": order["best"], "reversed": _reversed(entry)})  # fmt: skip
    if not cells:
        return skipped("no swept size has two architectures with both base and swept runs")
    return {"cells": cells}


def _reversed(entry: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """Pairs of architectures whose difference is resolved (95 %, independent errors) at the
    base and at the best swept points, with opposite signs: an order the shared base made."""

    def side(a: str, b: str, k: str) -> int:
        x, y = entry[a][k], entry[b][k]
        diff, se = y["loss"] - x["loss"], math.hypot(x["se"], y["se"])
        return 0 if not math.isfinite(se) or abs(diff) <= Z95 * se else 1 if diff > 0 else -1

    names = sorted(entry)
    return [
        [a, b]
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if side(a, b, "base") * side(a, b, "best") < 0
    ]


def _curve_laws(rows: Sequence[Mapping[str, Any]], curves: Mapping[str, Curve], bootstrap: int,
                seed: int) -> dict[str, Any]:  # fmt: skip
    table = _curve_table(rows, curves)
    if not len(table["run"]):
        return skipped("no constant-LR or WSD swept run has a training curve")
    try:
        laws = curve_laws(table, bootstrap=bootstrap, seed=seed)
    except UserError as exc:
        return skipped(str(exc))
    return {k: v.to_json() for k, v in laws.items()}


def _band_laws(rows: Sequence[Mapping[str, Any]], bootstrap: int, seed: int) -> dict[str, Any]:
    get = {
        k: np.array([num(r.get(k)) for r in rows])
        for k in ("params_active", "tokens", "flops_simple", "batch_size", "lr", "val_loss")
    }
    try:
        laws = fit_hyper_laws(
            _arch_names(rows),
            get["params_active"],
            get["tokens"],
            get["batch_size"],
            get["lr"],
            get["val_loss"],
            compute=get["flops_simple"],
            bootstrap=bootstrap,
            seed=seed,
        )
    except UserError as exc:
        return skipped(str(exc))
    return {k: v.to_json() for k, v in laws.items()}


def _hyper_at_common(laws: Mapping[str, Any], bootstrap: int, seed: int) -> dict[str, Any]:
    """B_opt and η_opt of every architecture at one common loss, from its interior optima."""
    if "skipped" in laws:
        return skipped("no curve laws")
    out: dict[str, Any] = {}
    for hyper in ("batch", "lr"):
        pts = {a: [p for p in v.get("points", []) if p["hyper"] == hyper and not p["edge"]]
               for a, v in laws.items()}  # fmt: skip
        pts = {a: p for a, p in pts.items() if len({q["loss"] for q in p}) >= 3}
        if not pts:
            out[hyper] = skipped(f"no architecture has 3 interior {hyper} optima")
            continue
        level, inside = common_level([(min(q["loss"] for q in p), max(q["loss"] for q in p))
                                      for p in pts.values()])  # fmt: skip
        out[hyper] = {"loss": level, "inside_every_range": inside, "archs": {
            a: at_common(np.array([q["loss"] for q in p]), np.array([q["value"] for q in p]),
                         level, bootstrap, seed) for a, p in pts.items()}}  # fmt: skip
    return out


def noise_section(results: Sequence[Mapping[str, Any]], curves: Mapping[str, Curve],
                  bootstrap: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """B_simple (tokens) against the loss of its window, per architecture, and every
    architecture's B_simple at one common loss (log-log fit centred there)."""
    by: dict[str, list[tuple[float, float, str]]] = {}
    for r in results:
        b, loss = num(r.get("noise_scale")), num(r.get("noise_scale_loss"))
        if usable(r) and b > 0 and loss > 0:
            by.setdefault(variant_of(r), []).append((loss, b, text(r.get("run"))))
    fit = {v: p for v, p in by.items() if len({q[0] for q in p}) >= 2}
    if not fit:
        return skipped("no architecture has noise-scale estimates (noise_scale and "
                       "noise_scale_loss) at two or more losses; train with "
                       "train.noise_scale: true and 2+ micro-batches per step")  # fmt: skip
    level, inside = common_level([(min(q[0] for q in p), max(q[0] for q in p))
                                  for p in fit.values()])  # fmt: skip
    archs = {}
    for j, (v, p) in enumerate(sorted(fit.items())):
        arr = np.array([(q[0], q[1]) for q in p])
        archs[v] = {
            "loss": arr[:, 0],
            "noise_scale": arr[:, 1],
            "runs": [q[2] for q in p],
            "at_common": at_common(arr[:, 0], arr[:, 1], level, bootstrap, seed + j),
        }
    traj = {}
    for r in results:
        c = curves.get(text(r.get("run")))
        if c is not None and usable(r) and not text(r.get("hyper")):
            ok = np.isfinite(c.noise_scale) & (c.noise_scale > 0)
            if ok.sum() >= 2:
                idx = np.flatnonzero(ok)[:: max(1, int(ok.sum()) // 40)]
                traj.setdefault(variant_of(r), []).append(
                    {"run": c.run, "loss": c.smooth()[idx], "noise_scale": c.noise_scale[idx]}
                )
    return {
        "unit": "tokens",
        "common_loss": level,
        "inside_every_range": inside,
        "archs": archs,
        "trajectories": traj,
        "skipped_archs": {v: "fewer than two losses" for v in by if v not in fit},
    }

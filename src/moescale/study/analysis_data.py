"""Study analysis, part 1: the collector's tables as the analysis reads them.

Why a module of its own: every later section (laws, IsoFLOP, curves, hyperparameters, the
report) needs the same ladder points and the same stitched training curves, and all of them
must agree on what "a point" and "compute" are.

Inputs are the collector's two tables as lists of dicts (`moescale.study.collect`): results
rows (one per finished run directory) and curve rows (one per logged step). Numbers may arrive
as numbers, numeric strings or None.

- A **ladder point** is a results row with `hyper == ""` (not a hyperparameter-axis run), status
  done and a finite val_loss; seeds of one configuration (variant, E, G, k, N, D) are reduced to
  their mean val_loss, with a standard error that adds the seed spread to the validation set's.
  Not the best seed: the minimum of n draws is lower the noisier the architecture, and seed
  noise can differ by architecture, so keeping the best seed would hand the noisier one a win.
  With one seed the error is the validation set's alone: seed-to-seed variation is then in no
  interval.
- **Compute** is C = 6·N_active·D (`flops_simple`, N_active with router): the convention the
  laws engine's fits and plans assume, so a measured point and a fitted frontier are on one
  axis. The exact FLOPs are kept beside it (`flops_exact`).
- A **curve** is a run's training loss against tokens; a WSD branch's own rows start after its
  trunk's checkpoint, so its curve is the trunk's rows up to `start_step` followed by its own.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

VARIANTS = ("dense", "moe", "fine-grained")
FLOPS_CONVENTION = "simple"
FLOPS_DEFINITION = (
    "C = 6·N_active·D (flops_simple; N_active counts the router): the convention of the fits "
    "and plans, so measured points and fitted frontiers share one axis"
)
SMOOTH = 9  # moving-average window (logged steps) of a training-loss curve


def num(v: Any) -> float:
    """A table value as a float; nan for None, '' or anything that is not a number."""
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def text(v: Any) -> str:
    """A table value as text ('' for None or nan)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v)


def skipped(reason: str) -> dict[str, str]:
    """The marker of a section the data cannot support, with why."""
    return {"skipped": reason}


def is_skipped(section: Any) -> bool:
    return isinstance(section, Mapping) and "skipped" in section


def jsonable(obj: Any) -> Any:
    """`obj` with numpy values as Python ones, tuples as lists and non-finite floats as None,
    so that json.dumps(..., allow_nan=False) accepts it."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(float(obj)) else None
    return obj


def variant_of(row: Mapping[str, Any]) -> str:
    """The row's variant column, or the collector's rule when it has none."""
    v = text(row.get("variant"))
    if v in VARIANTS:
        return v
    if text(row.get("arch")) == "dense" or num(row.get("experts")) <= 1:
        return "dense"
    return "moe" if num(row.get("granularity")) <= 1 else "fine-grained"


def mode(values: Iterable[float]) -> float:
    """The most common value; ties go to the largest (the design the study built most of)."""
    counts = Counter(float(v) for v in values)
    return max(counts, key=lambda v: (counts[v], v))


@dataclass(frozen=True)
class Point:
    """One ladder point: the seeds of one (variant, E, G, k, N, D) configuration (module doc;
    `run` is the lowest seed's, whose curve stands for the point). `group` is the bootstrap's
    unit: a WSD branch shares its trunk's (their losses are correlated), every other run is its
    own; a point of several seeds joins its runs' groups."""

    run: str
    group: str
    variant: str
    experts: float
    granularity: float
    top_k: float
    d_model: float
    n_layers: float
    n_active: float
    n_total: float
    n_total_no_router: float
    params_router: float
    tokens: float
    compute: float
    flops_exact: float
    loss: float
    loss_se: float
    seeds: int
    seq_len: float
    flops_routing: float = math.nan  # Krajewski et al.'s routing-aware FLOPs (results column)

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def column(points: Sequence[Point], name: str) -> np.ndarray:
    """One field of every point as an array (len(points),)."""
    return np.array([getattr(p, name) for p in points], dtype=float if name != "run" else object)


def _point(row: Mapping[str, Any], seeds: int) -> Point:
    n_active, tokens = num(row.get("params_active")), num(row.get("tokens"))
    compute = num(row.get("flops_simple"))
    if not compute > 0:
        compute = 6.0 * n_active * tokens
    total = num(row.get("params_total"))
    router = num(row.get("params_router"))
    router = 0.0 if not math.isfinite(router) else router
    no_router = num(row.get("params_total_no_router"))
    trunk = text(row.get("branch_of"))
    return Point(
        run=text(row.get("run")), group=trunk or text(row.get("run")), variant=variant_of(row),
        experts=num(row.get("experts")) if num(row.get("experts")) > 0 else 1.0,
        granularity=num(row.get("granularity")) if num(row.get("granularity")) > 0 else 1.0,
        top_k=num(row.get("top_k")) if num(row.get("top_k")) > 0 else 1.0,
        d_model=num(row.get("d_model")), n_layers=num(row.get("n_layers")), n_active=n_active,
        n_total=total, n_total_no_router=no_router if no_router > 0 else total - router,
        params_router=router, tokens=tokens, compute=compute,
        flops_exact=num(row.get("flops")), loss=num(row.get("val_loss")),
        loss_se=num(row.get("val_loss_se")), seeds=seeds, seq_len=num(row.get("seq_len")),
        flops_routing=num(row.get("flops_routing_aware")),
    )  # fmt: skip


@dataclass
class Ladder:
    """Ladder points per variant, and what the selection left out (`notes`, for warnings)."""

    points: dict[str, list[Point]]
    notes: list[str] = field(default_factory=list)
    runs: int = 0
    hyper_runs: int = 0

    def all(self) -> list[Point]:
        return [p for v in VARIANTS for p in self.points.get(v, [])]


def seed_point(rows: Sequence[Mapping[str, Any]]) -> Point:
    """The seeds of one configuration as one point (module doc): mean val_loss; standard error
    sqrt(s²/n + se_val²), s the seeds' sample deviation and se_val the mean of their validation
    errors (every run is scored on the same windows, so that part does not shrink with n)."""
    rows = sorted(rows, key=lambda r: (num(r.get("seed")) if math.isfinite(num(r.get("seed")))
                                       else math.inf, text(r.get("run"))))  # fmt: skip
    loss = np.array([num(r.get("val_loss")) for r in rows])
    val_se = np.array([num(r.get("val_loss_se")) for r in rows])
    se = float(np.mean(val_se)) if np.all(np.isfinite(val_se)) else math.nan
    if len(rows) > 1:
        spread = float(np.var(loss, ddof=1)) / len(rows)
        se = math.sqrt(spread + (se**2 if math.isfinite(se) else 0.0))
    groups = sorted({text(r.get("branch_of")) or text(r.get("run")) for r in rows})
    p = _point(rows[0], len(rows))
    return replace(p, loss=float(np.mean(loss)), loss_se=se, group="+".join(groups))


def usable(row: Mapping[str, Any]) -> bool:
    """A finished run with a finite, positive val_loss, N and D."""
    status = text(row.get("status")) or "done"
    return status == "done" and all(
        num(row.get(k)) > 0 and math.isfinite(num(row.get(k)))
        for k in ("val_loss", "params_active", "tokens")
    )


def one_tokenizer(rows: list[Mapping[str, Any]], notes: list[str]) -> list[Mapping[str, Any]]:
    """The rows of the most common tokenizer: losses per token of different vocabularies are
    not comparable (docs/conventions.md), so the others are left out with a note."""
    hashes = Counter(text(r.get("tokenizer_sha256")) for r in rows)
    hashes.pop("", None)
    if len(hashes) <= 1:
        return rows
    keep = hashes.most_common(1)[0][0]
    out = [r for r in rows if text(r.get("tokenizer_sha256")) in ("", keep)]
    notes.append(f"the results mix {len(hashes)} tokenizers; kept the {len(out)} runs of the most "
                 f"common one ({keep[:12]}) and left out {len(rows) - len(out)}")  # fmt: skip
    return out


def ladder(results: Sequence[Mapping[str, Any]]) -> Ladder:
    """Ladder points per variant (module doc): hyperparameter-axis runs, unfinished runs and
    runs without a finite loss are left out and counted; seeds reduce to their mean loss."""
    notes: list[str] = []
    ok = [r for r in results if usable(r)]
    if len(ok) < len(results):
        notes.append(f"{len(results) - len(ok)} of {len(results)} result rows are not finished "
                     "runs with a finite val_loss, N and D; left out")  # fmt: skip
    ok = one_tokenizer(ok, notes)
    hyper = [r for r in ok if text(r.get("hyper"))]
    configs: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in ok:
        if text(r.get("hyper")):
            continue
        key = (variant_of(r), *(round(num(r.get(k)), 6) for k in ("experts", "granularity",
               "top_k", "params_active", "params_total", "tokens")))  # fmt: skip
        configs.setdefault(key, []).append(r)
    points: dict[str, list[Point]] = {v: [] for v in VARIANTS}
    for rows in configs.values():
        p = seed_point(rows)
        points[p.variant].append(p)
    for v in points:
        points[v].sort(key=lambda p: (p.experts, p.granularity, p.n_active, p.tokens))
    single = sum(1 for pts in points.values() for p in pts if p.seeds == 1)
    if single:
        notes.append(f"{single} of {len(configs)} ladder points have one seed: their intervals "
                     "hold the validation set's error but not seed-to-seed variation (add seeds "
                     "to the study's `seeds` to measure it)")  # fmt: skip
    return Ladder(points, notes, runs=len(ok), hyper_runs=len(hyper))


# ---------- training curves ----------
@dataclass
class Curve:
    """A run's training curve, trunk prefix included: tokens (n,), loss (n,) and the noise
    scale (n,), nan where not estimated."""

    run: str
    tokens: np.ndarray
    loss: np.ndarray
    noise_scale: np.ndarray
    own_from: float = 0.0  # tokens where the run's own steps begin (0: no trunk prefix)

    def smooth(self, window: int = SMOOTH) -> np.ndarray:
        return smooth(self.loss, window)


def smooth(loss: np.ndarray, window: int = SMOOTH) -> np.ndarray:
    """Centred moving average (edges padded with the end values) of a loss curve (n,); the
    window shrinks for short curves (at most a twentieth of the steps), where it would lag."""
    w = max(1, min(window, len(loss) // 20))
    pad = np.pad(np.asarray(loss, float), (w // 2, w - 1 - w // 2), mode="edge")
    return np.convolve(pad, np.ones(w) / w, mode="valid")


def _own_rows(curves: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Per run: its rows as an array (m, 4) of step, tokens, loss, noise scale, sorted by
    step; rows without a training loss (evaluation records) are dropped."""
    acc: dict[str, list[tuple[float, float, float, float]]] = {}
    for r in curves:
        loss = num(r.get("loss"))
        if not math.isfinite(loss):
            continue
        acc.setdefault(text(r.get("run")), []).append(
            (num(r.get("step")), num(r.get("tokens")), loss, num(r.get("noise_scale")))
        )
    return {k: np.array(sorted(v)) for k, v in acc.items()}


def stitched_curves(
    curves: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]]
) -> dict[str, Curve]:
    """Every run's curve; a branch's (results row with `branch_of` and `start_step`) gets its
    trunk's rows up to `start_step` in front of its own (module doc); chains are followed."""
    own = _own_rows(curves)
    trunk = {text(r.get("run")): (text(r.get("branch_of")), num(r.get("start_step")))
             for r in results if text(r.get("branch_of"))}  # fmt: skip

    def rows_of(run: str, depth: int) -> tuple[np.ndarray, float]:
        mine = own.get(run, np.empty((0, 4)))
        parent, start = trunk.get(run, ("", math.nan))
        if not parent or depth > 8 or not math.isfinite(start):
            return mine, 0.0
        prefix, _ = rows_of(parent, depth + 1)
        prefix = prefix[prefix[:, 0] <= start]
        own_from = float(prefix[-1, 1]) if len(prefix) else 0.0
        return np.concatenate([prefix, mine[mine[:, 0] > start]]), own_from

    out = {}
    for run in set(own) | set(trunk):
        rows, own_from = rows_of(run, 0)
        rows = rows[np.isfinite(rows[:, 1]) & (rows[:, 1] > 0)]
        if len(rows):
            out[run] = Curve(run, rows[:, 1], rows[:, 2], rows[:, 3], own_from)
    return out


def first_reach(tokens: np.ndarray, loss: np.ndarray, level: float) -> float:
    """Tokens at which a curve's running minimum first reaches `level`, interpolated in log
    tokens; nan when it never does."""
    low = np.minimum.accumulate(np.asarray(loss, float))
    hit = np.flatnonzero(low <= level)
    if not len(hit):
        return math.nan
    i = int(hit[0])
    if i == 0 or low[i - 1] == low[i]:
        return float(tokens[i])
    w = (low[i - 1] - level) / (low[i - 1] - low[i])
    return float(math.exp((1 - w) * math.log(tokens[i - 1]) + w * math.log(tokens[i])))


def at_tokens(curve: Curve, grid: np.ndarray, window: int = 2 * SMOOTH) -> tuple[np.ndarray, ...]:
    """Loss (k,) and its standard error (k,) at tokens `grid` (k,): a local quadratic in log
    tokens through the `window` logged steps nearest each grid point (a moving average would
    lag where the curve is steep); nan outside the curve. The error is the fit's, from the
    steps' scatter around it: curve noise, not seed-to-seed variation."""
    lt, y = np.log(curve.tokens), np.asarray(curve.loss, float)
    w = min(window, len(y))
    loss, se = np.full(len(grid), np.nan), np.full(len(grid), np.nan)
    for j, x in enumerate(np.log(np.asarray(grid, float))):
        if not lt[0] - 1e-9 <= x <= lt[-1] + 1e-9 or w < 4:
            continue
        idx = np.argsort(np.abs(lt - x), kind="stable")[:w]
        u = lt[idx] - x
        design = np.column_stack([np.ones(w), u, u * u])
        coef, *_ = np.linalg.lstsq(design, y[idx], rcond=None)
        resid = y[idx] - design @ coef
        cov = np.linalg.pinv(design.T @ design) * float(resid @ resid) / (w - 3)
        loss[j], se[j] = coef[0], math.sqrt(max(cov[0, 0], 0.0))
    return loss, se

"""Speed of the scaling-law fitters on Epoch AI's Chinchilla points (Besiroglu et al. 2024).

Rows: one variable-projection fit (squared error, and Huber on log L; median of repeats), the
same with 1,000 bootstrap draws (2 worker processes), and the Epoch-compatible LSE/Huber fit from
its grid of 4,500 starts. Prints a table and the ratios; `--json OUT` writes
{"machine": ..., "rows": [{"impl", "what", "ms", "objective", ...}]}.

    python benchmarks/fit_speed.py --json benchmarks/results/fit_speed.json [--load N]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy
from common import busy_load  # benchmarks/ is on sys.path when run as a script

from moescale.laws import fit_law


def epoch_points() -> dict[str, np.ndarray]:
    env = os.environ.get("MOESCALE_VALIDATION_DIR")
    base = (
        Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "validation"
    )
    path = base / "epoch_chinchilla_points.csv"
    if not path.exists():
        sys.exit(
            f"Epoch AI's Chinchilla points are not at {path} (the file has no licence, so it is "
            "kept outside the repository); set MOESCALE_VALIDATION_DIR to its folder"
        )
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    n = np.array([float(r["Model Size"]) for r in rows])
    c = np.array([float(r["Training FLOP"]) for r in rows])
    return {"N": n, "D": c / (6 * n), "L": np.array([float(r["loss"]) for r in rows])}


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time in ms over `repeats` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", dest="json_out", help="write results as JSON")
    ap.add_argument("--repeats", type=int, default=7, help="repeats of the single fits")
    ap.add_argument("--draws", type=int, default=1000, help="bootstrap draws")
    ap.add_argument(
        "--epoch-starts",
        type=int,
        default=None,
        help="limit the Epoch grid to its best K starts (default: all 4,500)",
    )
    ap.add_argument("--load", type=int, default=0, metavar="N", help="busy processes meanwhile")
    args = ap.parse_args()
    with busy_load(args.load):
        return measure(args)


def measure(args: argparse.Namespace) -> int:
    pts = epoch_points()
    x = {"N": pts["N"], "D": pts["D"]}
    common = {"drop_outliers": 5, "holdout_frac": 0.0}
    rows = []

    def add(impl: str, what: str, ms: float, res, **extra) -> None:
        rows.append(
            {
                "impl": impl,
                "what": what,
                "ms": round(ms, 3),
                "objective": res.objective,
                "alpha": res.params["alpha"],
                "beta": res.params["beta"],
                "E0": res.params["E0"],
                **extra,
            }
        )

    for loss in ("squared", "huber"):
        ms, res = timed(
            lambda loss=loss: fit_law(
                "chinchilla", x, pts["L"], loss=loss, bootstrap_draws=0, **common
            ),
            args.repeats,
        )
        add(f"vp-{loss}", "one fit, 240 points (grid + L-BFGS-B)", ms, res, repeats=args.repeats)
    for loss in ("squared", "huber"):
        ms, res = timed(
            lambda loss=loss: fit_law(
                "chinchilla",
                x,
                pts["L"],
                loss=loss,
                bootstrap_draws=args.draws,
                workers=2,
                **common,
            ),
            1,
        )
        add(
            f"vp-{loss}+bootstrap",
            f"fit + {args.draws} bootstrap draws, 2 processes",
            ms,
            res,
            draws=args.draws,
        )
    ms, res = timed(
        lambda: fit_law(
            "chinchilla",
            x,
            pts["L"],
            method="epoch",
            bootstrap_draws=0,
            n_starts=args.epoch_starts,
            **common,
        ),
        1,
    )
    add(
        "epoch-grid",
        f"LSE + Huber, L-BFGS-B from {args.epoch_starts or 4500} starts",
        ms,
        res,
        starts=args.epoch_starts or 4500,
    )

    print(f"{'impl':<24} {'ms':>10} {'objective':>12} {'alpha':>8} {'beta':>8}  what")
    for r in rows:
        print(
            f"{r['impl']:<24} {r['ms']:>10.1f} {r['objective']:>12.6g} {r['alpha']:>8.4f} "
            f"{r['beta']:>8.4f}  {r['what']}"
        )
    by = {r["impl"]: r for r in rows}
    ratio = by["epoch-grid"]["ms"] / by["vp-huber"]["ms"]
    print(
        f"epoch-grid ms / vp-huber ms = {ratio:.0f}x; objective vp-huber "
        f"{by['vp-huber']['objective']:.7g} vs epoch-grid {by['epoch-grid']['objective']:.7g}"
    )
    for loss in ("squared", "huber"):
        print(
            f"bootstrap ({loss}, {args.draws} draws incl. the fit): "
            f"{by[f'vp-{loss}+bootstrap']['ms'] / 1e3:.2f} s"
        )
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "load_processes": args.load,
    }
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {"machine": machine, "rows": rows, "ratios": {"epoch_grid_over_vp_huber": ratio}},
                indent=1,
            )
        )
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

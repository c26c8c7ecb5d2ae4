"""Shared fixtures for the scaling-law tests: synthetic data and the Epoch validation file."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest


def validation_file() -> Path:
    """Epoch AI's points (Besiroglu et al. 2024): in $MOESCALE_VALIDATION_DIR, else in
    `shared/validation` beside the repository. The file has no licence, so it is never copied
    into the repository."""
    env = os.environ.get("MOESCALE_VALIDATION_DIR")
    base = (
        Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "validation"
    )
    return base / "epoch_chinchilla_points.csv"


@pytest.fixture(scope="session")
def epoch_points() -> dict[str, np.ndarray]:
    """N, D, C, L of Epoch's 245 digitised Chinchilla points; skips when the file is absent."""
    path = validation_file()
    if not path.exists():
        pytest.skip(
            f"Epoch AI's Chinchilla points are not at {path}: the file has no licence, so it is "
            "kept outside the repository; set MOESCALE_VALIDATION_DIR to the folder that holds "
            "epoch_chinchilla_points.csv to run these checks"
        )
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    n = np.array([float(r["Model Size"]) for r in rows])
    c = np.array([float(r["Training FLOP"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    return {"N": n, "C": c, "D": c / (6.0 * n), "L": loss, "path": np.array([str(path)])}


@pytest.fixture(scope="session")
def epoch_240(epoch_points: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The 240 points left after dropping the 5 highest-loss rows (Besiroglu et al. 2024)."""
    keep = np.ones(len(epoch_points["L"]), bool)
    keep[np.argsort(-epoch_points["L"], kind="stable")[:5]] = False
    return {k: v[keep] for k, v in epoch_points.items() if k != "path"}

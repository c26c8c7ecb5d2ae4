"""Model families count parameters and FLOPs exactly as `moescale.accounting` does, at any size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moescale.accounting import count, krajewski_flops, krajewski_params_total
from moescale.config import load_config
from moescale.errors import UserError
from moescale.laws.family import (
    design,
    family_from_config,
    krajewski_family,
    load_family,
)
from moescale.run import Col

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KEYS = (
    Col.PARAMS_TOTAL,
    Col.PARAMS_ACTIVE,
    Col.PARAMS_ROUTER,
    Col.PARAMS_TOTAL_NO_ROUTER,
    Col.PARAMS_ACTIVE_NO_ROUTER,
)


@pytest.mark.parametrize("name", ["dense", "moe", "fine_grained", "tiny"])
def test_config_family_matches_accounting(name: str) -> None:
    path = EXAMPLES / f"{name}.yaml"
    cfg = load_config(path).model
    fam = family_from_config(path)
    shape = fam.build(cfg.n_layers)
    assert (shape.d_model, shape.n_layers, shape.d_ff) == (cfg.d_model, cfg.n_layers, cfg.d_ff)
    want = count(cfg)
    got = fam.counts(shape)
    for key in KEYS:
        assert got[key] == getattr(want, key), key
    for conv, key in (
        ("simple", "flops_per_token_simple"),
        ("routing_aware", "flops_per_token_routing_aware"),
        ("exact", "flops_per_token"),
    ):
        assert fam.flops_per_token(shape, conv) == pytest.approx(getattr(want, key), rel=1e-12)


def test_moe_every_other_layer_counts_like_the_config(tmp_path: Path) -> None:
    text = (EXAMPLES / "moe.yaml").read_text().replace("  moe:\n", "  moe:\n    every: 2\n")
    (tmp_path / "c.yaml").write_text(text.replace("n_layers: 4", "n_layers: 5"))
    cfg = load_config(tmp_path / "c.yaml").model
    fam = family_from_config(tmp_path / "c.yaml")
    got = fam.counts(fam.build(cfg.n_layers))
    assert got[Col.PARAMS_TOTAL] == count(cfg).params_total


def test_krajewski_family_is_their_formulas() -> None:
    fam = krajewski_family(64).with_moe(granularity=16)
    s = fam.shape(np.array([20.0, 37.5]))
    c = fam.counts(s)
    assert np.allclose(
        c[Col.PARAMS_TOTAL_NO_ROUTER], krajewski_params_total(s.d_model, s.n_layers, 64)
    )
    assert np.allclose(c[Col.PARAMS_ACTIVE_NO_ROUTER], 12 * s.d_model**2 * s.n_layers)
    assert np.allclose(
        fam.flops_per_token(s, "routing_aware"), krajewski_flops(s.d_model, s.n_layers, 64, 16, 1.0)
    )
    # the simple convention charges the router like any weight: 6 per parameter, not 14
    assert np.all(fam.flops_per_token(s, "simple") < fam.flops_per_token(s, "routing_aware"))


def test_krajewski_family_needs_e_and_refuses_exact() -> None:
    fam = krajewski_family()
    with pytest.raises(UserError, match="--experts"):
        fam.counts(fam.shape(10.0))
    with pytest.raises(UserError, match="--flops exact"):
        krajewski_family(8).flops_per_token(fam.shape(10.0), "exact")


def test_unknown_n_column_refused_for_moe_only() -> None:
    with pytest.raises(UserError, match="Model Size"):
        krajewski_family(8).n_of(krajewski_family(8).shape(4.0), "Model Size")
    dense = krajewski_family(8).dense()
    assert dense.n_of(dense.shape(4.0), "Model Size") == pytest.approx(12 * 256.0**2 * 4)


def test_design_is_trainable_and_spends_the_budget() -> None:
    fam = family_from_config(EXAMPLES / "fine_grained.yaml")
    d = design(fam, 7.4, 1e19, "exact", 6.0)
    assert d.n_layers == 7 and d.d_model % (128 // 4) == 0 and d.d_ff % 4 == 0
    assert d.tokens * d.flops_per_token == pytest.approx(1e19)
    assert (d.experts, d.granularity, d.top_k) == (8.0, 4.0, 2.0)


def test_load_family_errors(tmp_path: Path) -> None:
    assert load_family("krajewski").name == "krajewski"
    with pytest.raises(UserError, match="not a config file"):
        load_family(str(tmp_path / "nope.yaml"))

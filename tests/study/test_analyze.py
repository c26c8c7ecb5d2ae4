"""`analyze` on a synthetic study built from known laws (tests/report/synthetic.py): what it
recovers, what it measures, and that every section is there."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moescale.study.analysis_data import VARIANTS, ladder, stitched_curves
from tests.report.synthetic import DENSE, KRAJ, analysis, counts, moe_loss, study

SECTIONS = ("schema", "data", "points", "laws", "frontier", "isoflop", "plans",
            "data_efficiency", "equal_compute", "granularity_gap", "hyper", "noise_scale",
            "claims", "claim_groups", "warnings")  # fmt: skip


def test_every_section_is_present_and_json_serialisable() -> None:
    a = analysis("full")
    assert set(SECTIONS) <= set(a)
    json.dumps(a, allow_nan=False)
    for key in ("laws", "frontier", "isoflop", "plans"):
        assert set(VARIANTS) <= set(a[key]), key
        for v in VARIANTS:
            sec = a[key][v]
            assert sec, (key, v)
            if isinstance(sec, dict) and "skipped" in sec:
                assert isinstance(sec["skipped"], str) and sec["skipped"]


def test_ladder_averages_seeds_and_leaves_out_unfinished_runs() -> None:
    a = analysis("full")
    assert a["data"]["ladder_points"] == {"dense": 16, "moe": 18, "fine-grained": 9}
    runs = {p["run"] for v in VARIANTS for p in a["points"][v]}
    assert "failed-run" not in runs and not any(r.endswith(("-s1", "-s2")) for r in runs)
    seeds = [p["seeds"] for p in a["points"]["dense"]]
    assert max(seeds) == 3 and sum(seeds) == 18
    assert any("not finished" in n for n in a["data"]["notes"])


def _seed_rows(variant: str, losses: list[float], val_se: float = 0.002) -> list[dict]:
    base = {"variant": variant, "params_active": 1e6, "params_total": 1e6, "tokens": 2e7,
            "experts": 1 if variant == "dense" else 8, "top_k": 1, "granularity": 1,
            "status": "done", "val_loss_se": val_se}  # fmt: skip
    return [dict(base, run=f"{variant}-s{s}", seed=s, val_loss=v) for s, v in enumerate(losses)]


def test_seeds_reduce_to_their_mean_with_the_seed_spread_in_the_error() -> None:
    """Two architectures of equal mean loss, one noisier across seeds: the best seed would make
    the noisy one win by 0.1; the mean makes them equal, and its error carries the spread."""
    rng = np.random.default_rng(0)
    calm = list(3.0 + rng.normal(0, 0.005, 4))
    noisy = list(3.0 + np.array([-0.15, -0.05, 0.05, 0.15]))
    calm = [v - np.mean(calm) + 3.0 for v in calm]
    lad = ladder(_seed_rows("dense", calm) + _seed_rows("moe", noisy))
    (d,), (m,) = lad.points["dense"], lad.points["moe"]
    assert d.loss == pytest.approx(3.0) and m.loss == pytest.approx(3.0)
    assert (d.seeds, m.seeds) == (4, 4) and d.run == "dense-s0" and m.run == "moe-s0"
    spread = np.std(noisy, ddof=1) / 2  # sample deviation / sqrt(4 seeds)
    assert m.loss_se == pytest.approx(np.hypot(spread, 0.002))
    assert d.loss_se < m.loss_se / 5
    assert m.group == "+".join(f"moe-s{s}" for s in range(4))
    # one seed: the validation error alone, as before
    (one,) = ladder(_seed_rows("dense", [3.1])).points["dense"]
    assert (one.loss, one.loss_se, one.seeds) == (3.1, 0.002, 1)


def test_laws_recover_the_exponents_they_were_built_with() -> None:
    a = analysis("full")
    dense = a["laws"]["dense"]["laws"]["chinchilla"]
    kraj = a["laws"]["fine-grained"]["laws"]["krajewski"]
    for fit, truth in ((dense, DENSE), (kraj, KRAJ)):
        for q in ("alpha", "beta"):
            assert fit["params"][q] == pytest.approx(truth[q], abs=0.06), (fit["law"], q)
            lo, hi = fit["intervals"][q]
            assert lo <= fit["params"][q] <= hi
    assert a["laws"]["moe"]["primary"] == "wang"  # two E values: Wang et al.'s form
    assert a["laws"]["moe"]["laws"]["wang"]["params"]["gamma"] > 0.1
    # two G values identify only the G = 1 -> 4 difference, and the analysis says so
    assert set(kraj["not_identified"]) == {"g", "a", "gamma"}
    assert kraj["n_column"] == "params_total_no_router"


def test_heldout_error_is_the_engines_and_is_small() -> None:
    a = analysis("full")
    for v in VARIANTS:
        sec = a["laws"][v]
        fit = sec["laws"][sec["primary"]]
        h = fit["heldout"]
        held = np.array(h["held_out"])
        err = np.abs(np.array(h["observed"])[held] - np.array(h["holdout_predicted"])[held])
        assert held.sum() == fit["holdout"]["n"] >= 1
        assert float(np.mean(err)) == pytest.approx(fit["holdout"]["mae"], rel=1e-3)
        assert fit["holdout"]["mae"] < 0.05


def test_plans_grow_with_the_budget_and_carry_intervals() -> None:
    a = analysis("full")
    for v in VARIANTS:
        plans = a["plans"][v]
        assert [p["budget"] for p in plans] == [1e18, 1e20, 1e22]
        n = [p["numbers"]["n_active"] for p in plans]
        d = [p["numbers"]["tokens"] for p in plans]
        loss = [p["numbers"]["loss"][0] for p in plans]
        assert n[0][0] < n[1][0] < n[2][0] and d[0][0] < d[1][0] < d[2][0]
        assert loss[0] > loss[1] > loss[2]
        assert all(t[1] is not None and t[1] < t[2] for t in n + d)
        assert plans[0]["design"]["n_layers"] >= 1  # a family was read from the rows
    fg = a["plans"]["fine-grained"][0]
    assert fg["design"]["granularity"] == 4 and fg["design"]["experts"] == 8
    searched = a["plans"]["granularity_search"][0]
    assert searched["searched"] == [1, 4] and searched["granularity"] in (1, 4)


def test_frontier_spans_the_data_and_the_budgets() -> None:
    a = analysis("full")
    for v in VARIANTS:
        f = a["frontier"][v]
        c = np.array(f["compute"])
        assert c[0] <= a["data"]["compute_range"][0] * 1.001 and c[-1] == pytest.approx(1e22)
        assert np.all(np.diff(np.array(f["n_active"], float)) > 0)
        lo, mid, hi = (np.array(f[k], float) for k in ("loss_lo", "loss", "loss_hi"))
        assert np.all(lo <= hi) and np.mean((lo <= mid) & (mid <= hi)) > 0.8
        among = np.array(f["among_runs"])  # optima among the trained runs: near the data only
        n, trained = np.array(f["n_active"], float), [p["n_active"] for p in a["points"][v]]
        assert among.any() and not among[-1]  # 1e22 FLOPs is far beyond every run
        assert np.all(n[among] <= max(trained) * 1.25)


def test_measured_comparisons_see_the_built_in_differences() -> None:
    a = analysis("full")
    m = a["equal_compute"]["matched"]
    fg = m["fine-grained_vs_moe"]["designs"][0]
    assert fg["n"] == 9 and fg["wins"] == 9 and fg["mean_difference"][1] > 0.1
    e8 = next(d for d in m["moe_vs_dense"]["designs"] if d["experts"] == 8)
    assert e8["mean_difference"][1] > 0
    row = a["equal_compute"]["fits"][0]
    assert not row["extrapolated"] and row["gaps"]["fine-grained_vs_moe"][1] > 0


def test_curve_gap_is_the_laws_and_does_not_grow() -> None:
    """Krajewski's law moves G only through the N term, so at fixed N the gap is constant in
    D: the curves must show it flat, and the claim must not say it grows."""
    a = analysis("full")
    cg = a["granularity_gap"]["curves"]
    for pair in cg["pairs"]:
        layers = {5.27e5: 2, 1.05e6: 4, 2.11e6: 8}[float(f"{pair['n_active']:.3g}")]
        n_total = {g: counts(layers, 8, g, 2)["params_total_no_router"] for g in (1, 4)}
        truth = float(moe_loss(n_total[1], 1e8, 1) - moe_loss(n_total[4], 1e8, 4))
        assert np.allclose(pair["gap"], truth, atol=0.015)
        assert pair["token_ratio"] < 1  # fine-grained reaches standard MoE's loss sooner
    lo, hi = cg["gap_change"][1:]
    assert lo < 0 < hi
    assert any(
        "is not resolved at this scale" in c and "grows with tokens" in c for c in a["claims"]
    )


def test_hyper_laws_and_noise_scale_follow_the_built_in_optima() -> None:
    a = analysis("full")
    h = a["hyper"]
    assert set(h["curve_laws"]) == {"dense", "moe E8 k2 G1"}
    at = h["at_common_loss"]["batch"]["archs"]
    assert at["moe E8 k2 G1"]["interval"][1] < at["dense"]["interval"][0]
    lr = h["at_common_loss"]["lr"]["archs"]
    assert lr["moe E8 k2 G1"]["interval"][0] > lr["dense"]["interval"][1]
    axes = sorted({(m["arch"], m["axis"]) for m in h["heatmaps"]})
    assert axes == [
        ("dense", "batch_size"),
        ("dense", "lr"),
        ("moe E8 k2 G1", "batch_size"),
        ("moe E8 k2 G1", "lr"),
    ]
    for m in h["heatmaps"]:
        assert set(v for v in m["best"] if v is not None) <= set(m["values"])
    ns = a["noise_scale"]["archs"]
    assert ns["moe"]["at_common"]["interval"][1] < ns["dense"]["at_common"]["interval"][0]
    # the truth: B = 2e5·L^-4 for dense, 0.6 of it for MoE
    level = a["noise_scale"]["common_loss"]
    assert ns["dense"]["at_common"]["value"] == pytest.approx(2e5 * level**-4, rel=0.05)
    assert ns["moe"]["at_common"]["exponent"] == pytest.approx(-4.0, abs=0.3)


def test_branch_curves_are_stitched_to_their_trunk() -> None:
    results, curves = study("full")
    stitched = stitched_curves(curves, results)
    branch = next(r for r in results if r["branch_of"])
    trunk = stitched[branch["branch_of"]]
    c = stitched[branch["run"]]
    own = [r for r in curves if r["run"] == branch["run"]]
    assert min(r["step"] for r in own) > branch["start_step"]
    assert c.tokens[0] == trunk.tokens[0] and len(c.tokens) > len(own)
    assert c.own_from == pytest.approx(
        max(t for t in trunk.tokens if t <= branch["start_step"] * branch["batch_tokens"])
    )
    assert c.tokens[-1] == pytest.approx(branch["tokens"], rel=0.02)
    assert np.all(np.diff(c.tokens) > 0)


def test_claims_state_intervals_and_warnings_carry_the_engines() -> None:
    a = analysis("full")
    assert len(a["claims"]) >= 10
    numeric = [c for c in a["claims"] if "[" in c]
    assert len(numeric) >= 0.8 * len(a["claims"])
    assert any("Krajewski et al." in c for c in a["claims"])
    assert any("Wang et al." in c for c in a["claims"])
    sections = {w["section"] for w in a["warnings"]}
    assert "laws/fine-grained/krajewski" in sections  # the engine's own warning, carried
    assert any(s.startswith("plans/") for s in sections)
    assert all(w["message"] for w in a["warnings"])


def test_matched_pairs_say_what_routing_aware_flops_would_charge() -> None:
    """Equal N_active and D is equal compute under C = 6·N·D; Krajewski et al.'s count charges
    routing more, and more for the finer design: each design states its extra cost."""
    a = analysis("full")
    (fg_vs_moe,) = a["equal_compute"]["matched"]["fine-grained_vs_moe"]["designs"]
    lo, hi = fg_vs_moe["routing_aware_ratio"]
    assert 1.0 < lo <= hi < 1.05
    want = [p["routing_aware_ratio"] for p in fg_vs_moe["pairs"]]
    assert (lo, hi) == (min(want), max(want))
    assert any("routing-aware FLOPs, the fine-grained MoE runs spent +1." in c for c in a["claims"])


def test_headline_gives_the_measured_answer_in_a_few_lines() -> None:
    from moescale.commands.study import headline

    a = analysis("full")
    lines = headline(a)
    pairs = [line for line in lines if "nats," in line]
    names = [p.split(" (")[0].strip() for p in pairs]  # one line per design, pairs in order
    assert list(dict.fromkeys(names)) == [
        "dense minus standard MoE", "dense minus fine-grained MoE",
        "standard MoE minus fine-grained MoE"]  # fmt: skip
    assert len(pairs) == sum(len(sec["designs"]) for sec in a["equal_compute"]["matched"].values())
    fg = a["equal_compute"]["matched"]["fine-grained_vs_moe"]["designs"][0]
    assert f"{fg['mean_difference'][0]:.3g}" in pairs[-1] and f"{fg['n']} pair(s)" in pairs[-1]
    assert any(line.startswith("laws: ") and "krajewski" in line for line in lines)
    assert lines[-1] == f"{len(a['claims'])} claims and {len(a['warnings'])} warnings in the report"
    assert headline({}) == ["0 claims and 0 warnings in the report"]  # nothing fitted: no crash
    assert "seed" not in lines[0]  # some points have several seeds
    for pts in a["points"].values():
        for p in pts:
            p["seeds"] = 1
    said = "one seed per point, so seed-to-seed variation is not in the intervals"
    assert said in headline(a)[0]


def _swept_rows(losses: dict[str, dict[str, float]]) -> list[dict]:
    """One swept cell: per variant, the base run ('base') and runs of a batch-size sweep."""
    rows = []
    for variant, by in losses.items():
        for setting, loss in by.items():
            rows.append({"run": f"{variant}-{setting}", "variant": variant, "status": "done",
                         "experts": 1 if variant == "dense" else 8, "top_k": 1,
                         "granularity": 4 if variant == "fine-grained" else 1, "n_layers": 2,
                         "d_model": 64, "params_active": 1e5, "tokens": 2e5, "lr": 0.003,
                         "hyper": "" if setting == "base" else "batch_size",
                         "batch_size": 16 if setting == "base" else int(setting),
                         "val_loss": loss, "val_loss_se": 0.01})  # fmt: skip
    return rows


def test_the_comparison_at_each_architectures_best_swept_point() -> None:
    """One batch size and LR for every architecture may suit one of them: where the sweep ran,
    the analysis compares them at the shared base and each at its best swept point, and warns
    when a resolved difference reverses between the two."""
    from moescale.study.analysis_claims import claims
    from moescale.study.analysis_hyper import at_best_swept
    from moescale.study.analysis_warnings import collect_warnings

    kept = at_best_swept(_swept_rows({"dense": {"base": 6.10, "8": 5.90, "32": 6.40},
                                      "fine-grained": {"base": 6.00, "8": 5.67, "32": 6.37}}))
    (cell,) = kept["cells"]
    dense = cell["archs"]["dense"]
    assert dense["base"]["loss"] == 6.10 and dense["best"] == {
        "axis": "batch_size", "batch_size": 8, "lr": 0.003, "loss": 5.90, "se": 0.01}
    assert cell["order_base"] == cell["order_best"] and cell["reversed"] == []
    flipped = at_best_swept(_swept_rows({"dense": {"base": 6.10, "8": 5.50},
                                         "fine-grained": {"base": 6.00, "8": 5.67}}))
    assert flipped["cells"][0]["reversed"] == [["dense", "fine-grained E8 k1 G4"]]
    # within the errors (0.01 each) a swap is not a reversal
    close = at_best_swept(_swept_rows({"dense": {"base": 6.10, "8": 5.66},
                                       "fine-grained": {"base": 6.00, "8": 5.67}}))
    assert close["cells"][0]["reversed"] == []
    a = analysis("full")
    for sec, words, warned in ((kept, "no resolved difference reverses", False),
                               (flipped, "dense against fine-grained MoE reverses", True)):
        a["hyper"]["at_best_swept"] = sec
        said = [c for c in claims(a) if c.startswith("Where batch size and LR were swept")]
        assert len(said) == 1 and words in said[0], said
        assert "dense 5.500 (batch 8)" in said[0] or "dense 5.900 (batch 8)" in said[0]
        codes = {w["code"] for w in collect_warnings(a)}
        assert ("shared_hyperparameters" in codes) == warned


def test_an_optimum_outside_the_trained_runs_is_not_called_within_the_data() -> None:
    """A compute inside the data can put a law's optimum at a size or token count no run had:
    the fitted gap there is the law's, and the claim and a warning say so."""
    from types import SimpleNamespace

    from moescale.study.analysis_claims import claims
    from moescale.study.analysis_frontier import outside_runs
    from moescale.study.analysis_warnings import collect_warnings

    pts = [SimpleNamespace(n_active=n, tokens=d) for n in (1e5, 1e6) for d in (1e5, 5e5)]
    assert outside_runs(3e5, 2e5, pts) == ""
    far = outside_runs(880.0, 6e8, pts)
    assert far == "N_opt 880 (trained 1e+05 to 1e+06), D_opt 6e+08 (trained 1e+05 to 5e+05)"
    a = analysis("full")
    row = a["equal_compute"]["fits"][0]
    assert not row["extrapolated"] and row["laws"]["fine-grained"] == "krajewski"
    row["outside_data"] = {"dense": far}
    said = [c for c in claims(a) if "the fitted compute-optimal loss of dense minus" in c]
    assert said and all("not the optima (dense's N_opt 880" in c for c in said[:2])
    codes = [w for w in collect_warnings(a) if w["code"] == "optimum_outside_data"]
    assert [w["section"] for w in codes] == ["equal_compute/dense"]


def test_a_gap_that_the_choice_of_law_decides_is_said(monkeypatch) -> None:
    """Krajewski's law pools G = 1 and G points; Chinchilla on the fine-grained points alone
    has dense's form. When the two put the gap to dense intervals apart, a claim and a warning
    say that the law, not the data, decides it."""
    from types import SimpleNamespace

    from moescale.study import analyze as mod
    from moescale.study.analysis_claims import claims
    from moescale.study.analysis_warnings import collect_warnings

    fg = SimpleNamespace(primary="krajewski", fits={"krajewski": 1, "chinchilla": 1})
    row = {"gaps": {"fine-grained_vs_dense": [0.5, 0.4, 0.6]}}
    monkeypatch.setattr(mod, "comparison", lambda *a: {"loss_gap": 0.02, "intervals": {
        "loss_gap": (0.0, 0.04)}})  # fmt: skip
    mod._law_sensitivity(row, "fine-grained", fg, None, 1e12)
    assert row["law_sensitivity"]["fine-grained_vs_dense"] == {
        "krajewski": [0.5, 0.4, 0.6], "chinchilla": [0.02, 0.0, 0.04]}  # fmt: skip
    monkeypatch.setattr(mod, "comparison", lambda *a: {"loss_gap": 0.45, "intervals": {
        "loss_gap": (0.3, 0.55)}})  # fmt: skip
    overlapping = {"gaps": {"fine-grained_vs_dense": [0.5, 0.4, 0.6]}}
    mod._law_sensitivity(overlapping, "fine-grained", fg, None, 1e12)
    assert "law_sensitivity" not in overlapping

    a = analysis("full")
    first = a["equal_compute"]["fits"][0]
    first["law_sensitivity"] = row["law_sensitivity"]
    said = [c for c in claims(a) if "With Chinchilla fitted on the fine-grained MoE points" in c]
    assert len(said) == 1 and "0.02 [0, 0.04] nats" in said[0]
    (w,) = [w for w in collect_warnings(a) if w["code"] == "law_sensitivity"]
    assert "0.5 with the krajewski law and 0.02 with Chinchilla" in w["message"]


def test_a_fit_without_draws_gives_the_comparison_no_interval(monkeypatch) -> None:
    """When one side could not be bootstrapped (too few trunks), pairing the other side's
    draws with its point estimate would call it exact: the gap gets no interval instead."""
    from types import SimpleNamespace

    from moescale.study import analysis_frontier as mod

    seen = []
    monkeypatch.setattr(mod, "sizing", lambda *a: None)
    monkeypatch.setattr(mod, "compare_sizings", lambda s, ours, d, theirs, b: seen.append(
        (len(ours), len(theirs))) or SimpleNamespace(to_json=dict))  # fmt: skip

    def arch(draws: int) -> SimpleNamespace:
        fit = SimpleNamespace(params={"A": 1.0}, bootstrap_params=[{"A": 1.0}] * draws)
        return SimpleNamespace(primary="chinchilla", fits={"chinchilla": fit}, fit=fit)

    mod.comparison(arch(50), arch(0), 1e20)
    mod.comparison(arch(50), arch(40), 1e20)
    assert seen == [(1, 1), (51, 41)]

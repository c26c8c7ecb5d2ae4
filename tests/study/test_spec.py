"""Study specs expand into the runs a user expects, with stable names and clear errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from moescale.accounting import count
from moescale.config import config_from_dict
from moescale.errors import ConfigError
from moescale.study.spec import expand, parse_arch

BASE = {
    "model": {"vocab_size": 300, "seq_len": 32},
    "train": {"batch_size": 4, "lr": 3e-3, "schedule": "wsd", "warmup_frac": 0.05,
              "decay_frac": 0.2},
    "data": {"corpus": ["texts"]},
}  # fmt: skip


def spec(**extra):
    data = {
        "base": copy.deepcopy(BASE),
        "ladder": {"n_layers": [1, 2], "d_model_per_layer": 32, "head_dim": 16},
        "architectures": ["dense", {"name": "moe", "experts": 4, "top_k": 2},
                          {"name": "fg", "experts": 4, "top_k": 2, "granularity": 2}],
        "tokens": {"budgets": [1280, 2560, 3840]},
    }  # fmt: skip
    data.update(extra)
    return data


def test_ladder_times_architectures_times_budgets_with_branches(tmp_path: Path):
    study = expand(spec(), "s", base_dir=tmp_path)
    trunks = [r for r in study.runs if not r.trunk]
    branches = [r for r in study.runs if r.trunk]
    assert len(trunks) == 2 * 3 and len(branches) == 2 * 3 * 2
    by_name = study.by_name()
    for b in branches:
        trunk = by_name[b.trunk]
        assert b.name in trunk.branches and b.tokens < trunk.tokens
        assert b.config["train"]["init_from"].startswith(trunk.config["train"]["out_dir"])
        # a branch is the separate run to its budget, started from the trunk's checkpoint
        assert {k: v for k, v in b.config["train"].items() if k not in ("init_from", "out_dir",
                "tokens")} == {k: v for k, v in trunk.config["train"].items()
                               if k not in ("branch_tokens", "out_dir", "tokens")}  # fmt: skip
    assert sorted(trunks[0].config["train"]["branch_tokens"]) == [1280, 2560]


def test_fine_grained_pairs_keep_total_and_active_parameters(tmp_path: Path):
    study = expand(spec(branches=False), "s", base_dir=tmp_path)
    accts = {}
    for r in study.runs:
        if r.size == 1 and r.tokens == 1280:
            accts[r.arch] = count(config_from_dict(copy.deepcopy(r.config)).model)
    moe, fg = accts["moe"], accts["fg"]
    assert moe.params_total_no_router == fg.params_total_no_router
    assert moe.params_active_no_router == fg.params_active_no_router
    assert (fg.routed_experts, fg.active_experts) == (8, 4)


def test_pairs_by_counts_equal_pairs_in_standard_units():
    a = parse_arch({"name": "x", "total_experts": 64, "routed": 8, "granularity": 8}, 0)
    b = parse_arch({"name": "x", "experts": 8, "top_k": 1, "granularity": 8}, 0)
    assert a == b and a.variant == "fine-grained"
    with pytest.raises(ConfigError, match="multiples of granularity"):
        parse_arch({"name": "x", "total_experts": 60, "routed": 8, "granularity": 8}, 0)


def test_names_are_stable_and_distinct(tmp_path: Path):
    a = expand(spec(), "s", base_dir=tmp_path)
    b = expand(spec(), "s", base_dir=tmp_path)
    assert [r.name for r in a.runs] == [r.name for r in b.runs]
    assert len({r.name for r in a.runs}) == len(a.runs)
    c = expand(spec(seeds=[0, 1]), "s", base_dir=tmp_path)
    assert len(c.runs) == 2 * len(a.runs)


def test_isoflop_tokens_follow_the_budget(tmp_path: Path):
    study = expand(spec(tokens={"isoflop": {"flops": [3e9, 6e9]}}, branches=False), "s",
                   base_dir=tmp_path)  # fmt: skip
    for r in study.runs:
        cfg = config_from_dict(copy.deepcopy(r.config))
        c = count(cfg.model).flops_per_token * r.tokens
        step = cfg.train.batch_size * cfg.model.seq_len
        assert min(abs(c - 3e9), abs(c - 6e9)) <= count(cfg.model).flops_per_token * step


def test_hyper_axes_add_one_run_per_new_value(tmp_path: Path):
    study = expand(spec(hyper={"batch_size": [2, 4, 8], "lr": [1e-3]}), "s", base_dir=tmp_path)
    hyper = [r for r in study.runs if r.hyper]
    assert len(hyper) == 3 * (2 + 1)  # batch 4 is the base: no new run
    assert all(r.size == 0 and not r.trunk for r in hyper)


def test_batch_axis_keeps_the_noise_scale_estimable(tmp_path: Path):
    data = spec(hyper={"batch_size": [2, 8]})
    data["base"]["train"].update(micro_batch_size=2, noise_scale=True)
    study = expand(data, "s", base_dir=tmp_path)
    micro = {r.config["train"]["batch_size"]: r.config["train"]["micro_batch_size"]
             for r in study.runs if r.hyper}  # fmt: skip
    assert micro == {2: 1, 8: 2}  # every run has >= 2 micro-batches, and each config validates


def test_explicit_runs(tmp_path: Path):
    study = expand({"base": BASE, "runs": [{"name": "a", "set": {"train.tokens": 1280}},
                                           {"name": "b", "set": {"train.lr": 1e-3}}]},
                   "s", base_dir=tmp_path)  # fmt: skip
    assert [r.name.split("-")[0] for r in study.runs] == ["a", "b"]


@pytest.mark.parametrize(
    "extra, match",
    [({"ladder": {"n_layers": [1], "bogus": 1}}, "unknown keys"),
     ({"tokens": {"budgets": [1e3], "per_param": [2]}}, "one of budgets"),
     ({"architectures": ["dense", "dense"]}, "expected 'dense' or a mapping|distinct"),
     ({"hyper": {"sizes": [5], "lr": [1e-3]}}, "ladder indices"),
     ({"seeds": [-1]}, "seeds"),
     ({"seeds": [0, 1, 0]}, r"seeds: \[0, 1, 0\] repeats a seed"),
     ({"runs": [{"name": "x"}, {"name": "x"}]}, r"runs\[1\]: the same run .* as runs\[0\]"),
     ({"colour": "red"}, "unknown keys"),
     ({"model": {"d_model": 64}}, r"unknown keys \['model'\] \(a run config: train it"),
     ({"report": {"budgets": [1e20], "colour": "red"}}, r"report: unknown keys \['colour'\]"),
     ({"report": {"budgets": [1e20, -1e22]}}, r"report.budgets\[1\]: .* positive"),
     ({"report": {"budgets": [float("nan")]}}, r"report.budgets\[0\]"),
     ({"tokens": {"budgets": [float("inf")]}}, r"tokens.budgets\[0\]")],
)  # fmt: skip
def test_bad_specs_name_the_key(tmp_path: Path, extra, match):
    with pytest.raises(ConfigError, match=match):
        expand(spec(**extra), "s", base_dir=tmp_path)


def test_ladder_by_target_size_picks_the_nearest_depth(tmp_path: Path):
    data = spec(ladder={"params": [2e4, 2e5, 1.5e6], "d_model_per_layer": 32, "head_dim": 16})
    study = expand(data, "s", base_dir=tmp_path)
    got = {}
    for r in study.runs:
        if r.arch == "dense":
            got[r.size] = count(config_from_dict(copy.deepcopy(r.config)).model).params_active
    for target, n in zip([2e4, 2e5, 1.5e6], sorted(got.values()), strict=True):
        assert 0.5 < n / target < 2.0  # the nearest depth under d_model = 32 x n_layers
    with pytest.raises(ConfigError, match="not both"):
        expand(spec(ladder={"params": [1e5], "n_layers": [2]}), "s", base_dir=tmp_path)


def test_an_ablation_expert_init_across_architectures_is_said(tmp_path: Path, caplog):
    with caplog.at_level("WARNING", logger="moescale.study.grid"):
        expand(spec(), "s", base_dir=tmp_path)
    assert not caplog.records  # the default init: nothing to say
    data = spec()
    data["base"]["model"]["moe"] = {"expert_init": "scaled_weights"}
    with caplog.at_level("WARNING", logger="moescale.study.grid"):
        study = expand(data, "s", base_dir=tmp_path)
    moe_inits = {r.config["model"]["moe"]["expert_init"] for r in study.runs if r.arch != "dense"}
    assert moe_inits == {"scaled_weights"}
    (rec,) = caplog.records
    assert "fg, moe use expert_init scaled_weights" in rec.getMessage()


@pytest.mark.parametrize(
    "override, extra, axis",
    [("model.d_model=48", {}, "the study's ladder key sets model.d_model"),
     ("model.n_heads=4", {}, "ladder key sets model.n_heads"),
     ("model.moe.granularity=4", {}, "architectures key sets model.moe.granularity"),
     ("model.moe.granularity=3", {}, "architectures key sets model.moe.granularity"),
     ("model.moe={experts: 2}", {}, "architectures key sets model.moe.experts"),
     ("model.moe.experts=8", {"architectures": ["dense"]}, "every architecture is dense"),
     ("train.tokens=5000", {}, "tokens key sets train.tokens"),
     ("train.seed=3", {"seeds": [0, 1]}, "seeds key sets train.seed")],
)  # fmt: skip
def test_a_key_an_axis_sets_is_refused_not_ignored(tmp_path: Path, override, extra, axis):
    with pytest.raises(ConfigError, match=f"--set {override.split('=')[0]}: .*{axis}.*change"):
        expand(spec(**extra), "s", base_dir=tmp_path, overrides=[override])
    data = spec(**extra)
    key, value = override.split("=")
    *sections, leaf = key.split(".")
    node = data["base"]
    for s in sections:
        node = node.setdefault(s, {})
    node[leaf] = value
    with pytest.raises(ConfigError, match=f"base.{key.split('.moe')[0]}.*{axis}"):
        expand(data, "s", base_dir=tmp_path)


def test_keys_no_axis_sets_still_apply(tmp_path: Path):
    plain = expand(spec(), "s", base_dir=tmp_path)
    study = expand(spec(), "s", base_dir=tmp_path,
                   overrides=["train.lr=0.01", "model.moe.expert_init=fan_in"])  # fmt: skip
    assert all(r.config["train"]["lr"] == 0.01 for r in study.runs)
    moe = [r for r in study.runs if r.arch != "dense"]
    assert moe and all(r.config["model"]["moe"]["expert_init"] == "fan_in" for r in moe)
    assert {r.name for r in study.runs}.isdisjoint(r.name for r in plain.runs)
    shapes = {"shapes": [{"n_layers": 1, "d_model": 32, "n_heads": 2},
                         {"n_layers": 2, "d_model": 32, "n_heads": 2, "d_ff": 64}]}  # fmt: skip
    study = expand(spec(ladder=shapes), "s", base_dir=tmp_path, overrides=["model.d_ff=96"])
    assert sorted(r.config["model"]["d_ff"] for r in study.runs if not r.trunk)[:3] == [64] * 3
    assert 96 in {r.config["model"]["d_ff"] for r in study.runs}  # a shape without d_ff takes it

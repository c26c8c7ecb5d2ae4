"""Config loading: every bad value is an error that names the key and what it accepts."""

import pytest

from moescale.config import Config, config_from_dict, dump_config, load_config
from moescale.errors import ConfigError


def base():
    return {
        "model": {
            "d_model": 64,
            "n_layers": 2,
            "n_heads": 4,
            "d_ff": 128,
            "moe": {"experts": 4, "granularity": 2, "top_k": 2},
        },
        "train": {"tokens": 1000},
    }


def with_(path, value):
    data = base()
    node = data
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return data


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("model.moe.granularity", 3, "model.moe.granularity: 3 does not divide model.d_ff = 128"),
        ("model.moe.top_k", 5, "model.moe.top_k: 5 is more than model.moe.experts = 4"),
        ("model.n_heads", 5, "model.n_heads: 5 does not divide model.d_model = 64"),
        ("model.d_model", -64, "model.d_model: got -64, must be positive"),
        ("model.moe.experts", 0, "model.moe.experts: got 0, must be positive"),
        ("model.moe.router", "topk", "model.moe.router: got 'topk', expected one of"),
        ("model.moe.backend", "cuda", "'reference', 'grouped'"),
        ("model.moe.expertz", 4, "unknown key 'model.moe.expertz'. Accepted keys in model.moe:"),
        ("train.lrate", 0.1, "unknown key 'train.lrate'"),
        ("train.lr", "fast", "train.lr: got 'fast', expected a number"),
        ("train.schedule", "linear", "'cosine', 'wsd', 'constant'"),
        ("train.micro_batch_size", 5, "train.micro_batch_size: 5 does not divide"),
        ("model.tie_embeddings", "yes", "model.tie_embeddings: got 'yes', expected true or false"),
    ],
)
def test_bad_values_name_the_key(key, value, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(with_(key, value))
    assert message in str(err.value)


def test_yaml_scientific_notation_and_roundtrip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  d_model: 64\n  n_heads: 4\ntrain:\n  lr: 3e-4\n  tokens: 2e6\n")
    cfg = load_config(path, ["model.moe.experts=4", "train.seed=3"])
    assert cfg.train.lr == 3e-4 and cfg.train.tokens == 2_000_000 and cfg.train.seed == 3
    assert cfg.model.moe.experts == 4 and cfg.model.moe.granularity == 1
    assert cfg.train.out_dir == "runs/c"
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(tmp_path / "nope.yaml" if False else _ok(tmp_path), ["train.lr"])


def _ok(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("train: {tokens: 100}\n")
    return p


def test_defaults_are_valid():
    assert isinstance(config_from_dict({}), Config)

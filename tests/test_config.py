"""Config loading: every bad value is an error that names the key and what it accepts."""

import re
from pathlib import Path

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


@pytest.mark.parametrize("text, match", [
    ("model:\n  d_model: 64\n  d_model: 128\n", "key 'd_model' is given twice"),
    ("train: {lr: 0.001, lr: 0.003}\n", "key 'lr' is given twice"),
    ("# only a comment\n", "the file is empty"),
])  # fmt: skip
def test_a_setting_yaml_would_drop_is_refused(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)
    path.write_text("{}\n")  # all defaults, said so
    assert load_config(path).model == config_from_dict({}).model


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(tmp_path / "nope.yaml" if False else _ok(tmp_path), ["train.lr"])


@pytest.mark.parametrize("item", ["model.d_model=[", "data.corpus=a: b: c", "train.lr={1"])
def test_an_override_that_is_not_yaml_names_the_item(tmp_path, item):
    with pytest.raises(ConfigError, match=r"^--set '.*': the value must be YAML.*quote it") as e:
        load_config(_ok(tmp_path), [item])
    assert str(e.value).count("\n") == 0


def test_a_config_that_is_not_utf8_or_is_a_directory_says_so(tmp_path):
    latin1 = tmp_path / "l1.yaml"
    latin1.write_bytes(b"model: {d_model: 64}\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"l1.yaml' is not UTF-8 .*offset 26"):
        load_config(latin1)
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match="is a directory; give a YAML file.$"):
        load_config(tmp_path / "run")
    _ok(tmp_path).rename(tmp_path / "run" / "config.yaml")
    with pytest.raises(ConfigError, match=r"is a directory; .* such as '.*run/config.yaml'"):
        load_config(tmp_path / "run")


def test_a_study_file_given_as_a_run_config_says_what_it_is():
    study = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"
    with pytest.raises(ConfigError, match=r"is a study file .*moescale study .*--dry-run") as e:
        load_config(study)
    assert str(e.value).count("\n") == 0  # one line, not one per unknown key


def _ok(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("train: {tokens: 100}\n")
    return p


def test_defaults_are_valid():
    assert isinstance(config_from_dict({}), Config)


def test_every_error_is_reported_at_once_one_line_each():
    data = with_("model.n_heads", 5)
    data["model"]["moe"]["top_k"] = 9
    data["train"].update(lr=-1.0, lrate=0.1, micro_batch_size=5, batch_size=32)
    data["data"] = {"val_fraction": 2.0}
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    lines = str(err.value).splitlines()
    assert lines[0] == "6 errors:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "unknown key 'train.lrate'. Accepted keys in train",
        "model.n_heads",
        "model.moe.top_k",
        "train.lr",
        "train.micro_batch_size",
        "data.val_fraction",
    ]


def test_a_section_with_a_bad_type_is_not_also_checked_for_values():
    data = with_("model.d_model", "wide")
    data["model"]["n_heads"] = 5  # against the default d_model it would be a second, false error
    data["train"]["lr"] = 0.0
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert str(err.value).splitlines()[1:] == [
        "  model.d_model: got 'wide', expected an integer.",
        "  train.lr: got 0.0, must be positive.",
    ]


def test_load_config_names_the_file_once_for_several_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 0, tokens: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        f"{path}: 2 errors:\n  train.tokens: got 0, must be positive.\n"
        "  train.lr: got 0.0, must be positive."
    )


WSD = {"schedule": "wsd", "warmup_tokens": 768, "tokens": 60 * 256, "batch_size": 8}


@pytest.mark.parametrize(
    "train,message",
    [
        ({"warmup_tokens": 60 * 256}, "train.warmup_tokens: got 15360, must be >= 0 and less than"),
        ({"warmup_tokens": -1}, "train.warmup_tokens: got -1"),
        ({"schedule": "cosine", "branch_tokens": [1000]}, "need train.schedule: wsd and"),
        ({"warmup_tokens": None, "branch_tokens": [1000]}, "train.warmup_tokens set"),
        ({"branch_tokens": [5000, 5000]}, "repeats a value"),
        ({"branch_tokens": [60 * 256]}, "[15360] not between 0 and train.tokens"),
        ({"branch_tokens": [300]}, "the decay of a 300-token run would start at step 1"),
        ({"branch_tokens": [100]}, "run would start at step 0, outside this run's stable phase"),
        ({"init_from": " "}, "train.init_from: empty"),
    ],
)
def test_branch_keys_are_checked(train, message):
    data = {"model": {"d_model": 64, "n_heads": 4, "seq_len": 32}, "train": {**WSD, **train}}
    if message.startswith("the decay of a 300"):  # one step is in the stable phase: valid
        assert config_from_dict(data).train.branch_tokens == [300]
        return
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert message in str(err.value)


def test_branch_keys_load_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {seq_len: 32}\ntrain: {schedule: wsd, warmup_tokens: 768, "
                    "tokens: 15360, batch_size: 8, branch_tokens: [7680, 1.152e4]}\n")  # fmt: skip
    cfg = load_config(path, ["train.init_from=runs/x/checkpoints/step_00000024.pt"])
    assert cfg.train.branch_tokens == [7680, 11520] and cfg.train.warmup_tokens == 768
    assert cfg.train.init_from == "runs/x/checkpoints/step_00000024.pt"
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


MOE8 = {"moe": {"experts": 4, "granularity": 2}}  # 8 experts per layer


@pytest.mark.parametrize(
    ("model", "train", "parallel", "message"),
    [
        ({}, {}, {"expert": 2}, "parallel.expert: 2 needs an MoE model"),
        (MOE8, {}, {"expert": 3}, "do not split the 8 experts (E*G) of each layer evenly"),
        (MOE8, {}, {"expert": 0}, "parallel.expert: got 0, must be positive"),
        (MOE8, {}, {"expert": 2, "fsdp": True}, "parallel.fsdp: not supported together"),
        (MOE8, {"noise_scale": True}, {"expert": 2}, "train.noise_scale: not available"),
        ({}, {"noise_scale": True}, {"fsdp": True}, "parallel.fsdp: the noise scale needs"),
    ],
)
def test_parallel_keys_are_checked(model, train, parallel, message):
    data = {"model": model, "train": {"micro_batch_size": 8, **train}, "parallel": parallel}
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict(data)


def test_the_global_batch_must_split_over_the_ranks():
    from moescale.train.distributed import World, check_split

    cfg = config_from_dict({"model": MOE8, "train": {"batch_size": 12, "micro_batch_size": 2},
                            "parallel": {"expert": 2}})  # fmt: skip
    assert check_split(cfg, World(0, 2, 0, 2)) == 3  # 6 sequences per rank, 3 micro-batches
    with pytest.raises(ConfigError, match="train.batch_size: 12 sequences do not split into 4"):
        check_split(cfg, World(0, 4, 0, 4))
    with pytest.raises(ConfigError, match="parallel.expert: 2 does not divide the 3 ranks"):
        check_split(cfg, World(0, 3, 0, 3))
    cfg.train.micro_batch_size = None  # default: one micro-batch per rank
    assert check_split(cfg, World(1, 4, 1, 4)) == 1
    cfg.train.batch_size = 1  # fewer sequences than ranks: an error naming the key
    with pytest.raises(ConfigError, match="train.batch_size: 1 sequences do not split into 2"):
        check_split(cfg, World(0, 2, 0, 2))

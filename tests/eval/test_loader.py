"""Opening a run directory: the model at a checkpoint, and errors that say what is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from moescale.errors import UserError
from moescale.eval import load_run
from moescale.train.checkpoint import load_checkpoint


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock", "events.*"))
    return dst


def test_loads_the_newest_checkpoint_in_eval_mode(dense_run: Path):
    run = load_run(dense_run, device="cpu")
    assert run.step == 30 and not run.model.training
    assert run.config.model.d_model == 32 and run.seq_len == 32
    state = load_checkpoint(dense_run / "checkpoints" / "step_00000030.pt")
    for name, value in run.model.state_dict().items():
        assert torch.equal(value, state["model"][name])
    assert run.decode(run.encode("The king rode.")) == "The king rode."
    assert run.token_bytes[run.eos_id] == 0


def test_loads_an_older_step_and_lists_the_steps_there_are(dense_run: Path):
    assert load_run(dense_run, step=20, device="cpu").step == 20
    with pytest.raises(UserError, match="no checkpoint of step 7; it has steps 20, 30"):
        load_run(dense_run, step=7, device="cpu")


def test_a_run_without_checkpoints_says_how_to_get_one(dense_run: Path, tmp_path: Path):
    run = copy_run(dense_run, tmp_path / "run")
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(UserError, match=r"has no checkpoint .*moescale train"):
        load_run(run, device="cpu")
    with pytest.raises(UserError, match="not a directory"):
        load_run(tmp_path / "nowhere")


def test_a_missing_tokenizer_names_the_file_and_where_the_cache_has_it(
    dense_run: Path, tmp_path: Path
):
    run = copy_run(dense_run, tmp_path / "run")
    (run / "tokenizer.json").unlink()
    with pytest.raises(UserError) as err:
        load_run(run, device="cpu")
    msg = str(err.value)
    assert "tokenizer.json is missing" in msg
    assert "The data cache holds it: copy " in msg and "/tokens/" in msg
    cached = Path(msg.split("holds it: copy ")[1].split(" to ")[0])
    shutil.copy(cached, run / "tokenizer.json")  # following the advice works
    assert load_run(run, device="cpu").step == 30


def test_a_missing_tokenizer_without_a_cache_says_how_to_rebuild_it(
    dense_run: Path, tmp_path: Path
):
    run = copy_run(dense_run, tmp_path / "run")
    (run / "tokenizer.json").unlink()
    cfg = (run / "config.yaml").read_text()
    import yaml

    data = yaml.safe_load(cfg)
    state_path = run / "checkpoints" / "step_00000030.pt"
    state = torch.load(state_path, weights_only=True)
    for d in (data, state["config"]):
        d["data"]["cache_dir"] = str(tmp_path / "empty_cache")
    (run / "config.yaml").write_text(yaml.safe_dump(data))
    torch.save(state, state_path)
    (run / "checkpoints" / "step_00000020.pt").unlink()
    with pytest.raises(UserError, match=r"moescale corpus tokenize .*config.yaml"):
        load_run(run, device="cpu")


def test_a_different_tokenizer_is_refused(dense_run: Path, tmp_path: Path):
    run = copy_run(dense_run, tmp_path / "run")
    tok = run / "tokenizer.json"
    tok.write_text(tok.read_text().replace('"<|endoftext|>"', '"<|eot|>"', 1))
    with pytest.raises(UserError, match="not the tokenizer this run trained with"):
        load_run(run, device="cpu")

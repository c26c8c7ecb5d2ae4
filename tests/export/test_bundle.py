"""moescale.export.bundle and `moescale export`: the run directory in, a model directory that
transformers loads out (tokenizer included), written whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer

from moescale import cli
from moescale.config import Config
from moescale.errors import UserError
from moescale.export import bundle, export_run
from moescale.run import RunPaths
from moescale.train.checkpoint import TrainerState, capture, list_checkpoints, save_checkpoint

from .conftest import TEXTS, make_run, tiny_model

FILES = ["config.json", "generation_config.json", "model.safetensors",
         "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]  # fmt: skip


def test_tokenizer_round_trips_through_auto_tokenizer(tmp_path: Path, tokenizer: Tokenizer):
    transformers = pytest.importorskip("transformers")
    run_dir, _, _ = make_run(tmp_path, tokenizer, tiny_model())
    res = export_run(run_dir, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == FILES == res.files
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    for text in [*TEXTS, "", " leading space", "<|endoftext|> between documents"]:
        ids = hf.encode(text)
        assert ids == tokenizer.encode(text).ids  # no BOS/EOS added
        assert hf.decode(ids) == text == tokenizer.decode(ids, skip_special_tokens=False)
    eos = tokenizer.token_to_id("<|endoftext|>")
    assert hf.eos_token_id == hf.bos_token_id == eos
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert generation == {"bos_token_id": eos, "eos_token_id": eos}
    # every file readable by others, as a plain write would leave it (safetensors writes 0600)
    mask = os.umask(0)
    os.umask(mask)
    for p in (tmp_path / "out").iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p.name


def add_checkpoint(run_dir: Path, net: torch.nn.Module, cfg: Config, step: int) -> None:
    with torch.no_grad():
        net.embed.weight.add_(1.0)  # a later step: other weights
    state = capture(step, net, torch.optim.AdamW(net.parameters()), torch.device("cpu"),
                    TrainerState(), cfg.to_dict())  # fmt: skip
    save_checkpoint(RunPaths(run_dir).checkpoints, step, state, keep=5)


def embedding(out: Path) -> torch.Tensor:
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.metadata()["moescale_step"] in {"7", "20"}
        return f.get_tensor("model.embed_tokens.weight")


def test_newest_checkpoint_by_default_or_the_given_step(tmp_path: Path, tokenizer: Tokenizer):
    run_dir, net, cfg = make_run(tmp_path, tokenizer, tiny_model(top_k=1))
    old = net.embed.weight.detach().clone()
    add_checkpoint(run_dir, net, cfg, 20)
    assert export_run(run_dir, tmp_path / "new").step == 20
    assert torch.equal(embedding(tmp_path / "new"), net.embed.weight)
    assert export_run(run_dir, tmp_path / "old", step=7).step == 7
    assert torch.equal(embedding(tmp_path / "old"), old)
    with pytest.raises(UserError, match=r"--step 9: no such checkpoint.*7, 20"):
        export_run(run_dir, tmp_path / "none", step=9)
    newest = dict(list_checkpoints(RunPaths(run_dir).checkpoints))[20]
    newest.write_bytes(newest.read_bytes()[:100])  # damaged (or pruned by a training run)
    assert export_run(run_dir, tmp_path / "fallback").step == 7  # the newest that loads
    with pytest.raises(UserError, match="step_00000020.pt does not load.*--step 7"):
        export_run(run_dir, tmp_path / "none", step=20)


def test_a_run_without_checkpoints_or_config_is_refused(tmp_path: Path, tokenizer: Tokenizer):
    run_dir, _, _ = make_run(tmp_path, tokenizer, tiny_model())
    for _, path in list_checkpoints(RunPaths(run_dir).checkpoints):
        path.unlink()
    with pytest.raises(UserError, match="holds no checkpoint: train the run first"):
        export_run(run_dir, tmp_path / "out")
    with pytest.raises(UserError, match="not a moescale run directory"):
        export_run(tmp_path / "elsewhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_of_another_config_is_refused(tmp_path: Path, tokenizer: Tokenizer):
    run_dir, _, _ = make_run(tmp_path, tokenizer, tiny_model())
    paths = RunPaths(run_dir)
    paths.config.write_text(paths.config.read_text().replace("d_ff: 64", "d_ff: 128"))
    with pytest.raises(UserError, match="does not match the run's config.yaml.*w1.weight"):
        export_run(run_dir, tmp_path / "out")


def test_export_is_atomic_and_replaces_only_with_force(
    tmp_path: Path, tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
):
    run_dir, _, _ = make_run(tmp_path, tokenizer, tiny_model())
    out = tmp_path / "out"
    out.mkdir()  # an empty directory is fine
    export_run(run_dir, out)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="not empty.*--force"):
        export_run(run_dir, out)

    def crash(*args: object) -> list[str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle, "write_model", crash)
    with pytest.raises(KeyboardInterrupt):
        export_run(run_dir, out, force=True)
    assert (out / "model.safetensors").read_bytes() == before  # the old export, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]  # nothing half-written
    monkeypatch.undo()
    export_run(run_dir, out, force=True, dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]


def test_force_never_replaces_the_run_or_what_is_not_an_export(
    tmp_path: Path, tokenizer: Tokenizer
):
    run_dir, _, _ = make_run(tmp_path, tokenizer, tiny_model())
    before = sorted(p.name for p in run_dir.rglob("*"))
    for out in (run_dir, tmp_path):  # the run itself, and a folder that holds it
        with pytest.raises(UserError, match="holds the run"):
            export_run(run_dir, out, force=True)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "config.json").write_text("{}")
    (other / "model.safetensors").write_text("x")
    (other / "drafts").mkdir()
    with pytest.raises(UserError, match="not a previous export"):
        export_run(run_dir, other, force=True)
    (other / "drafts").rmdir()
    (other / "model.safetensors").unlink()
    with pytest.raises(UserError, match="not a previous export"):
        export_run(run_dir, other, force=True)
    assert sorted(p.name for p in run_dir.rglob("*")) == before
    assert sorted(p.name for p in other.iterdir()) == ["config.json"]


def test_missing_tokenizer_names_the_flag(tmp_path: Path, tokenizer: Tokenizer):
    run_dir, _, _ = make_run(tmp_path, tokenizer, tiny_model())
    moved = tmp_path / "tok.json"
    RunPaths(run_dir).tokenizer.rename(moved)
    with pytest.raises(UserError, match="--tokenizer PATH"):
        export_run(run_dir, tmp_path / "out")
    assert export_run(run_dir, tmp_path / "out", tokenizer=moved).files == FILES


def test_cli(tmp_path: Path, tokenizer: Tokenizer, capsys: pytest.CaptureFixture[str]):
    run_dir, _, _ = make_run(tmp_path, tokenizer, tiny_model(top_k=1))
    out = tmp_path / "out"
    assert cli.main(["export", str(run_dir), str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["architecture"] == "MixtralForCausalLM" and res["step"] == 7
    config = json.loads((out / "config.json").read_text())
    assert config["num_local_experts"] == 16 and config["num_experts_per_tok"] == 4
    assert config["intermediate_size"] == 16 and config["max_position_embeddings"] == 32
    run_bad, _, _ = make_run(tmp_path / "b", tokenizer, tiny_model(router="sigmoid"))
    assert cli.main(["export", str(run_bad), str(tmp_path / "bad")]) == 2
    assert "model.moe.router: sigmoid" in capsys.readouterr().err

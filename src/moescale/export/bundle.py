"""A run directory -> a Hugging Face model directory, written all at once or not at all.

    OUT_DIR/
      model.safetensors        the weights (moescale.export.hf): contiguous, no shared storage;
                               a tied LM head is left out, as transformers expects
      config.json              the architecture and shapes
      generation_config.json   BOS/EOS = <|endoftext|>, so generation stops at a document end
      tokenizer.json           the run's own byte-level BPE, byte for byte
      tokenizer_config.json    PreTrainedTokenizerFast: loads tokenizer.json as it is, adds no
      special_tokens_map.json  BOS/EOS of its own and leaves decoded text untouched

Everything is written into a hidden sibling directory that is renamed to OUT_DIR at the end, so
a crash or Ctrl-C leaves the previous OUT_DIR (or none), never half an export.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moescale.atomic import fsync_dir
from moescale.config import ModelConfig, config_from_dict, read_yaml
from moescale.data.documents import EOS
from moescale.errors import UserError
from moescale.export.hf import HFModel, to_hf
from moescale.run import RunPaths

logger = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"


@dataclass
class ExportResult:
    """What `export_run` wrote, for the command's line and its --json."""

    out_dir: str
    architecture: str
    step: int
    dtype: str
    parameters: int  # every exported weight, embeddings included (a tied head counted once)
    files: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_model_config(paths: RunPaths) -> ModelConfig:
    if not paths.config.is_file():
        raise UserError(
            f"{paths.config} does not exist: {paths.dir} is not a moescale run directory "
            "(give the train.out_dir of a run)."
        )
    return config_from_dict(read_yaml(paths.config)).model


def read_checkpoint(paths: RunPaths, step: int | None) -> tuple[int, dict[str, Any]]:
    """(step, state) of checkpoint `step`, or of the newest one that loads (a damaged one, or
    one a training run prunes meanwhile, is skipped with a warning); errors say which exist."""
    from moescale.train.checkpoint import list_checkpoints, load_checkpoint, load_latest

    found = list_checkpoints(paths.checkpoints)
    if not found:
        raise UserError(
            f"{paths.checkpoints} holds no checkpoint: train the run first (moescale train "
            "CONFIG) or let it reach its first train.checkpoint_every step."
        )
    steps = [s for s, _ in found]
    if step is not None and step not in steps:
        raise UserError(f"--step {step}: no such checkpoint; {paths.checkpoints} holds steps "
                        f"{', '.join(map(str, steps))}.")  # fmt: skip
    if step is None:
        newest = load_latest(paths.checkpoints)
        if newest is None:
            raise UserError(f"no checkpoint in {paths.checkpoints} loads (see the warnings).")
        return newest
    chosen, path = step, dict(found)[step]
    try:
        return chosen, load_checkpoint(path)
    except ValueError as exc:
        others = [s for s in steps if s != chosen]
        hint = f"; export another with --step {others[-1]}" if others else ""
        raise UserError(f"{path} does not load ({exc}){hint}.") from None


def tokenizer_files(path: Path, cfg: ModelConfig) -> tuple[dict[str, bytes], int]:
    """The tokenizer's files for OUT_DIR and the id of `<|endoftext|>`.

    `PreTrainedTokenizerFast` reads tokenizer.json unchanged (a model-specific class such as
    LlamaTokenizerFast would add its own BOS), and clean_up_tokenization_spaces: false keeps
    decode(encode(text)) == text, as our byte-level BPE guarantees."""
    from moescale.data.tokenizer import load_tokenizer

    if not path.is_file():
        raise UserError(
            f"{path} does not exist: give the run's tokenizer with --tokenizer PATH (the "
            "tokenizer.json of its data cache; runs copy it into their directory since it "
            "was added)."
        )
    raw = path.read_bytes()
    tok = load_tokenizer(path)
    eos = tok.token_to_id(EOS)
    if eos is None:
        raise UserError(f"{path} has no {EOS} token: not a moescale tokenizer.")
    if tok.get_vocab_size() > cfg.vocab_size:
        raise UserError(f"{path} has {tok.get_vocab_size()} tokens, more than "
                        f"model.vocab_size = {cfg.vocab_size}: give the tokenizer this run "
                        "trained with.")  # fmt: skip
    special = {"bos_token": EOS, "eos_token": EOS}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "model_max_length": cfg.seq_len,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    return {
        "tokenizer.json": raw,
        "tokenizer_config.json": _json(config),
        "special_tokens_map.json": _json(special),
    }, int(eos)


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def write_model(model: HFModel, directory: Path, metadata: dict[str, str]) -> list[str]:
    """model.safetensors, config.json and generation_config.json into `directory`."""
    from safetensors.torch import save_file

    save_file(model.tensors, str(directory / WEIGHTS), metadata={"format": "pt", **metadata})
    generation = {"bos_token_id": model.config["bos_token_id"],
                  "eos_token_id": model.config["eos_token_id"]}  # fmt: skip
    (directory / "config.json").write_bytes(_json(model.config))
    (directory / "generation_config.json").write_bytes(_json(generation))
    return [WEIGHTS, "config.json", "generation_config.json"]


def check_out_dir(out: Path, force: bool, run_dir: Path | None = None) -> None:
    """Before any work: OUT_DIR must be new, empty, or a previous export replaced on purpose
    (--force). --force replaces only what looks like an export (its config.json and weights,
    no subdirectory): `export runs/x runs/x --force`, or a parent folder, deleted the run."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file: give a directory to export into.")
    if run_dir is not None and out.resolve() in (run_dir.resolve(), *run_dir.resolve().parents):
        raise UserError(f"{out} holds the run {run_dir} itself: export into another directory.")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise UserError(f"{out} already exists and is not empty: choose another directory, or "
                        "pass --force to replace a previous export there.")  # fmt: skip
    entries = list(out.iterdir())
    names = {p.name for p in entries}
    if not {WEIGHTS, "config.json"} <= names or any(p.is_dir() for p in entries):
        raise UserError(f"{out} is not a previous export (no {WEIGHTS} and config.json, or it has "
                        "subdirectories): --force replaces only an export; choose another "
                        "directory.")  # fmt: skip


def write_dir_atomically(out: Path, fill: Callable[[Path], None], force: bool) -> None:
    """`fill(tmp)` writes the files into a hidden sibling of `out`, which is then renamed to
    `out`. With `force`, a previous `out` is moved aside first and deleted after the rename."""
    check_out_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    old: Path | None = None
    try:
        fill(tmp)
        mask = os.umask(0)
        os.umask(mask)
        for path in tmp.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(path, 0o666 & ~mask)  # safetensors writes its file 0600
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700
        if out.is_dir() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old)  # onto the empty directory mkdtemp made
        os.replace(tmp, out)  # onto nothing, or an empty directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)  # put the previous export back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(out.parent)


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    step: int | None = None,
    dtype: str = "float32",
    tokenizer: str | Path | None = None,
    force: bool = False,
) -> ExportResult:
    """Export checkpoint `step` (default: the newest) of `run_dir` as a Hugging Face model
    directory `out_dir` that `AutoModelForCausalLM.from_pretrained` and
    `AutoTokenizer.from_pretrained` load without custom code."""
    paths, out = RunPaths(Path(run_dir)), Path(out_dir)
    check_out_dir(out, force, paths.dir)
    cfg = read_model_config(paths)
    if cfg.moe is not None and cfg.moe.capacity_factor is not None:
        logger.warning(f"export: the run trained with model.moe.capacity_factor "
                       f"{cfg.moe.capacity_factor:g} (token dropping); the exported model is "
                       "dropless, as `moescale eval` evaluates it")  # fmt: skip
    tok_files, eos_id = tokenizer_files(Path(tokenizer) if tokenizer else paths.tokenizer, cfg)
    chosen, state = read_checkpoint(paths, step)
    model = to_hf(cfg, state["model"], eos_id, dtype)
    del state
    meta = {"moescale_run": paths.dir.resolve().name, "moescale_step": str(chosen)}
    files: list[str] = []

    def fill(directory: Path) -> None:
        files.extend(write_model(model, directory, meta))
        for name, data in tok_files.items():
            (directory / name).write_bytes(data)
            files.append(name)

    write_dir_atomically(out, fill, force)
    n_params = sum(t.numel() for t in model.tensors.values())
    # debug: the command prints its own line, and `--json -` wants stdout to itself
    logger.debug("export: step %d of %s as %s (%s) -> %s", chosen, paths.dir,
                 model.architecture, dtype, out)  # fmt: skip
    return ExportResult(str(out), model.architecture, chosen, dtype, n_params, sorted(files))

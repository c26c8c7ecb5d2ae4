"""A trained run as a Hugging Face model: `moescale export RUN_DIR OUT_DIR`.

`hf` maps our transformer onto a transformers architecture that computes exactly the same
function (Llama, Mixtral, Qwen2-MoE) or refuses, naming the config key; `bundle` reads the run
directory (config, checkpoint, tokenizer) and writes the model directory atomically.
"""

from moescale.export.bundle import ExportResult, export_run
from moescale.export.hf import HFModel, choose_architecture, refusals, to_hf

__all__ = ["ExportResult", "HFModel", "choose_architecture", "export_run", "refusals", "to_hf"]

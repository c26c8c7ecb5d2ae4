"""An exported run scored by lm-eval's own `hf` model gives our adapter's log-likelihoods."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_tasks import ITEMS


def test_exported_model_through_lm_eval_hf_matches_the_moescale_adapter(loaded, dense_run: Path,
                                                                        tmp_path: Path):
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")  # lm-eval's hf model needs it
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from moescale.eval.harness import MoescaleLM
    from moescale.export import export_run

    out = tmp_path / "hf"
    export_run(dense_run, out)
    reqs = [Instance("loglikelihood", {}, (item["question"], " " + c), 0)
            for item in ITEMS for c in item["choices"]]  # fmt: skip
    ours = [lp for lp, _ in MoescaleLM(run=loaded).loglikelihood(reqs)]
    # our adapter starts every context after <|endoftext|>, as training saw documents begin;
    # the exported tokenizer declares it as BOS, so lm-eval's add_bos_token does the same
    hf = HFLM(pretrained=str(out), device="cpu", dtype="float32", batch_size=2, add_bos_token=True)
    theirs = [lp for lp, _ in hf.loglikelihood(reqs)]
    assert theirs == pytest.approx(ours, rel=1e-4, abs=1e-4)

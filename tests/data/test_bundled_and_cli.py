"""The `moescale corpus` command on tiny inputs, and the real bundled corpus when available."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from moescale.data import cli
from moescale.data import corpus as C

from .conftest import make_docs


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_cli_tokenize_builds_then_reuses(
    tmp_path: Path, txt_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  vocab_size: 512\ndata:\n  corpus: ['{txt_dir}']\n")
    args = ["tokenize", str(config), "--set", "model.vocab_size=300", "--cache-dir", str(tmp_path)]
    assert _run(args) == 0
    out = capsys.readouterr().out
    assert "validation" in out and "uint16, vocab 300" in out and "built in" in out
    assert _run(args) == 0
    assert "reused in" in capsys.readouterr().out


def test_cli_build_reuses_cache_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def fake(tmp: Path) -> dict[str, list[C.Document]]:
        return {"fake": [C.Document("fake", str(i), d) for i, d in enumerate(make_docs(20))]}

    C.build_bundled_corpus(tmp_path, sources={"fake==1": fake}, log=lambda s: None)
    assert _run(["build", "--cache-dir", str(tmp_path)]) == 0  # no network: cache is whole
    out = capsys.readouterr().out
    assert "total: 20 documents" in out and "validation 1 documents" in out


def _bundled_available() -> bool:
    if os.environ.get("MOESCALE_TEST_NETWORK") == "1":
        return True
    return C.read_bundled_manifest(C.bundled_dir()) is not None


@pytest.mark.skipif(
    not _bundled_available(),
    reason="bundled corpus not cached (run `moescale corpus build` or set MOESCALE_TEST_NETWORK=1)",
)
def test_real_bundled_corpus() -> None:
    split = C.load_bundled(log=lambda s: None)
    directory = C.bundled_dir()
    manifest = C.read_bundled_manifest(directory)
    assert manifest is not None and manifest["sha256"] == split.sha256
    assert {"shakespeare", "milton", "kjv"} <= set(manifest["sources"])
    assert len(split.val) >= 1 and len(split.train) + len(split.val) == manifest["documents"]
    assert 0.02 < manifest["val"]["bytes"] / manifest["train"]["bytes"] < 0.15
    assert not set(split.train) & set(split.val)
    text = (directory / "train.txt").read_text()
    for junk in ("*** START OF", "Project Gutenberg", "\r", "\t", "\ufeff"):
        assert junk not in text

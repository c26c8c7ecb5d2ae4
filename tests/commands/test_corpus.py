"""The `moescale corpus` command on tiny inputs, offline."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from moescale.commands import corpus as command
from moescale.data.bundled import build_bundled_corpus
from moescale.data.documents import Document

from ..data.conftest import make_docs


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


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
    def fake(tmp: Path) -> dict[str, list[Document]]:
        return {"fake": [Document("fake", str(i), d) for i, d in enumerate(make_docs(20))]}

    build_bundled_corpus(tmp_path, sources={"fake==1": fake})
    assert _run(["build", "--cache-dir", str(tmp_path)]) == 0  # no network: cache is whole
    out = capsys.readouterr().out
    assert "total: 20 documents" in out and "validation 1 documents" in out

"""The bundled corpus cache on fake sources, and the real bundled corpus when available."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from moescale.data.bundled import (
    build_bundled_corpus,
    bundled_dir,
    load_bundled,
    read_bundled_manifest,
)
from moescale.data.cache import sha256_file
from moescale.data.documents import Document
from moescale.errors import UserError

from .conftest import make_docs


def _fake_source(docs: list[str]):
    def fetch(tmp: Path) -> dict[str, list[Document]]:
        return {"fake": [Document("fake", f"d{i}", d) for i, d in enumerate(docs)]}

    return fetch


def _broken_source(tmp: Path) -> dict[str, list[Document]]:
    raise RuntimeError("registry unreachable")


def _warnings(log: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in log.records if r.levelno == logging.WARNING]


def test_bundled_build_is_cached_and_tolerates_missing_sources(
    tmp_path: Path, data_log: pytest.LogCaptureFixture
) -> None:
    sources = {"fake==1": _fake_source(make_docs(30, seed=6)), "broken==1": _broken_source}
    directory, manifest = build_bundled_corpus(tmp_path, sources=sources)
    (warning,) = _warnings(data_log)  # one warning per missing source, and nothing else
    assert "broken==1" in warning and "registry unreachable" in warning
    assert manifest["missing_sources"] == ["broken==1"]
    assert manifest["sources"]["fake"]["documents"] == 30
    assert manifest["val"]["documents"] == 2 and manifest["train"]["documents"] == 28
    assert manifest["train"]["sha256"] == sha256_file(directory / "train.txt")
    assert not list(directory.glob("*.tmp"))
    # a complete cache is reused without calling any source
    data_log.clear()
    again_dir, again = build_bundled_corpus(tmp_path, sources={"broken==1": _broken_source})
    assert again == manifest and not _warnings(data_log)
    # an incomplete one (no manifest: the build was killed) is rebuilt
    (directory / "manifest.json").unlink()
    with pytest.raises(UserError, match="no source could be fetched.*broken==1"):
        build_bundled_corpus(tmp_path, sources={"broken==1": _broken_source})
    assert any("broken==1" in w for w in _warnings(data_log))


def _bundled_available() -> bool:
    if os.environ.get("MOESCALE_TEST_NETWORK") == "1":
        return True
    return read_bundled_manifest(bundled_dir()) is not None


@pytest.mark.skipif(
    not _bundled_available(),
    reason="bundled corpus not cached (run `moescale corpus build` or set MOESCALE_TEST_NETWORK=1)",
)
def test_real_bundled_corpus() -> None:
    split = load_bundled()
    directory = bundled_dir()
    manifest = read_bundled_manifest(directory)
    assert manifest is not None and manifest["sha256"] == split.sha256
    assert {"shakespeare", "milton", "kjv"} <= set(manifest["sources"])
    assert len(split.val) >= 1 and len(split.train) + len(split.val) == manifest["documents"]
    assert 0.02 < manifest["val"]["bytes"] / manifest["train"]["bytes"] < 0.15
    assert not set(split.train) & set(split.val)
    text = (directory / "train.txt").read_text()
    for junk in ("*** START OF", "Project Gutenberg", "\r", "\t", "\ufeff"):
        assert junk not in text

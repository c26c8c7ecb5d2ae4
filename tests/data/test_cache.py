"""Where the caches live."""

from __future__ import annotations

from pathlib import Path

import pytest

from moescale.data.cache import cache_root


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOESCALE_CACHE", str(tmp_path / "env"))
    assert cache_root(None) == tmp_path / "env"
    assert cache_root(str(tmp_path / "arg")) == tmp_path / "arg"
    monkeypatch.delenv("MOESCALE_CACHE")
    assert cache_root(None) == Path.home() / ".cache" / "moescale"

"""`write_report`: a self-contained page whose every image is a PNG that decodes, that says
every claim, and that replaces a figure it cannot draw with the reason."""

from __future__ import annotations

import base64
import io
import re
from html import escape

import matplotlib.image
import numpy as np
import pytest

from moescale.report import write_report
from tests.report.synthetic import analysis, report, study

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = (
    "loss_vs_compute",
    "isoflop",
    "allocation",
    "holdout",
    "loss_vs_tokens",
    "granularity_gap",
    "heatmap_batch",
    "heatmap_lr",
    "hyper_laws",
    "noise_scale",
)


def images(html: str) -> list[bytes]:
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', html)
    out = []
    for src in srcs:
        assert src.startswith("data:image/png;base64,"), src[:40]
        out.append(base64.b64decode(src.split(",", 1)[1], validate=True))
    return out


@pytest.mark.parametrize("kind", ["full", "minimal"])
def test_every_image_is_an_embedded_png_that_decodes(kind: str) -> None:
    path = report(kind)
    html = path.read_text(encoding="utf-8")
    pngs = images(html)
    assert pngs
    for data in pngs:
        assert data.startswith(PNG)
        img = matplotlib.image.imread(io.BytesIO(data), format="png")
        assert img.ndim == 3 and img.shape[0] >= 300 and img.shape[1] >= 900
        assert float(np.std(img)) > 0.01  # not a blank canvas
    files = sorted(p.stem for p in (path.parent / "figures").glob("*.png"))
    assert len(files) == len(pngs)
    if kind == "full":
        assert set(files) == set(FIGURES)


@pytest.mark.parametrize("kind", ["full", "minimal"])
def test_page_is_self_contained_and_says_every_claim(kind: str) -> None:
    html = report(kind).read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "<script" not in html and "@import" not in html
    for claim in analysis(kind)["claims"]:
        assert escape(claim) in html
    for budget in ("1e+18", "1e+20"):
        assert f"<td>{budget}</td>" in html  # the plan table
    assert "Synthetic" in html and "seed: 0" in html


def test_skipped_sections_show_their_reason_instead_of_a_figure() -> None:
    html = report("minimal").read_text(encoding="utf-8")
    a = analysis("minimal")
    assert html.count("Not drawn:") == 5  # both heatmaps, hyper laws, noise scale, accuracy
    assert "no downstream evaluation in this study" in html
    assert escape(a["hyper"]["skipped"]) in html
    assert escape(a["noise_scale"]["skipped"]) in html
    assert escape(a["laws"]["moe"]["laws"]["wang"]["skipped"]) in html  # the laws table


def test_results_table_lists_every_row(tmp_path) -> None:
    results, curves = study("minimal")
    dense = [r for r in results if r["variant"] == "dense"]
    from moescale.study.analyze import analyze

    a = analyze(dense, curves, budgets=(1e19,), bootstrap=0)
    html = write_report(tmp_path, dense, curves, a).read_text(encoding="utf-8")
    for r in dense:
        assert f"<code>{r['run']}</code>" in html
    assert len(images(html)) >= 4  # laws, IsoFLOP, allocation, hold-out, curves
    assert "Not drawn:" in html  # fine-grained gap, hyper, noise

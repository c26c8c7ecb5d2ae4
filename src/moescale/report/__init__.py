"""The study report: matplotlib figures and one self-contained HTML page (no torch).

`write_report(out_dir, results, curves, analysis)` writes out_dir/report.html (figures embedded
as PNG data URIs) and out_dir/figures/*.png from the analysis of `moescale.study.analyze`.
"""

from moescale.report.page import write_report

__all__ = ["write_report"]

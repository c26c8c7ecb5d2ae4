"""moescale: should this compute budget go to a dense model, a standard MoE or a fine-grained MoE?

Importing the package loads nothing heavy; import `moescale.model`, `moescale.laws`, ... directly.
"""

__version__ = "0.1.0"

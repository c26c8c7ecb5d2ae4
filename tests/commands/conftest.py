"""The command tests reuse the data tests' tiny corpora."""

from ..data.conftest import txt_dir  # noqa: F401 (a fixture)

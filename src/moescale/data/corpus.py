"""`data.corpus` to split documents: the one entry point from a config to corpus text.

"bundled" means the cached public-domain corpus of `moescale.data.bundled`; anything else is
paths or globs of the user's own files (`moescale.data.user_files`). Either way the result is a
`SplitCorpus`: train and validation documents and the hash that names their token cache.
"""

from __future__ import annotations

from moescale.data.bundled import load_bundled
from moescale.data.documents import SplitCorpus
from moescale.data.user_files import expand_paths, load_user_files


def load_corpus(
    corpus: str | list[str],
    text_field: str = "text",
    text_column: str = "text",
    val_fraction: float = 0.05,
    cache_dir: str | None = None,
) -> SplitCorpus:
    """`data.corpus` to split documents: "bundled" or paths/globs of the user's files.

    The bundled corpus has its own fixed validation fraction; `val_fraction` applies to the
    user's files only.
    """
    patterns = user_patterns(corpus)
    if patterns is None:
        return load_bundled(cache_dir)
    return load_user_files(patterns, text_field, text_column, val_fraction)


def user_patterns(corpus: str | list[str]) -> list[str] | None:
    """The user's paths/globs of `data.corpus`; None for the bundled corpus."""
    if corpus == "bundled" or corpus == ["bundled"]:
        return None
    return [corpus] if isinstance(corpus, str) else list(corpus)


def check_corpus(corpus: str | list[str]) -> None:
    """A UserError naming data.corpus when a path or glob matches no file: checked before a run
    directory or a study's runs exist, so a typo leaves nothing behind."""
    patterns = user_patterns(corpus)
    if patterns is not None:
        expand_paths(patterns)

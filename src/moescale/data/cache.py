"""Where the caches live, the lock that lets parallel workers share them, and file hashes.

Everything this package builds (the bundled corpus, tokenizers, token shards) is cached under
one root: an explicit `data.cache_dir`, else $MOESCALE_CACHE, else ~/.cache/moescale.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Cache location: explicit argument, then $MOESCALE_CACHE, then ~/.cache/moescale."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MOESCALE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "moescale"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so parallel sweep workers build a cache once instead of racing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: atomic renames still keep caches whole
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

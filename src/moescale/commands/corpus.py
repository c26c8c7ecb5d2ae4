"""Build the bundled corpus, or tokenize a config's corpus into cached shards.

  moescale corpus build [--cache-dir DIR] [--force]
  moescale corpus tokenize CONFIG.yaml [--set key=value ...] [--cache-dir DIR]

The cache lives in data.cache_dir, else $MOESCALE_CACHE, else ~/.cache/moescale.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from moescale.commands import add_set_flag
from moescale.fmt import count, duration, human, sig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="corpus_command", metavar="ACTION")
    sub.required = True
    b = sub.add_parser("build", help="fetch, clean, split and cache the bundled corpus")
    b.add_argument("--cache-dir", default=None, help="cache root (default: $MOESCALE_CACHE or "
                   "~/.cache/moescale)")  # fmt: skip
    b.add_argument("--force", action="store_true", help="rebuild even if a cache exists")
    t = sub.add_parser("tokenize", help="train the tokenizer and write token shards for a config")
    t.add_argument("config", help="YAML config (its data: and model.vocab_size are used)")
    add_set_flag(t)
    t.add_argument("--cache-dir", default=None, help="cache root (overrides data.cache_dir)")


def run(args: argparse.Namespace) -> int:
    if args.corpus_command == "build":
        return _build(args)
    return _tokenize(args)


def _build(args: argparse.Namespace) -> int:
    from moescale.data import build_bundled_corpus

    t0 = time.time()
    directory, manifest = build_bundled_corpus(args.cache_dir, force=args.force)
    print(summarize_manifest(manifest))
    print(f"corpus: {directory} ({duration(time.time() - t0)})")
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from moescale.config import load_config
    from moescale.data import prepare_data

    cfg = load_config(args.config, args.overrides)
    if args.cache_dir:
        cfg.data.cache_dir = args.cache_dir
    t0 = time.time()
    prepared = prepare_data(cfg.data, cfg.model.vocab_size)
    m = prepared.manifest
    print(
        f"tokens: {count(m['train']['tokens'])} train ({m['train']['documents']} documents), "
        f"{count(m['val']['tokens'])} validation ({m['val']['documents']} documents); "
        f"{m['dtype']}, vocab {m['vocab_size']} ({m['tokenizer_vocab']} learned), "
        f"{sig(m['bytes_per_token'], 4)} bytes/token"
    )
    print(f"shards: {prepared.dir}")
    print(f"tokenizer: {prepared.tokenizer_path}")
    print(f"{'built' if prepared.built else 'reused'} in {duration(time.time() - t0)}")
    return 0


def _size(n_bytes: float) -> str:
    return human(n_bytes) + "B"


def summarize_manifest(manifest: dict[str, Any]) -> str:
    """Human summary of a bundled-corpus manifest: one row per source, then the totals."""
    lines = [f"{'source':<12} {'package':<32} {'docs':>6} {'size':>7} {'train':>6} {'val':>5}"]
    for name, s in sorted(manifest["sources"].items()):
        lines.append(
            f"{name:<12} {str(s.get('package', '')):<32} {s['documents']:>6} "
            f"{_size(s['bytes']):>7} {s['train_documents']:>6} {s['val_documents']:>5}"
        )
    tr, va = manifest["train"], manifest["val"]
    lines.append(
        f"total: {manifest['documents']} documents, {_size(tr['bytes'] + va['bytes'])}; "
        f"train {tr['documents']} documents ({_size(tr['bytes'])}), "
        f"validation {va['documents']} documents ({_size(va['bytes'])})"
    )
    if manifest.get("missing_sources"):
        lines.append("missing sources: " + ", ".join(manifest["missing_sources"]))
    lines.append(f"sha256: {manifest['sha256']}")
    return "\n".join(lines)

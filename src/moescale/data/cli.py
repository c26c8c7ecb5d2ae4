"""Build the bundled corpus, or tokenize a config's corpus into cached shards.

  moescale corpus build [--cache-dir DIR] [--force]
  moescale corpus tokenize CONFIG.yaml [--set key=value ...] [--cache-dir DIR]

The cache lives in data.cache_dir, else $MOESCALE_CACHE, else ~/.cache/moescale.
"""

from __future__ import annotations

import argparse
import time
import warnings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="corpus_command", metavar="ACTION")
    sub.required = True
    b = sub.add_parser("build", help="fetch, clean, split and cache the bundled corpus")
    b.add_argument("--cache-dir", default=None, help="cache root (default: $MOESCALE_CACHE or "
                   "~/.cache/moescale)")  # fmt: skip
    b.add_argument("--force", action="store_true", help="rebuild even if a cache exists")
    t = sub.add_parser("tokenize", help="train the tokenizer and write token shards for a config")
    t.add_argument("config", help="YAML config (its data: and model.vocab_size are used)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.vocab_size=8192")  # fmt: skip
    t.add_argument("--cache-dir", default=None, help="cache root (overrides data.cache_dir)")


def run(args: argparse.Namespace) -> int:
    if args.corpus_command == "build":
        return _build(args)
    return _tokenize(args)


def _build(args: argparse.Namespace) -> int:
    from moescale.data.corpus import build_bundled_corpus, summarize_manifest

    t0 = time.time()
    with warnings.catch_warnings():  # a missing source is already reported on the log
        warnings.simplefilter("ignore", UserWarning)
        directory, manifest = build_bundled_corpus(args.cache_dir, force=args.force, log=print)
    print(summarize_manifest(manifest))
    print(f"corpus: {directory} ({time.time() - t0:.1f} s)")
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from moescale.config import load_config
    from moescale.data.dataset import prepare_data

    cfg = load_config(args.config, args.overrides)
    if args.cache_dir:
        cfg.data.cache_dir = args.cache_dir
    t0 = time.time()
    prepared = prepare_data(cfg.data, cfg.model.vocab_size, log=print)
    m = prepared.manifest
    print(
        f"tokens: {m['train']['tokens']:,} train ({m['train']['documents']} documents), "
        f"{m['val']['tokens']:,} validation ({m['val']['documents']} documents); "
        f"{m['dtype']}, vocab {m['vocab_size']} ({m['tokenizer_vocab']} learned), "
        f"{m['bytes_per_token']} bytes/token"
    )
    print(f"shards: {prepared.dir}")
    print(f"tokenizer: {prepared.tokenizer_path}")
    print(f"{'built' if prepared.built else 'reused'} in {time.time() - t0:.1f} s")
    return 0

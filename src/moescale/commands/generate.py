"""Sample text from a trained run's checkpoint.

  moescale generate RUN --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-k K]
                        [--top-p P] [--seed S] [--step N] [--json [OUT]]

--temperature 0 is greedy decoding (the most likely token each step; --top-k and --top-p are
then moot); otherwise tokens are drawn at temperature T from the K most likely (--top-k) and
the smallest set holding probability P (--top-p), reproducibly for a given --seed. The prompt
is read as the start of a document (it follows <|endoftext|>); the context is cropped to the
run's seq_len; generation stops after N tokens or at <|endoftext|>. Prints the prompt followed
by the generated text.
"""

from __future__ import annotations

import argparse

from moescale.commands import STDOUT, add_checkpoint_flags, add_json_flag, emit_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="a run directory (train.out_dir)")
    parser.add_argument("--prompt", required=True, help="the text to continue ('' for none)")
    parser.add_argument("--max-new-tokens", type=int, default=100, metavar="N",
                        help="tokens to generate at most (default 100)")  # fmt: skip
    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        metavar="T",
        help="0: greedy; higher: more varied (default 1.0)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=None,
        metavar="K",
        help="sample among the K most likely tokens only",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=None,
        metavar="P",
        help="sample among the most likely tokens holding probability P",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="S",
        help="seed of the sampling (default: a fresh one each time)",
    )
    add_checkpoint_flags(parser)
    add_json_flag(parser, "the prompt, the generated text and the settings")


def run(args: argparse.Namespace) -> int:
    from moescale.commands import logs_to_stderr
    from moescale.eval import Sampling, generate, load_run
    from moescale.train.device import set_threads

    opts = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, seed=args.seed)  # fmt: skip
    opts.check()  # before the checkpoint is loaded
    with logs_to_stderr(args.json_out == STDOUT):
        set_threads(args.threads)
        loaded = load_run(args.run_dir, args.step, args.device)
        text = generate(loaded, args.prompt, opts)
    if args.json_out:
        emit_json({"run": str(loaded.dir), "step": loaded.step, "prompt": args.prompt,
                   "text": text, "sampling": vars(opts)}, args.json_out)  # fmt: skip
        if args.json_out == STDOUT:
            return 0
    print(args.prompt + text)
    return 0

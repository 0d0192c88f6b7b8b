"""``python -m llmscope.replicate seed002 --model grammar-2l [--out DIR]``: run a replication
offline, print its table (one row per layer), and write CSV tables and HTML figures.

Every argument is checked before any work; a bad one prints one line (``python -m
llmscope.replicate: error: ...``) and exits with status 2, as argparse does. ``TQDM_DISABLE=1`` silences the progress bar."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def _parser(studies: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llmscope.replicate", description=__doc__)
    parser.add_argument("study", choices=studies)
    parser.add_argument("--model", default="grammar-2l", help="a model name llmscope.load takes (default grammar-2l)")
    parser.add_argument("--out", help="folder for the CSV tables and HTML figures (made if missing)")
    parser.add_argument("--method", default="ig", choices=["ig", "grad_x_act", "activation"])
    parser.add_argument("--steps", type=int, default=64, help="Integrated Gradients points (cost is linear in them; default 64)")
    parser.add_argument("--n-docs", type=int, default=40, help="documents / template sentences per train and test set")
    parser.add_argument("--layers", type=int, nargs="*", help="layers to decode (default all)")
    parser.add_argument("--ks", type=int, nargs="*", help="set sizes of the accuracy-against-k curve (default 1 2 5 10 20 50 100)")
    parser.add_argument("--n-controls", "--n-random", dest="n_controls", type=int, default=5,
                        help="random draws of every control (default 5; --n-random is the old name)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds, whole sequences (default 5)")
    parser.add_argument("--lesion-layers", type=int, nargs="*", help="layers of the lesion test, among --layers (default: --layers)")
    return parser


def _writable(out: str) -> str | None:
    """Why ``out`` cannot take the tables, or None when it can (checked before any work)."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        return f"--out {out}: is a file, not a folder; give a folder path"
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"--out {out}: cannot write in {existing}; choose a folder you can write to"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return f"--out {out}: cannot write there ({exc.strerror or exc}); choose a folder you can write to"
    return None


def main(argv: list[str] | None = None) -> int:
    from llmscope.replicate import STUDIES

    parser = _parser(sorted(STUDIES))
    args = parser.parse_args(argv)
    if args.out is not None and (why := _writable(args.out)):
        parser.exit(2, f"{parser.prog}: error: {why}\n")

    import llmscope
    from llmscope.errors import LLMScopeError

    start = time.perf_counter()
    options = {} if args.ks is None else {"ks": args.ks}
    try:
        model = llmscope.load(args.model)
        result = STUDIES[args.study](model, n_docs=args.n_docs, method=args.method, steps=args.steps,
                                     layers=args.layers, lesion_layers=args.lesion_layers, n_controls=args.n_controls,
                                     folds=args.folds, **options)
    except LLMScopeError as exc:  # a bad argument, found before any work: one line, as argparse does
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 3):
        print(result.table.to_string(index=False))
        if not result.lesions.empty:
            print("\nlesion test (loss change in nats):")
            print(result.lesions.to_string(index=False))
    print(f"\n{args.study} on {args.model}: {time.perf_counter() - start:.0f} s")
    if args.out:
        for path in result.save(args.out):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m llmscope.replicate seed002 --model grammar-2l [--out DIR] [--quick]``: run a
replication offline, print its table (one row per layer), and write CSV tables and HTML figures."""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd


def main(argv: list[str] | None = None) -> int:
    from llmscope.replicate import STUDIES

    parser = argparse.ArgumentParser(prog="python -m llmscope.replicate", description=__doc__)
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--model", default="grammar-2l", help="a model name llmscope.load takes (default grammar-2l)")
    parser.add_argument("--out", help="folder for the CSV tables and HTML figures")
    parser.add_argument("--method", default="ig", choices=["ig", "grad_x_act", "activation"])
    parser.add_argument("--steps", type=int, default=64, help="Integrated Gradients points (cost is linear in them; default 64)")
    parser.add_argument("--n-docs", type=int, default=40, help="documents / template sentences per train and test set")
    parser.add_argument("--layers", type=int, nargs="*", help="layers to decode (default all)")
    parser.add_argument("--ks", type=int, nargs="*", help="set sizes of the accuracy-against-k curve (default 1 2 5 10 20 50 100)")
    parser.add_argument("--n-random", type=int, default=5, help="random draws of every control (default 5)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds, whole sequences (default 5)")
    parser.add_argument("--lesion-layers", type=int, nargs="*", help="layers of the lesion test (default: --layers)")
    args = parser.parse_args(argv)

    import llmscope

    start = time.perf_counter()
    model = llmscope.load(args.model)
    options = {} if args.ks is None else {"ks": args.ks}
    result = STUDIES[args.study](model, n_docs=args.n_docs, method=args.method, steps=args.steps, layers=args.layers,
                                 lesion_layers=args.lesion_layers, n_random=args.n_random, folds=args.folds, **options)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 3):
        print(result.table.to_string(index=False))
        if not result.lesions.empty:
            print("\nlesion test (loss change in nats; specificity = class effect / random effect):")
            print(result.lesions.to_string(index=False))
    print(f"\n{args.study} on {args.model}: {time.perf_counter() - start:.0f} s")
    if args.out:
        for path in result.save(args.out):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""rll-repro reproduce: rerun a setting end to end (the shipped digits demo needs no download)."""
from __future__ import annotations

HELP = "rerun a setting end to end; 'digits' trains RLL on scikit-learn's digits in about a minute"
DESCRIPTION = """\
`rll-repro reproduce digits` is the shipped end-to-end demo (no download, a minute or two on 2 CPU
cores): scikit-learn's 8x8 digits, train classes 0-4 / test classes 5-9, our digits prototxts
(prototxt/digits: Conv-BN-Scale-ReLU x 2, 32-d embedding, RLL loss), multistep SGD for 300
iterations, then the TEST-phase embedding of the test classes and Recall@1,2,4,8, printed next to
the numbers a real RLL Caffe got on the same demo. The run folder gets train.log (Caffe format),
curves.png (loss and learning rate), the final caffemodel + solverstate, history.json,
test_features.npy and results.json.

The paper settings (`--list` shows them) need their data sets and the ImageNet BN-Inception weights;
for those this command prints what would run, and `rll-repro train --data SETTING` trains.

examples:
  rll-repro reproduce digits
  rll-repro reproduce digits --out runs/digits --max-iter 100
  rll-repro reproduce --list
"""


def add_arguments(parser) -> None:
    parser.add_argument("setting", nargs="?", default="digits", help="setting name (default digits)")
    parser.add_argument("--out", help="run folder (default runs/<setting>)")
    parser.add_argument("--max-iter", type=int, help="train fewer iterations than the solver's max_iter")
    parser.add_argument("--seed", type=int, default=None, help="sampler seed (default 123)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: fastest for this tiny net on a shared machine)")
    parser.add_argument("--list", action="store_true", help="list the known settings and exit")
    parser.add_argument("--verbose", action="store_true", help="echo the Caffe-format log to stderr")


def run(args) -> int:
    import sys
    import time

    import torch

    if args.list:
        from rll_repro import recipes

        print("digits: the shipped demo (scikit-learn digits, RLL, 300 iterations, no download)")
        for name in recipes.names():
            if name != "digits":
                print(f"{name}: {recipes.get(name).description}")
        return 0
    if args.setting != "digits":
        from rll_repro import recipes
        from rll_repro.errors import DataError

        setting = recipes.get(args.setting)
        print(setting.describe())
        raise DataError(f"setting {args.setting} needs its data ({', '.join(setting.data_files)}) and "
                        f"{setting.pretrained_weights}; train it with: rll-repro train --solver "
                        f"{setting.solver.path} --weights {setting.pretrained_weights} --data {setting.name} "
                        f"--list {setting.data_files[0]} --data-root DIR")
    from rll_repro.recipes import digits

    torch.set_num_threads(max(int(args.threads), 1))
    out = args.out or "runs/digits"
    started = time.monotonic()
    print(f"reproduce digits: training RLL on scikit-learn digits (classes 0-4), run folder {out}", file=sys.stderr)
    results = digits.run(out, max_iter=args.max_iter, seed=digits.SEED if args.seed is None else args.seed,
                         echo_log=args.verbose)
    print(digits.report(results))
    print(f"run folder: {out} (train.log, curves.png, {results['model']}, results.json); "
          f"{time.monotonic() - started:.1f} s")
    return 0

"""rll-repro reproduce: rerun a setting end to end (the shipped digits demo needs no download)."""
from __future__ import annotations

HELP = "rerun a setting end to end; 'demo' trains RLL and OSM+CAA on scattered digits (no download)"
DESCRIPTION = """\
`rll-repro reproduce demo` is the embedded demo (no download, a few minutes on 2 CPU cores):
scikit-learn's digits scaled, rotated and placed at random on a 48 x 48 canvas, train classes 0-4 /
test classes 5-9 (zero-shot), written as PNG files + .mat lists and trained through the paper
recipes' pipeline (prototxt/demo: Conv-BN-Scale-ReLU-pool x 3, 64-d embedding; Caffe SGD); prints
one table of Recall@1,2,4,8 and NMI for raw pixels, RLL and OSM+CAA (--all adds every baseline
loss) and compares it with the numbers recorded in the package (demo/canvas-digits, 5 points
tolerance; the verdict is printed, the exit code stays 0: training is chaotic, another CPU may drift
further). The run
folder (default runs/demo) gets results.json ("table"), table.png and one folder per method
(train.log, curves.png, snapshots).

`rll-repro reproduce digits` is the earlier demo, kept for its real-Caffe comparison (no download,
about 8 s of CPU time: 4-9 s on an idle 2-core machine): scikit-learn's 8x8 digits, train classes
0-4 / test classes 5-9, our digits prototxts (prototxt/digits: Conv-BN-Scale-ReLU x 2, 32-d
embedding, RLL loss), multistep SGD for 300 iterations, then the TEST-phase embedding of the test
classes and Recall@1,2,4,8, printed next to the numbers a real RLL Caffe got on the same demo. The run folder gets train.log (Caffe format),
curves.png (loss and learning rate), the final caffemodel + solverstate, history.json,
test_features.npy and results.json.

A paper setting (`--list` shows them) reproduces one row of the papers' tables in four steps,
all in the run folder --out:
  1. check: --weights (the ImageNet BN-Inception caffemodel), the setting's .mat lists in --lists DIR
     (make them with `rll-repro make-lists`), every image under --data-root; each problem is one line
     and exit code 2;
  2. train with the original loop: the setting's solver and train net, its sampler (C classes x K
     images), train transform, seed 123, snapshots checkpoints1/checkpoint_iter_N at the original
     cadence (save_start/save_interval) plus every iteration to be evaluated. If --out already holds
     a snapshot, training resumes from the latest complete one (bitwise the same as an unbroken run),
     so a killed run is restarted with the same command;
  3. evaluate the checkpoints the original test scripts evaluated (or --checkpoints / --eval-every)
     with each released deploy net (TEST phase, test transform, the script's batch, the protocol's
     metric): results/<deploy>_iter_N.json (percent, already present ones are kept) and the original
     result files (Recall_H_d64.txt: `iter: N, rank1: 0.xxx, ...`; Recall.txt / CUB_Recall.txt;
     Record_concat.txt);
  4. print the last evaluated checkpoint of each deploy next to its published numbers; exit code 1
     when any metric differs by more than --tolerance points.
Every paper setting is wired: rll-sop, rll-inshop, rll-market, osm-cars(-bbox), osm-cub(-bbox),
osm-mars and osm-lpw (tracklet frames preprocessed on the fly, tracklet feature = mean of frames;
MARS also needs query_IDX.mat in --lists; result files without_minus1_AVG.txt / LPW_TEST_AF.txt).
So are the older-commit settings rll-sop-cvpr (the paper's SOP config and the base of its
ablations), rll-sop-cvpr-m10 and rll-cub, and the reconstructed rll-cars (--list marks each).

--set KNOB=VALUE runs a paper ablation on a RLL setting: alpha, m, T, batch=CxK or level=L|M|H|(L,M,H)
(rll_repro/recipes/ablations.py names the fields each changes); the derived train/solver prototxts
are written into <out>/prototxt and the diff uses the ablation table's row. A knob the Caffe
layer's gradient ignores is refused (alpha on the released V12 layer). --coverage prints which
command reproduces each published entry (docs/coverage.md).

examples:
  rll-repro reproduce demo
  rll-repro reproduce demo --all
  rll-repro reproduce digits
  rll-repro reproduce digits --out runs/digits --max-iter 100
  rll-repro reproduce --list
  rll-repro reproduce rll-sop --data-root /data/Stanford_Online_Products --lists lists/ \\
      --weights googlenet_bn.caffemodel --out runs/rll-sop
  rll-repro reproduce rll-sop --data-root /data/SOP --lists lists/ --weights googlenet_bn.caffemodel \\
      --out runs/sop-smoke --max-iter 20 --checkpoints 20 --test-batch 64 --threads 2
  rll-repro reproduce rll-sop-cvpr --set alpha=1.4 --data-root /data/SOP --lists lists/ \
      --weights googlenet_bn.caffemodel
  rll-repro reproduce --coverage
"""


def add_arguments(parser) -> None:
    parser.add_argument("setting", nargs="?", default="digits", help="setting name (default digits)")
    parser.add_argument("--out", help="run folder (default runs/<setting>)")
    parser.add_argument("--max-iter", type=int, help="train fewer iterations than the setting's max_iter")
    parser.add_argument("--data-root", help="paper settings: folder the lists' image paths are relative to")
    parser.add_argument("--lists", help="paper settings: folder holding the setting's .mat lists")
    parser.add_argument("--weights", help="caffemodel to start from (paper settings: the ImageNet BN-Inception "
                        "googlenet_bn.caffemodel; digits: optional, default the fillers)")
    parser.add_argument("--checkpoints", help="paper settings: comma-separated iterations to evaluate "
                        "(default: the original test script's, or the last iteration)")
    parser.add_argument("--eval-every", type=int, help="paper settings: evaluate every N iterations instead")
    parser.add_argument("--deploys", help="paper settings: comma-separated deploy names (default: the released ones)")
    parser.add_argument("--test-batch", type=int, help="paper settings: images per test forward (default: the script's)")
    parser.add_argument("--tolerance", type=float, default=0.5,
                        help="paper settings: allowed |delta| vs published, in points (default 0.5); over -> exit 1")
    parser.add_argument("--against", help="paper settings: reference for the first deploy instead of its "
                        "published entry (published key, RESULTS.json or RESULTFILE.txt@ITER)")
    parser.add_argument("--workers", type=int, default=0, help="paper settings: data loader processes (default 0)")
    parser.add_argument("--seed", type=int, default=None, help="sampler seed (default 123)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for training and evaluation (default 1: on the CPU the trained "
                             "weights depend on the thread count; recorded in the log and the results)")
    parser.add_argument("--all", action="store_true",
                        help="demo: add every baseline loss (ContrastiveLoss ... MultiSimilarityLoss) to the table")
    parser.add_argument("--list", action="store_true", help="list the known settings and exit")
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                        help="RLL settings: an ablation knob, repeatable: alpha, m, T (numbers), batch=CxK, "
                             "level=L|M|H|(L,M,H) (rll_repro/recipes/ablations.py says which fields each changes)")
    parser.add_argument("--coverage", action="store_true",
                        help="print the command that reproduces each published entry, or why none does, and exit")
    parser.add_argument("--verbose", action="store_true", help="echo the Caffe-format log to stderr")
    from rll_repro.commands.device_options import add_device_arguments

    add_device_arguments(parser)


def run(args) -> int:
    import sys
    import time

    from rll_repro.commands.device_options import device_from_args

    device_from_args(args)  # every net of the run lands on --device

    if args.coverage:
        from rll_repro import coverage

        print(coverage.text())
        return 0
    if args.list:
        from rll_repro import recipes

        print("demo: the embedded demo (scattered scikit-learn digits, zero-shot; raw pixels, RLL, OSM+CAA; "
              "--all adds the baselines)")
        print("digits: the earlier demo (RLL on the unmoved 8x8 digits, 300 iterations, beside a real Caffe "
              "run's numbers)")
        for name in recipes.names():
            if name != "digits":
                s = recipes.get(name)
                print(f"{name} [{s.release_status}]: {s.description}")
        print("knobs (--set KNOB=VALUE on a RLL setting): alpha, m, T, batch=CxK, level; "
              "--coverage: the command behind each published entry")
        return 0
    if args.setting == "demo":
        return _run_demo(args)
    if args.setting != "digits":
        return _run_setting(args)
    from rll_repro.recipes import digits
    from rll_repro.train import configure_threads

    configure_threads(args.threads)
    out = args.out or "runs/digits"
    if args.weights:  # fail on a bad file before announcing the run
        from rll_repro.caffe import io as caffe_io

        caffe_io.read_caffemodel(args.weights)
    started = time.monotonic()
    print(f"reproduce digits: training RLL on scikit-learn digits (classes 0-4), run folder {out}", file=sys.stderr)
    results = digits.run(out, max_iter=args.max_iter, seed=digits.SEED if args.seed is None else args.seed,
                         echo_log=args.verbose, weights=args.weights)
    print(digits.report(results))
    print(f"run folder: {out} (train.log, curves.png, {results['model']}, results.json); "
          f"{time.monotonic() - started:.1f} s")
    return 0


def _run_demo(args) -> int:
    """The embedded demo (rll_repro.demo): one table, results.json + table.png, diff vs recorded."""
    import sys
    import time

    from rll_repro import demo
    from rll_repro.recipes import demo as recipe
    from rll_repro.train import configure_threads

    configure_threads(args.threads)
    out = args.out or "runs/demo"
    methods = [recipe.RLL, recipe.OSM, *(recipe.BASELINES if args.all else ())]
    started = time.monotonic()
    print(f"reproduce demo: {', '.join(methods)} on scattered digits (train 0-4, test 5-9), run folder {out}",
          file=sys.stderr)
    results = demo.run(out, methods=methods, max_iter=args.max_iter, seed=args.seed, echo=args.verbose,
                       report=lambda line: print(line, file=sys.stderr))
    print(demo.format_table(results["table"]))
    over, rows = demo.diff_expected(f"{out}/results.json")
    compared = sum(r.delta is not None for r in rows)
    allowed = f"{demo.TOLERANCE:g} points (NMI {demo.NMI_TOLERANCE:g})"
    verdict = (f"{len(over)} of {compared} numbers differ by more than {allowed}"
               if over else f"all {compared} numbers within {allowed}")
    print(f"vs recorded {recipe.PUBLISHED}: {verdict} (rll-repro diff {out}/results.json --against "
          f"{recipe.PUBLISHED} --tolerance {demo.TOLERANCE:g} --nmi-tolerance {demo.NMI_TOLERANCE:g}); "
          f"run folder {out} (results.json, table.png, <method>/train.log, curves.png); "
          f"{time.monotonic() - started:.1f} s")
    return 0  # the verdict is printed; a chaotic small run elsewhere may drift past it (see rll_repro.demo)


def _ints(text: str | None, option: str) -> list[int] | None:
    from rll_repro.errors import DataError

    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DataError(f"{option} {text!r}: expected comma-separated iteration numbers") from None


def _run_setting(args) -> int:
    import sys
    import time
    from pathlib import Path

    from rll_repro import recipes, reproduce
    from rll_repro.errors import DataError
    from rll_repro.train import configure_threads, latest_snapshot

    setting = _with_knobs(recipes.get(args.setting), args)
    if args.tolerance < 0:
        raise DataError(f"--tolerance must be >= 0, got {args.tolerance}")
    if args.eval_every is not None and args.eval_every < 1:
        raise DataError(f"--eval-every must be >= 1, got {args.eval_every}")
    if args.max_iter is not None and args.max_iter < 0:
        raise DataError(f"--max-iter must be >= 0, got {args.max_iter}")
    if args.test_batch is not None and args.test_batch < 1:
        raise DataError(f"--test-batch must be >= 1, got {args.test_batch}")
    deploys = [d.strip() for d in args.deploys.split(",") if d.strip()] if args.deploys else None
    for name in deploys or ():
        if name not in [d.name for d in setting.deploys]:
            raise DataError(f"--deploys: setting {setting.name} has no deploy {name!r} "
                            f"(it has {', '.join(d.name for d in setting.deploys)})")
    checkpoints = _ints(args.checkpoints, "--checkpoints")
    out = Path(args.out or f"runs/{setting.name}")
    inputs = reproduce.check_inputs(setting, lists_dir=args.lists, data_root=args.data_root,
                                    weights=args.weights,
                                    need_weights=latest_snapshot(reproduce.snapshot_prefix(out)) is None)
    configure_threads(args.threads)
    started = time.monotonic()
    print(setting.describe(), file=sys.stderr)
    print(f"reproduce {setting.name}: run folder {out}", file=sys.stderr)
    outcome = reproduce.reproduce(
        setting, inputs, out, max_iter=args.max_iter, eval_every=args.eval_every, checkpoints=checkpoints,
        deploys=deploys, test_batch=args.test_batch, tolerance=args.tolerance, against=args.against,
        seed=args.seed, workers=args.workers, echo=args.verbose)
    print(reproduce.format_diffs(outcome, args.tolerance))
    resumed = outcome.train["resumed_from"]
    print(f"trained to iteration {outcome.train['iter']}" + (f" (resumed from {resumed})" if resumed else "")
          + f"; result files: {', '.join(Path(p).name for p in outcome.result_files) or 'none'}; "
          f"run folder {out}; {time.monotonic() - started:.1f} s")
    return outcome.exit_code


def _with_knobs(setting, args):
    """``--set`` items applied (rll_repro.recipes.ablations): warnings to stderr, the derived train
    and solver prototxts written into the run folder's prototxt/, ``args.out`` set to that folder."""
    import sys

    if not args.set:
        return setting
    from rll_repro.recipes import ablations

    ablation = ablations.derive(setting, args.set, args.out)
    for warning in ablation.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for path in ablations.write(ablation):
        print(f"wrote {path}", file=sys.stderr)
    print(f"diff against: {ablation.row or 'no published row for this combination'}", file=sys.stderr)
    args.out = str(ablation.run_folder)
    return ablation.setting

"""rll-repro train: Caffe's ``caffe train`` driven by the original papers' MATLAB training loop."""
from __future__ import annotations

HELP = "train a net from a solver prototxt (caffe train + the papers' MATLAB loop), Caffe-format log"
DESCRIPTION = """\
Mirror of `caffe train --solver S [--weights W] [--snapshot X]`, running the loop of the original
MATLAB scripts: every iteration the batch of that iteration is assembled by the data module and put
into the net's input blobs, then solver.step(1). The loss the scripts print (the loss top after the
step) is logged every --output-interval iterations in Caffe's glog line format (Caffe's
tools/extra/parse_log.py reads the log); snapshots (caffemodel + solverstate in Caffe's formats, and
a small .rllstate side file for a bitwise resume) are written when iter >= --save-start and
iter % --save-interval == 0, and after the last iteration. At the end the loss and learning-rate
curves are drawn to <out>/curves.png.

Each start writes its own log, <out>/train.log.<yyyymmdd-hhmmss>.<pid> (as glog names one per
start), and <out>/train.log points at the latest: Caffe's parse_log.py sees one monotone run per
file. history.json and curves.png hold the whole run, also after a --snapshot resume (the
history of the run that wrote the snapshot is continued). Progress (elapsed, ETA) is a bar on a
terminal and a log line every --output-interval iterations (on stderr too when it is not a
terminal). On the CPU the float32 results depend on the thread count, so training uses 1 thread
unless --threads says otherwise; the count, torch and BLAS are recorded in the log header and in
history.json.

Data (--data):
  digits                 the shipped scikit-learn digits demo batches (classes 0-4, 5 x 6 per batch)
  SETTING                a paper setting of `rll-repro reproduce --list` (rll-sop, osm-cars, ...):
                         its sampler and train transform over its training list, --lists DIR
                         (the folder of the setting's .mat lists) or --list FILE.mat, images
                         under --data-root; snapshot cadence and max_iter default to the setting's
  none                   feed nothing (nets without input blobs)

--weights copies weights by layer name into the freshly initialised net (Caffe's copy_from, e.g. the
ImageNet BN-Inception model); --snapshot resumes from a .solverstate (ours or Caffe's; with our side
file beside it the resume is bitwise identical to an unbroken run). A non-finite loss or gradient
stops training with an error naming the iteration and the layer; snapshots already written stay intact.

examples:
  rll-repro train --solver prototxt/digits/solver.prototxt --data digits --out runs/digits
  rll-repro train --solver prototxt/digits/solver.prototxt --data digits --out runs/digits \\
      --snapshot runs/digits/digits_iter_100.caffemodel.solverstate
  rll-repro train --solver prototxt/rll/sop/solver.prototxt --weights googlenet_bn.caffemodel \\
      --data rll-sop --lists lists/ --data-root /data/Stanford_Online_Products --out runs/sop-train
"""


def add_arguments(parser) -> None:
    parser.add_argument("--solver", required=True, help="solver prototxt")
    parser.add_argument("--weights", help="caffemodel to initialise from (copy by layer name)")
    parser.add_argument("--snapshot", help="solverstate to resume from")
    parser.add_argument("--allow-no-match", action="store_true",
                        help="accept --weights of which no layer name matches the net (Caffe trains from the "
                        "fillers then; here it is an error by default)")
    parser.add_argument("--data", help="batch source: digits, a paper setting name, or none (default: the setting "
                        "whose solver is --solver, e.g. digits for prototxt/digits/solver.prototxt)")
    parser.add_argument("--list", dest="data_list", help="training list .mat for a paper setting")
    parser.add_argument("--lists", dest="lists_dir", help="folder of a paper setting's .mat lists (its training list is used)")
    parser.add_argument("--data-root", help="folder the list's image paths are relative to")
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    parser.add_argument("--seed", type=int, default=None, help="sampler seed (default: the setting's, 123)")
    parser.add_argument("--max-iter", type=int, help="stop at this iteration (default: the solver's max_iter)")
    parser.add_argument("--output-interval", type=int, default=20, help="log the loss every N iterations (default 20)")
    parser.add_argument("--save-start", type=int, help="first iteration that may be snapshotted (default: the setting's)")
    parser.add_argument("--save-interval", type=int, help="snapshot every N iterations (default: the setting's; none for digits)")
    parser.add_argument("--out", default="runs/train", help="run folder: log, snapshots, curves (default runs/train)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default 1, so that the numbers do not depend on the machine; "
                             "the count is recorded in the log and history.json)")
    parser.add_argument("--quiet", action="store_true", help="do not echo log lines to stderr")
    from rll_repro.commands.device_options import add_device_arguments

    add_device_arguments(parser)


def _setting_of_solver(solver_path: str) -> str:
    """The registered setting whose generated solver is ``solver_path``; a DataError otherwise
    (a user's own solver needs an explicit --data, or --data none to feed the inputs elsewhere)."""
    from pathlib import Path

    from rll_repro import recipes
    from rll_repro.errors import DataError

    from rll_repro.recipes import digits

    wanted = Path(solver_path).resolve()
    if Path(digits.prototxt("solver")).resolve() == wanted:
        return "digits"
    for setting in recipes.all_settings():
        if recipes.path(setting.solver.path).resolve() == wanted:
            return setting.name
    raise DataError(f"--solver {solver_path}: not the solver of a known setting; say which batches to feed "
                    f"with --data SETTING (digits, {', '.join(recipes.names())}) or --data none")


def _batch_source(args, solver):
    from rll_repro.errors import DataError

    name = args.data or _setting_of_solver(args.solver)
    if name in ("none", "digits") and (args.data_list or args.lists_dir):
        raise DataError(f"--data {name} takes no --list/--lists; name the paper setting the list belongs to "
                        "with --data SETTING (see 'rll-repro reproduce --list')")
    if name == "none":
        return None, {}
    if name == "digits":
        from rll_repro.recipes import digits

        return digits.batch_source(seed=digits.SEED if args.seed is None else args.seed), {}
    from pathlib import Path

    from rll_repro import recipes, reproduce

    setting = recipes.get(name)
    if args.data_list and args.lists_dir:
        raise DataError("give --list FILE.mat or --lists DIR, not both")
    if args.data_list:
        if not Path(args.data_list).is_file():
            raise DataError(f"--list {args.data_list}: file not found")
        train_list = Path(args.data_list)
    elif args.lists_dir:
        folder = Path(args.lists_dir)
        if not folder.is_dir():
            raise DataError(f"--lists {folder}: not a folder (it must hold {setting.data_files[0]})")
        train_list = folder / setting.data_files[0]
        if not train_list.is_file():
            raise DataError(f"--lists {folder}: missing {setting.data_files[0]} (the training list of {name})")
    else:
        raise DataError(f"--data {name} needs --lists DIR (holding {setting.data_files[0]}) or --list FILE.mat")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise DataError(f"--data-root {args.data_root}: not a folder")
    inputs = reproduce.Inputs(None, train_list, train_list, args.data_root)
    reproduce.train_list(setting, inputs).check_images()
    source = reproduce.batch_source(setting, inputs, solver.net, seed=args.seed, workers=args.workers)
    return source, {"save_start": setting.save_start, "save_interval": setting.save_interval,
                    "max_iter": setting.max_iter}


def run(args) -> int:
    import sys
    from pathlib import Path

    from rll_repro.solver import get_solver
    from rll_repro.train import Schedule, configure_threads, run_session

    configure_threads(args.threads)
    if args.weights and args.snapshot:
        from rll_repro.errors import TrainingError

        raise TrainingError("give either --weights or --snapshot, not both (as caffe train)")
    if args.weights and not Path(args.weights).is_file():
        from rll_repro.errors import DataError

        raise DataError(f"--weights {args.weights}: file not found")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from rll_repro.commands.device_options import device_from_args

    device = device_from_args(args)  # numerics (--fast) always; the device itself only when given,
    solver = get_solver(args.solver, device=device if args.device else None)  # else solver_mode decides
    source, defaults = _batch_source(args, solver)
    prefix = str(out / (Path(solver.param.snapshot_prefix).name if solver.param.snapshot_prefix else "checkpoint"))
    schedule = Schedule(
        max_iter=args.max_iter if args.max_iter is not None else defaults.get("max_iter", int(solver.param.max_iter)),
        output_interval=args.output_interval,
        save_start=args.save_start if args.save_start is not None else defaults.get("save_start"),
        save_interval=args.save_interval if args.save_interval is not None else defaults.get("save_interval"),
        snapshot_prefix=prefix,
    )
    off_terminal = not sys.stderr.isatty()
    history, run_log = run_session(solver, source, schedule, out, weights=args.weights, resume=args.snapshot,
                                   echo=not args.quiet and off_terminal,
                                   progress=False if args.quiet and off_terminal else None,
                                   title=Path(args.solver).name, allow_no_match=args.allow_no_match)
    last = history.losses[-1] if history.losses else float("nan")
    print(f"trained to iteration {solver.iter}, last loss {last:.6g}; log {run_log} (train.log), "
          f"curves {out / 'curves.png'}, snapshots {', '.join(Path(s).name for s in history.snapshots) or 'none'}")
    return 0

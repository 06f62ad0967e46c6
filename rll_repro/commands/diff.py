"""``rll-repro diff``: compare RESULTS.json with published numbers or another RESULTS.json."""
from __future__ import annotations

HELP = "compare RESULTS.json with a published entry or another RESULTS.json (exit 1 if over tolerance)"
DESCRIPTION = """\
Print a side-by-side table (metric, ours, published, delta, source) of a RESULTS.json (percentages,
as written by 'eval' / 'eval-features') against a published entry, another RESULTS.json, or one
iteration of an original result file. Exit code 0 when every |delta| <= --tolerance (percentage
points), 1 when any metric is over it (use it as a CI regression gate), 2 on bad input.

examples:
  rll-repro diff results.json --against "rll/SOP/paper/RLL-(L,M,H)"
  rll-repro diff results.json --against "rll/SOP/repo_SOP_Simp_25042020_b150_d64_iter30000/(H,L,M)" --tolerance 0.2
  rll-repro diff new.json old.json --tolerance 0.1
  rll-repro diff runs/demo/results.json --against demo/canvas-digits --tolerance 5 --nmi-tolerance 15
  rll-repro diff results.json --against ../shared/reference/rll/original/SOP_Simp_25042020/train_150_T10_pn04_v50/Recall_concat_d64.txt@30000
  rll-repro diff --list rll/SOP          list the published keys under a prefix
"""


def add_arguments(parser) -> None:
    parser.add_argument("results", nargs="?", help="RESULTS.json (ours)")
    parser.add_argument("other", nargs="?", help="a second RESULTS.json to compare with")
    parser.add_argument("--against", help="published key (e.g. 'rll/SOP/paper/RLL-(L,M,H)'), a RESULTS.json, "
                        "or RESULTFILE.txt@ITER")
    parser.add_argument("--tolerance", type=float, default=0.5, help="allowed |delta| in percentage points "
                        "(default 0.5)")
    parser.add_argument("--nmi-tolerance", type=float, help="allowed |delta| for NMI rows (default: --tolerance); "
                        "NMI of small runs moves far more than Recall@K with float32 summation order")
    parser.add_argument("--metrics", help="comma-separated metrics to compare (default: all of either side)")
    parser.add_argument("--list", nargs="?", const="", metavar="PREFIX", help="list published keys and exit")


def run(args) -> int:
    from rll_repro.errors import DataError
    from rll_repro.eval import diff, published

    if args.list is not None:
        for key in published.keys(args.list):
            print(key)
        return 0
    if not args.results:
        raise DataError("give RESULTS.json (and --against KEY or a second RESULTS.json)")
    if (args.other is None) == (args.against is None):
        raise DataError("give exactly one reference: --against KEY, or a second RESULTS.json")
    for option, value in (("--tolerance", args.tolerance), ("--nmi-tolerance", args.nmi_tolerance)):
        if value is not None and not value >= 0:
            raise DataError(f"{option} must be >= 0, got {value}")
    ours = diff.load_results(args.results)
    reference, source = diff.resolve_reference(args.other or args.against)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    rows = diff.compare(ours, reference, source, metrics)
    label = "published" if args.against else "other"
    print(diff.format_table(rows, args.tolerance, reference_label=label, nmi_tolerance=args.nmi_tolerance))
    over = diff.exceeded(rows, args.tolerance, args.nmi_tolerance)
    compared = sum(r.delta is not None for r in rows)
    allowed = f"{args.tolerance:g} points" + ("" if args.nmi_tolerance is None else f" (NMI {args.nmi_tolerance:g})")
    if over:
        print(f"{len(over)} of {compared} metrics differ by more than {allowed}")
        return 1
    print(f"all {compared} compared metrics within {allowed}")
    return 0

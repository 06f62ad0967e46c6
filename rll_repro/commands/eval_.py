"""``rll-repro eval``: extract features through a test net and evaluate them with the original rules."""
from __future__ import annotations

HELP = "extract features with a deploy/test net and evaluate (SOP, In-shop, CUB, Cars, Market, MARS, LPW)"
DESCRIPTION = """\
Run a deploy/test prototxt with trained weights (phase TEST) over a test list, batch by batch
(remainder batch handled), take the feature blob(s), and evaluate with the protocol of the
original test scripts (see 'rll-repro eval-features --help' for the retrieval rules).

Features: by default the deploy blob pool5/7x7_s1 (single-head and concat deploys, and the OSM+CAA
test_M net). --heads H,L,M instead concatenates the raw FC outputs pool5/fc, loss1/fc/bn/sc/fc,
loss2/fc/bn/sc/fc in that order (SPEC rll §5), L2-normalised once at evaluation. --blob NAME takes
any blob(s) (comma-separated). --save-features F.npy|.h5 keeps the raw features (+ labels in .h5).

Test lists: sop/cub/cars/inshop read an image list .mat (In-shop: the eval list, query rows first);
market reads Market1501_evaluation.mat (single query, multi-query avg/max, max + re-ranking);
mars/lpw read the test tracklet .mat (mars also needs --query-idx query_IDX.mat).

examples:
  rll-repro eval test_concat_d64.prototxt iter_30000.caffemodel --list SOP_TestImagePathBoxCell.mat \\
      --data-root /data/SOP --protocol sop --out sop.json
  rll-repro eval train_val.prototxt w.caffemodel --list TestCell.mat --protocol sop --heads H,L,M --out r.json
  rll-repro eval test_M.prototxt w.caffemodel --list test_data_r.mat --protocol mars \\
      --query-idx query_IDX.mat --out mars.json
  rll-repro diff sop.json --against "rll/SOP/paper/RLL-(L,M,H)"
"""

BATCH_SIZES = {"sop": 32, "inshop": 128, "market": 128, "cub": 64, "cars": 64, "mars": 64, "lpw": 64}
# test-time preprocessing of image paths per protocol (data cells are already preprocessed)
PREPROCESS = {"sop": "rll", "inshop": "rll", "market": "market", "cub": "osm", "cars": "osm", "mars": "osm",
              "lpw": "osm"}


def add_arguments(parser) -> None:
    from rll_repro.commands.device_options import add_device_arguments

    parser.add_argument("net", help="deploy/test NET.prototxt")
    parser.add_argument("weights", help="trained WEIGHTS.caffemodel")
    parser.add_argument("--list", required=True, help="test list .mat")
    parser.add_argument("--protocol", required=True, choices=sorted(BATCH_SIZES))
    parser.add_argument("--heads", help="concatenate raw head outputs, e.g. H,L,M (default: the deploy blob)")
    parser.add_argument("--blob", help="feature blob name(s), comma-separated (default pool5/7x7_s1)")
    parser.add_argument("--preprocess", choices=["rll", "market", "osm"],
                        help="image preprocessing: rll (256 resize, 227 center crop), market (its square "
                        "crop), osm (224 resize); default per protocol (rll: sop/inshop, market, osm: others)")
    parser.add_argument("--batch-size", type=int, help="images per forward (default per protocol)")
    parser.add_argument("--data-root", help="folder that replaces the lists' original image prefix")
    parser.add_argument("--strip-prefix", help="the original prefix to replace by --data-root")
    parser.add_argument("--query-idx", help="MARS query_IDX.mat")
    parser.add_argument("--n-probe", type=int, default=756, help="LPW probe tracklets (default 756)")
    parser.add_argument("--nmi", action="store_true", help="also NMI and F1 by k-means (retrieval protocols)")
    parser.add_argument("--seed", type=int, default=0, help="k-means random_state (default 0)")
    parser.add_argument("--n-init", type=int, default=10, help="k-means restarts (default 10)")
    parser.add_argument("--block-rows", type=int, default=2048, help="rows per similarity block (memory)")
    parser.add_argument("--save-features", help="also write the raw features (.npy, .npz or .h5)")
    parser.add_argument("--out", required=True, help="RESULTS.json to write")
    add_device_arguments(parser)


def feature_blobs(args) -> list[str]:
    from rll_repro.errors import DataError
    from rll_repro.eval.extract import DEPLOY_BLOB, head_blobs

    if args.heads and args.blob:
        raise DataError("give --heads or --blob, not both")
    if args.heads:
        return head_blobs(args.heads)
    if args.blob:
        return [b.strip() for b in args.blob.split(",") if b.strip()]
    return [DEPLOY_BLOB]


def _transform(args, transforms):
    name = args.preprocess or PREPROCESS[args.protocol]
    return {"rll": transforms.rll_test_transform, "market": transforms.market_test_transform,
            "osm": transforms.osm_offline_transform}[name]


def run(args) -> int:
    from rll_repro.commands.eval_features import evaluate_arrays, print_results, write_results
    from rll_repro.errors import DataError
    from rll_repro.eval.extract import save_features
    from rll_repro.net import Net

    try:
        from rll_repro.data import lists, loader, transforms
    except ImportError as exc:  # the data module is developed separately
        raise DataError(f"the data module is not available ({exc}); use 'rll-repro eval-features' "
                        "with features computed elsewhere") from None
    args.batch_size = args.batch_size or BATCH_SIZES[args.protocol]
    if args.batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {args.batch_size}")
    blobs = feature_blobs(args)
    from rll_repro.commands.device_options import device_from_args

    net = Net(args.net, weights=args.weights, phase="test", device=device_from_args(args))
    meta = {"net": str(args.net), "weights": str(args.weights), "list": str(args.list), "blobs": blobs}

    from rll_repro.eval.protocols import RETRIEVAL, evaluate_protocol

    if args.protocol in RETRIEVAL:
        test = loader.resolve_source(args.list, args.data_root, args.strip_prefix)
    elif args.protocol == "market":
        test = lists.load_market_evaluation(args.list, data_root=args.data_root, strip_prefix=args.strip_prefix)
    else:
        test = lists.load_tracklets(args.list, "test", data_root=args.data_root, strip_prefix=args.strip_prefix)
        if args.protocol == "mars" and not args.query_idx:
            raise DataError("--protocol mars needs --query-idx query_IDX.mat")
    use_boxes = getattr(test, "boxes", None) is not None and (args.preprocess or PREPROCESS[args.protocol]) == "osm"

    def score_retrieval(feats, labels, query_mask):  # the verb's scorer: Recall@K (+ NMI/F1 with --nmi)
        args._query_mask_array = query_mask
        return evaluate_arrays(feats, labels, args, meta)

    out = evaluate_protocol(net, args.protocol, test, transform=_transform(args, transforms), blobs=blobs,
                            batch_size=args.batch_size, use_boxes=use_boxes, n_probe=args.n_probe,
                            query_idx=lists.load_query_idx(args.query_idx) if args.protocol == "mars" else None,
                            score_retrieval=score_retrieval)
    if args.save_features:
        save_features(args.save_features, out.features, out.labels)
    results = out.metrics
    if args.protocol not in RETRIEVAL:
        results["_meta"] = {"protocol": args.protocol, **out.meta, **meta}
    write_results(args.out, results)
    print_results(results)
    return 0

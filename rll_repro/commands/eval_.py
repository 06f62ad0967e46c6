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


def _extract_list(net, image_list, transform, args, blobs, desc):
    from rll_repro.data import loader
    from rll_repro.eval.extract import extract_features

    use_boxes = getattr(image_list, "boxes", None) is not None and transform is not None \
        and (args.preprocess or PREPROCESS[args.protocol]) == "osm"  # OSM bbox lists: crop, then resize
    batches = loader.make_test_loader(image_list, transform, batch_size=args.batch_size, data_root=None,
                                      use_boxes=use_boxes)
    return extract_features(net, batches, blobs, total=len(image_list), desc=desc)


def run(args) -> int:
    import numpy as np

    from rll_repro.commands.eval_features import evaluate_arrays, print_results, write_results
    from rll_repro.errors import DataError
    from rll_repro.eval import metrics
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

    if args.protocol in ("sop", "cub", "cars", "inshop"):
        image_list = loader.resolve_source(args.list, args.data_root, args.strip_prefix)
        transform = None if image_list.images is not None else _transform(args, transforms)
        feats = _extract_list(net, image_list, transform, args, blobs, "extract")
        labels = np.asarray(image_list.class_ids).reshape(-1)
        args._query_mask_array = None
        if args.protocol == "inshop":
            if image_list.n_query is None:
                raise DataError(f"{args.list}: not an In-shop eval list (no query/gallery split)")
            args._query_mask_array = np.arange(len(labels)) < image_list.n_query
        if args.save_features:
            save_features(args.save_features, feats, labels)
        results = evaluate_arrays(feats, labels, args, meta)
    elif args.protocol == "market":
        ev = lists.load_market_evaluation(args.list, data_root=args.data_root, strip_prefix=args.strip_prefix)
        t = _transform(args, transforms)
        def source(paths):  # labels are not used by the re-id rules (ids/cameras are)
            return loader.resolve_source({"paths": paths, "class_ids": np.ones(len(paths), np.int64)})

        q = _extract_list(net, source(ev.query_paths), t, args, blobs, "query")
        g = _extract_list(net, source(ev.test_paths), t, args, blobs, "gallery")
        flat = [p for m in ev.multi_query_paths for p in m]
        mq = _extract_list(net, source(flat), t, args, blobs, "multi-query")
        bounds = np.cumsum([0] + [len(m) for m in ev.multi_query_paths])
        multi = [mq[bounds[i]:bounds[i + 1]] for i in range(len(ev.multi_query_paths))]
        if args.save_features:
            save_features(args.save_features, np.concatenate([q, g]), None)
        results = metrics.market1501(q, ev.query_ids, ev.query_cams, g, ev.test_ids, ev.test_cams,
                                     multi_query=multi)
        results["_meta"] = {"protocol": "market", "queries": len(q), "gallery": len(g), **meta}
    else:  # mars, lpw: tracklet feature = mean of frame features
        tr = lists.load_tracklets(args.list, "test", data_root=args.data_root, strip_prefix=args.strip_prefix)
        flat = [p for frames in tr.frames for p in frames]
        owner = np.repeat(np.arange(len(tr.frames)), [len(f) for f in tr.frames])
        src = loader.resolve_source({"paths": flat, "class_ids": np.ones(len(flat), np.int64)})
        frames = _extract_list(net, src, _transform(args, transforms), args, blobs, "frames")
        feats = metrics.tracklet_features(frames, owner)
        if args.save_features:
            save_features(args.save_features, feats, tr.labels)
        if args.protocol == "mars":
            if not args.query_idx:
                raise DataError("--protocol mars needs --query-idx query_IDX.mat")
            if tr.cameras is None:
                raise DataError(f"{args.list}: no test_cameras (MARS needs cameras)")
            results = metrics.mars(feats, tr.labels, tr.cameras, lists.load_query_idx(args.query_idx))
        else:
            results = metrics.lpw(feats, tr.labels, n_probe=args.n_probe)
        results["_meta"] = {"protocol": args.protocol, "tracklets": len(feats), **meta}
    write_results(args.out, results)
    print_results(results)
    return 0

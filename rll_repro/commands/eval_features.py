"""``rll-repro eval-features``: Recall@K (and NMI/F1) of features computed anywhere."""
from __future__ import annotations

HELP = "Recall@K (+ NMI/F1) of a feature file under the SOP/CUB/Cars/In-shop protocol"
DESCRIPTION = """\
Evaluate features (one row per image, raw or normalised; they are L2-normalised here without
epsilon, similarity = dot product) with the original test rules:

  sop     all vs all, self excluded, Recall@1,10,100,1000
  cub     all vs all, self excluded, Recall@1,2,4,8,16,32
  cars    same as cub
  inshop  query -> gallery (--query-mask: True = query row), Recall@1,10,20,30,40,50

Ranking is MATLAB's stable sort (ties keep the lower index first). Memory stays bounded (blocks of
--block-rows rows). --nmi adds NMI and F1 of k-means (scikit-learn, as many clusters as classes,
--seed / --n-init; slow for SOP-sized data). RESULTS.json holds percentages, e.g.
{"R@1": 79.1, ..., "_meta": {...}}; compare it with 'rll-repro diff'. Without --out the metrics are
only printed.

examples:
  rll-repro eval-features feats.npy labels.npy --protocol cub
  rll-repro eval-features feats.npy labels.npy --protocol sop --out results.json
  rll-repro eval-features feats.h5 feats.h5 --protocol cub --nmi --out cub.json
  rll-repro eval-features feats.npy labels.npy --protocol inshop --query-mask is_query.npy --out r.json
"""


def add_arguments(parser) -> None:
    from rll_repro.commands.device_options import add_device_arguments

    add_device_arguments(parser, fast=False)
    parser.add_argument("features", help="FEATS.npy (or .npz/.h5 with a 'features' array)")
    parser.add_argument("labels", help="LABELS.npy (or .npz/.h5 with a 'labels' array)")
    parser.add_argument("--protocol", required=True, choices=["sop", "cub", "cars", "inshop"])
    parser.add_argument("--query-mask", help="Q.npy: boolean per row, True = query (inshop only)")
    parser.add_argument("--nmi", action="store_true", help="also NMI and F1 by k-means")
    parser.add_argument("--seed", type=int, default=0, help="k-means random_state (default 0)")
    parser.add_argument("--n-init", type=int, default=10, help="k-means restarts (default 10)")
    parser.add_argument("--block-rows", type=int, default=2048, help="rows per similarity block (memory)")
    parser.add_argument("--out", help="RESULTS.json to write (default: print the metrics only)")


def _device(args):
    """--device when given: Recall@K then runs there (eval-features, and eval's retrieval scoring)."""
    if getattr(args, "device", None) is None:
        return None
    from rll_repro.device import resolve_device

    return resolve_device(args.device)


def evaluate_arrays(features, labels, args, extra_meta: dict | None = None) -> dict:
    """Shared by 'eval': the results dict (with _meta) of arrays under args.protocol."""
    import sys

    import numpy as np

    from rll_repro.eval.metrics import RECALL_KS, evaluate_retrieval
    from rll_repro.progress import Progress

    query_mask = getattr(args, "_query_mask_array", None)
    n = len(features) if query_mask is None else int(np.count_nonzero(query_mask))
    with Progress(n, "evaluate") as bar:
        result = evaluate_retrieval(args.protocol, features, labels, query_mask=query_mask, nmi=args.nmi,
                                    device=_device(args),
                                    seed=args.seed, n_init=args.n_init, block_rows=args.block_rows,
                                    progress=bar)
    skipped = [k for k in RECALL_KS[args.protocol] if f"R@{k}" not in result]
    if skipped:
        print(f"note: Recall@{','.join(map(str, skipped))} left out: fewer gallery items than K",
              file=sys.stderr)
    meta = {"protocol": args.protocol, "items": int(features.shape[0]), "dims": int(features.shape[1]),
            "units": "percent", "ranking": "cosine, stable ties (lower index first)"}
    if query_mask is not None:
        meta["queries"] = int(np.count_nonzero(query_mask))
        meta["gallery"] = int(features.shape[0] - meta["queries"])
    if skipped:
        meta["skipped_recall_k"] = skipped
    if args.nmi:
        meta["kmeans"] = {"seed": args.seed, "n_init": args.n_init, "library": "scikit-learn"}
    meta.update(extra_meta or {})
    return {**result, "_meta": meta}


def write_results(path, results: dict) -> None:
    import json

    from rll_repro.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(results, indent=1) + "\n")


def print_results(results: dict) -> None:
    print("  ".join(f"{k} {v:.2f}" for k, v in results.items() if not k.startswith("_")))


def check_features(features, where) -> None:
    """Errors the metrics would raise about "features", raised here naming the file: a
    non-numeric array, or a row that cannot be L2-normalised without epsilon (zero or non-finite)."""
    import numpy as np

    from rll_repro.errors import DataError

    if features.dtype.kind not in "biuf":
        raise DataError(f"{where}: features must be numbers, got a {features.dtype} array")
    x = features.astype(np.float32, copy=False)
    norms = np.einsum("ij,ij->i", x, x, dtype=np.float32)  # the squared norms knn.l2_normalize takes
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        raise DataError(f"{where}: row {int(np.flatnonzero(bad)[0])} has zero or non-finite norm "
                        f"({int(bad.sum())} such rows); cannot L2-normalise without epsilon")


def run(args) -> int:
    import numpy as np

    from rll_repro.errors import DataError
    from rll_repro.eval.extract import load_array

    features = load_array(args.features, "features")
    labels = load_array(args.labels, "labels").reshape(-1)
    if features.ndim != 2:
        raise DataError(f"{args.features}: features must be 2-D (images x dims), got shape {features.shape}")
    if labels.shape[0] != features.shape[0]:
        raise DataError(f"{args.labels}: {labels.shape[0]} labels for {features.shape[0]} feature rows")
    check_features(features, args.features)
    args._query_mask_array = None
    if args.query_mask:
        mask = load_array(args.query_mask, "query_mask").reshape(-1)
        if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
            raise DataError(f"{args.query_mask}: the query mask must be boolean (or 0/1)")
        args._query_mask_array = mask.astype(bool)
    elif args.protocol == "inshop":
        raise DataError("--protocol inshop needs --query-mask (True = query row)")
    results = evaluate_arrays(features, labels, args, {"features": str(args.features)})
    if args.out:
        write_results(args.out, results)
    print_results(results)
    return 0

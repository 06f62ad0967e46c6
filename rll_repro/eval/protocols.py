"""One evaluation pipeline per protocol, shared by the ``eval`` verb and ``reproduce``.

The original test scripts' rules (SPEC rll §5, osm §8): features are the deploy blob(s) of every
test image in list order (:func:`rll_repro.eval.extract.extract_features`), then

- retrieval (SOP, CUB, Cars: all vs all, self excluded; In-shop: queries vs gallery): Recall@K on
  cosine similarity with stable ties, K limited to the gallery size;
- Market-1501: single-query and multi-query (mean of each query's frames) mAP/CMC with the camera rule;
- video (MARS, LPW): a tracklet's feature is the mean of its frames' features, then MARS's query
  index and camera rule, or LPW's probe/gallery split.

Under torchrun every rank extracts a contiguous share of each list and the shares are gathered in
rank order, so the features (and the scores, computed by every rank) are the one-process ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from rll_repro.errors import DataError
from rll_repro.net.parallel import world

RETRIEVAL = ("sop", "cub", "cars", "inshop")
VIDEO = ("mars", "lpw")
PROTOCOLS = (*RETRIEVAL, "market", *VIDEO)
LPW_PROBE = 756


@dataclass
class ProtocolResult:
    metrics: dict
    features: np.ndarray
    labels: np.ndarray | None
    meta: dict = field(default_factory=dict)


def _gather_rows(mine: np.ndarray) -> np.ndarray:
    """Every rank's share of the features, in rank order (= list order: the shares are contiguous)."""
    import torch.distributed as dist

    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    return np.concatenate(parts)


def _retrieval_metrics(feats, labels, query_mask, ks) -> dict:
    from rll_repro.eval import metrics

    if query_mask is not None:
        ks = [k for k in ks if k <= int((~query_mask).sum())]
        return metrics.recall_query_gallery(feats[query_mask], labels[query_mask], feats[~query_mask],
                                            labels[~query_mask], ks)
    return metrics.recall_at_k(feats, labels, [k for k in ks if k <= len(labels) - 1])


def evaluate_protocol(net, protocol: str, test, *, transform, blobs, batch_size: int, workers: int = 0,
                      use_boxes: bool = False, recall_ks=(1, 10, 100, 1000), query_idx=None,
                      n_probe: int = LPW_PROBE, desc: str = "",
                      score_retrieval: Callable | None = None) -> ProtocolResult:
    """Extract ``test``'s features through ``net`` and score them under ``protocol``.

    ``test``: an image list (retrieval protocols; In-shop's has ``n_query``), a Market evaluation
    (``lists.load_market_evaluation``) or tracklets (``lists.load_tracklets``, video). ``transform``:
    the test preprocessing (None for lists of preprocessed data cells). ``score_retrieval(features,
    labels, query_mask)``: another scorer for the retrieval protocols (the ``eval`` verb's, with NMI);
    default Recall@``recall_ks``."""
    from rll_repro.data import loader
    from rll_repro.eval import metrics
    from rll_repro.eval.extract import extract_features

    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")

    def features(image_list, what):
        t = None if getattr(image_list, "images", None) is not None else transform
        rank, size = world()
        rows = np.array_split(np.arange(len(image_list)), size)[rank] if size > 1 else None
        batches = loader.make_test_loader(image_list, t, batch_size=batch_size, num_workers=workers,
                                          use_boxes=use_boxes, rows=rows)
        mine = extract_features(net, batches, blobs, total=len(image_list) if rows is None else len(rows),
                                desc=f"{desc}{what}".strip())
        return mine if rows is None else _gather_rows(mine)

    def paths(items):
        return loader.resolve_source({"paths": list(items), "class_ids": np.ones(len(items), np.int64)})

    if protocol in RETRIEVAL:
        feats = features(test, "extract")
        labels = np.asarray(test.class_ids).reshape(-1)
        query_mask = None
        if protocol == "inshop":
            if test.n_query is None:
                raise DataError(f"{getattr(test, 'source', 'the list')}: not an In-shop eval list (no query/gallery split)")
            query_mask = np.arange(len(labels)) < test.n_query
        scorer = score_retrieval or (lambda f, y, q: _retrieval_metrics(f, y, q, recall_ks))
        result = scorer(feats, labels, query_mask)
        meta = {"items": int(feats.shape[0]), "dims": int(feats.shape[1])}
        if query_mask is not None:
            meta.update(queries=int(query_mask.sum()), gallery=int((~query_mask).sum()))
        return ProtocolResult(result, feats, labels, meta)
    if protocol == "market":
        q = features(paths(test.query_paths), "query")
        g = features(paths(test.test_paths), "gallery")
        flat = [p for m in test.multi_query_paths for p in m]
        mq = features(paths(flat), "multi-query")
        bounds = np.cumsum([0] + [len(m) for m in test.multi_query_paths])
        multi = [mq[bounds[i]:bounds[i + 1]] for i in range(len(test.multi_query_paths))]
        result = metrics.market1501(q, test.query_ids, test.query_cams, g, test.test_ids, test.test_cams,
                                    multi_query=multi)
        return ProtocolResult(result, np.concatenate([q, g]), None, {"queries": int(len(q)), "gallery": int(len(g))})
    flat = [p for frames in test.frames for p in frames]  # video: tracklet = mean of its frames
    owner = np.repeat(np.arange(len(test.frames)), [len(f) for f in test.frames])
    feats = metrics.tracklet_features(features(paths(flat), "frames"), owner)
    if protocol == "mars":
        if query_idx is None:
            raise DataError("the MARS protocol needs its query_IDX.mat")
        if test.cameras is None:
            raise DataError(f"{getattr(test, 'source', 'the list')}: no test_cameras (MARS needs cameras)")
        result = metrics.mars(feats, test.labels, test.cameras, query_idx)
    else:
        result = metrics.lpw(feats, test.labels, n_probe=n_probe)
    return ProtocolResult(result, feats, test.labels, {"tracklets": int(len(feats)), "dims": int(feats.shape[1])})

"""Evaluation protocols of the original test scripts, returning percentages.

* SOP / CUB / Cars (SPEC rll §5, osm_caa §6): all test images vs all, self excluded, Recall@K.
* In-shop (SPEC rll §5): query x gallery, Recall@K, no self-exclusion.
* NMI / F1 by k-means (the released V03 scripts compute none; the older SOP code and the papers'
  tables do): scikit-learn ``KMeans(n_clusters=#classes, n_init=N_INIT, random_state=SEED)`` on the
  L2-normalised features; NMI = ``normalized_mutual_info_score`` (arithmetic mean normalisation);
  F1 = pairwise F1 (pairs in one cluster vs pairs of one class), as in the DML literature.
* Market-1501 (SPEC rll §5, Zheng et al.'s baseline code): squared Euclidean distance, good = same
  id & other camera, junk = id -1 or same id & same camera; AP by the trapezoid rule of
  ``compute_AP.m``; CMC; multi-query avg/max pooling; max pooling + 1-NN query expansion re-ranking.
* MARS / LPW (SPEC osm_caa §6): tracklet = mean of frame features; MARS = Market rules with the
  label-0 junk set and ``ap(isnan(ap)) = 0``; LPW = CMC only, no junk.
"""
from __future__ import annotations

import numpy as np

from rll_repro.errors import DataError
from rll_repro.eval.knn import (DEFAULT_BLOCK_ROWS, first_hit_ranks, l2_normalize, recall_from_ranks,
                                stable_order_asc, stable_order_desc)

RECALL_KS = {
    "sop": (1, 10, 100, 1000),
    "cub": (1, 2, 4, 8, 16, 32),
    "cars": (1, 2, 4, 8, 16, 32),
    "inshop": (1, 10, 20, 30, 40, 50),
}
CMC_RANKS = (1, 5, 10, 20)
KMEANS_SEED = 0
KMEANS_N_INIT = 10


def recall_at_k(features, labels, ks, *, block_rows: int = DEFAULT_BLOCK_ROWS, progress=None) -> dict[str, float]:
    """All-vs-all Recall@K (%) with the query itself excluded (SOP, CUB, Cars)."""
    feats = l2_normalize(features)
    lab = np.asarray(labels).reshape(-1)
    ranks = first_hit_ranks(feats, lab, normalized=True, block_rows=block_rows, progress=progress)
    return recall_from_ranks(ranks, ks, feats.shape[0] - 1)


def recall_query_gallery(query, q_labels, gallery, g_labels, ks, *, block_rows: int = DEFAULT_BLOCK_ROWS,
                         progress=None) -> dict[str, float]:
    """Query -> gallery Recall@K (%) (In-shop), no self-exclusion."""
    q, g = l2_normalize(query, "query features"), l2_normalize(gallery, "gallery features")
    ranks = first_hit_ranks(q, q_labels, g, g_labels, normalized=True, block_rows=block_rows,
                            progress=progress)
    return recall_from_ranks(ranks, ks, g.shape[0])


def _recall_on_device(device, q, ql, ks, g, gl, block_rows) -> dict[str, float]:
    import torch

    from rll_repro.eval import knn_device

    def put(a, dtype=torch.float32):
        return None if a is None else torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    l2_normalize(q, "query features")  # the host path's checks (zero rows, NaN) before moving
    out = knn_device.recall_at_k(put(q), put(ql, torch.int64), ks, gallery=put(g),
                                 g_labels=put(gl, torch.int64), block_rows=block_rows)
    return {k: float(v) for k, v in out.items()}


def pairwise_f1(labels, clusters) -> float:
    """Pairwise F1: precision/recall of the 'same cluster' pairs against the 'same class' pairs."""
    from scipy.sparse import coo_matrix

    lab = np.unique(np.asarray(labels).reshape(-1), return_inverse=True)[1]
    clu = np.unique(np.asarray(clusters).reshape(-1), return_inverse=True)[1]
    table = coo_matrix((np.ones(lab.size), (clu, lab))).tocsr()
    pairs = lambda n: n * (n - 1) / 2.0  # noqa: E731
    tp = pairs(table.data).sum()
    predicted = pairs(np.asarray(table.sum(axis=1)).ravel()).sum()
    actual = pairs(np.asarray(table.sum(axis=0)).ravel()).sum()
    if predicted == 0 or actual == 0 or tp == 0:
        return 0.0
    precision, recall = tp / predicted, tp / actual
    return float(2 * precision * recall / (precision + recall))


def nmi_f1(features, labels, *, seed: int = KMEANS_SEED, n_init: int = KMEANS_N_INIT) -> dict[str, float]:
    """NMI and F1 (%) of k-means with as many clusters as classes on the L2-normalised features."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    feats = l2_normalize(features)
    lab = np.asarray(labels).reshape(-1)
    n_classes = len(np.unique(lab))
    if n_classes > feats.shape[0]:
        raise DataError("more classes than samples")
    clusters = KMeans(n_clusters=n_classes, n_init=n_init, random_state=seed).fit_predict(feats)
    return {"NMI": 100.0 * float(normalized_mutual_info_score(lab, clusters)),
            "F1": 100.0 * pairwise_f1(lab, clusters)}


# --------------------------------------------------------------------------------------------- re-id
def sqdist(gallery: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (gallery x query) as the baseline's ``sqdist``: |aa + bb - 2ab|, float32."""
    g = np.asarray(gallery, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32)
    aa = np.einsum("ij,ij->i", g, g, dtype=np.float32)
    bb = np.einsum("ij,ij->i", q, q, dtype=np.float32)
    return np.abs(aa[:, None] + bb[None, :] - np.float32(2) * (g @ q.T))


def ap_and_cmc(order: np.ndarray, good: np.ndarray, junk: np.ndarray) -> tuple[float, np.ndarray]:
    """``compute_AP.m`` for one query: ``order`` = gallery indices best first; good/junk = boolean masks.

    Junk items are skipped (they neither count nor take a position; good and junk are disjoint
    for every protocol here). AP is the trapezoid rule:
    sum over the good hits i = 1..ngood at kept position r_i (0-based) of
    (1/ngood) * (prec_before + i/(r_i+1)) / 2, prec_before = (i-1)/r_i (1.0 when r_i = 0).
    CMC(n) = 1 from the first good's kept position on. No good item -> AP 0 (MARS' ``ap(isnan)=0``)
    and a zero CMC.
    """
    g = good[order]
    keep = ~junk[order]
    g = g[keep]
    cmc = np.zeros(len(order), dtype=np.float64)
    positions = np.flatnonzero(g)
    ngood = int(good.sum())
    if ngood == 0 or positions.size == 0:
        return 0.0, cmc
    cmc[positions[0]:] = 1.0
    i = np.arange(1, positions.size + 1, dtype=np.float64)
    r = positions.astype(np.float64)
    before = np.where(r > 0, (i - 1) / np.maximum(r, 1), 1.0)
    ap = float(np.sum((1.0 / ngood) * (before + i / (r + 1)) / 2.0))
    return ap, cmc


def _reid_scores(rankings, good_masks, junk_masks, ranks) -> dict[str, float]:
    aps, cmcs = [], []
    for order, good, junk in zip(rankings, good_masks, junk_masks):
        ap, cmc = ap_and_cmc(order, good, junk)
        aps.append(ap)
        cmcs.append(cmc[: max(ranks)])
    cmc = np.mean(cmcs, axis=0) if cmcs else np.zeros(max(ranks))
    out = {"mAP": 100.0 * float(np.mean(aps)) if aps else float("nan")}
    for r in ranks:  # ranks beyond the gallery size are left out (undefined)
        if r <= cmc.size:
            out[f"R@{r}"] = 100.0 * float(cmc[r - 1])
    return out


def _good_junk(q_id, q_cam, g_ids, g_cams, junk_ids):
    same = g_ids == q_id
    good = same & (g_cams != q_cam)
    junk = np.isin(g_ids, junk_ids) | (same & (g_cams == q_cam))
    return good, junk


def market1501(query, query_ids, query_cams, gallery, gallery_ids, gallery_cams, *,
               multi_query=None, junk_ids=(-1,), ranks=CMC_RANKS) -> dict[str, float]:
    """Market-1501 single-query (and, given ``multi_query``, multi-query) mAP and CMC in percent.

    ``multi_query``: a list with, per query, the (m_k x d) raw features of its gt_query images. Each is
    L2-normalised, pooled by max and by mean, re-normalised. Re-ranking (the baseline's 1-NN query
    expansion after max pooling): score = (2 - dist_max)/2 + (g_first . G)/2, g_first = the first
    non-junk gallery item of the max-pooling ranking, ranked by 'descend' (stable).
    Keys: ``single_query/mAP``, ``single_query/R@1``, ..., ``multi_query_avg/...``,
    ``multi_query_max/...``, ``multi_query_max_rerank/...``.
    """
    q = l2_normalize(query, "query features")
    g = l2_normalize(gallery, "gallery features")
    qid, qcam = np.asarray(query_ids).reshape(-1), np.asarray(query_cams).reshape(-1)
    gid, gcam = np.asarray(gallery_ids).reshape(-1), np.asarray(gallery_cams).reshape(-1)
    if not (len(qid) == len(qcam) == q.shape[0]) or not (len(gid) == len(gcam) == g.shape[0]):
        raise DataError("market1501: ids/cameras must have one entry per feature row")
    masks = [_good_junk(qid[k], qcam[k], gid, gcam, junk_ids) for k in range(len(qid))]
    goods = [m[0] for m in masks]
    junks = [m[1] for m in masks]
    dist = sqdist(g, q)  # gallery x query
    out = {}
    single = stable_order_asc(dist.T)
    for key, val in _reid_scores(single, goods, junks, ranks).items():
        out[f"single_query/{key}"] = val
    if multi_query is None:
        return out
    if len(multi_query) != q.shape[0]:
        raise DataError(f"market1501: {len(multi_query)} multi-query feature sets for {q.shape[0]} queries")
    pooled_max, pooled_avg = [], []
    for k, feats in enumerate(multi_query):
        f = l2_normalize(np.asarray(feats).reshape(-1, q.shape[1]), f"multi-query features of query {k}")
        if f.shape[0] == 0:
            raise DataError(f"market1501: query {k} has no multi-query (gt_query) images")
        pooled_max.append(f.max(axis=0))
        pooled_avg.append(f.mean(axis=0, dtype=np.float32))
    q_max = l2_normalize(np.stack(pooled_max), "max-pooled queries")
    q_avg = l2_normalize(np.stack(pooled_avg), "avg-pooled queries")
    d_avg = sqdist(g, q_avg)
    d_max = sqdist(g, q_max)
    for name, d in (("multi_query_avg", d_avg), ("multi_query_max", d_max)):
        for key, val in _reid_scores(stable_order_asc(d.T), goods, junks, ranks).items():
            out[f"{name}/{key}"] = val
    order_max = stable_order_asc(d_max.T)
    cos_max = (np.float32(2) - d_max) / np.float32(2)
    reranked = []
    for k in range(q.shape[0]):
        kept = order_max[k][~junks[k][order_max[k]]]
        score = cos_max[:, k].copy()
        if kept.size:
            score = score + (g @ g[kept[0]]) / np.float32(2)
        reranked.append(stable_order_desc(score))
    for key, val in _reid_scores(reranked, goods, junks, ranks).items():
        out[f"multi_query_max_rerank/{key}"] = val
    return out


def tracklet_features(frame_features, tracklet_index) -> np.ndarray:
    """Mean of the (un-normalised) frame features of each tracklet; ``tracklet_index[i]`` = frame i's tracklet."""
    f = np.asarray(frame_features, dtype=np.float32)
    t = np.asarray(tracklet_index).reshape(-1)
    n = int(t.max()) + 1
    sums = np.zeros((n, f.shape[1]), dtype=np.float64)
    np.add.at(sums, t, f)
    counts = np.bincount(t, minlength=n)
    if (counts == 0).any():
        raise DataError(f"tracklet {int(np.flatnonzero(counts == 0)[0])} has no frames")
    return (sums / counts[:, None]).astype(np.float32)


def mars(features, ids, cams, query_index, *, junk_ids=(0,), ranks=CMC_RANKS) -> dict[str, float]:
    """MARS: every test tracklet is in the gallery; queries = ``query_index`` (0-based) into it.

    Distance 1 - cosine of the L2-normalised tracklet features; good/junk as Market-1501 with the
    label-0 junk set (SPEC osm_caa §6), so the query tracklet itself is junk.
    """
    g = l2_normalize(features, "tracklet features")
    gid, gcam = np.asarray(ids).reshape(-1), np.asarray(cams).reshape(-1)
    qi = np.asarray(query_index).reshape(-1).astype(np.int64)
    dist = np.float32(1) - g @ g[qi].T
    masks = [_good_junk(gid[k], gcam[k], gid, gcam, junk_ids) for k in qi]
    return _reid_scores(stable_order_asc(dist.T), [m[0] for m in masks], [m[1] for m in masks], ranks)


def lpw(features, ids, *, n_probe: int = 756, ranks=CMC_RANKS) -> dict[str, float]:
    """LPW: probe = the first ``n_probe`` test tracklets, gallery = the rest; cosine descending; CMC only."""
    f = l2_normalize(features, "tracklet features")
    lab = np.asarray(ids).reshape(-1)
    if not 0 < n_probe < f.shape[0]:
        raise DataError(f"lpw: n_probe={n_probe} must be between 1 and {f.shape[0] - 1}")
    probe, gallery = f[:n_probe], f[n_probe:]
    order = stable_order_desc(probe @ gallery.T)
    goods = [lab[n_probe:] == lab[k] for k in range(n_probe)]
    no_junk = np.zeros(gallery.shape[0], dtype=bool)
    scores = _reid_scores(order, goods, [no_junk] * n_probe, ranks)
    scores.pop("mAP")
    return scores


def evaluate_retrieval(protocol: str, features, labels, *, query_mask=None, nmi: bool = False,
                       seed: int = KMEANS_SEED, n_init: int = KMEANS_N_INIT,
                       block_rows: int = DEFAULT_BLOCK_ROWS, progress=None,
                       skip_large_k: bool = True, device=None) -> dict[str, float]:
    """The metrics of one retrieval protocol (sop, cub, cars, inshop) as ``{"R@1": %, ...}``.

    With ``skip_large_k`` the K larger than the gallery are left out (small test sets) instead of
    raising. ``device``: a torch device other than the CPU computes Recall@K there
    (:mod:`rll_repro.eval.knn_device`, same ranking rules).
    """
    if protocol not in RECALL_KS:
        raise DataError(f"unknown retrieval protocol {protocol!r} (choose from {', '.join(RECALL_KS)})")
    feats = np.asarray(features)
    lab = np.asarray(labels).reshape(-1)
    if feats.ndim != 2 or feats.shape[0] != lab.shape[0]:
        raise DataError(f"features {feats.shape} and labels ({lab.shape[0]},) do not match")
    ks = RECALL_KS[protocol]
    n_gallery = lab.shape[0] - 1
    if protocol == "inshop" and query_mask is not None:
        n_gallery = int(lab.shape[0] - np.count_nonzero(query_mask))
    if skip_large_k:  # Recall@K beyond the gallery size is undefined (MATLAB would fail to index)
        ks = tuple(k for k in ks if k <= n_gallery)
    on_device = device is not None and str(device) != "cpu"
    if protocol == "inshop":
        if query_mask is None:
            raise DataError("inshop needs a query mask (True = query, False = gallery)")
        qm = np.asarray(query_mask).reshape(-1).astype(bool)
        if qm.shape[0] != lab.shape[0]:
            raise DataError(f"query mask has {qm.shape[0]} entries for {lab.shape[0]} items")
        if on_device:
            result = _recall_on_device(device, feats[qm], lab[qm], ks, feats[~qm], lab[~qm], block_rows)
        else:
            result = recall_query_gallery(feats[qm], lab[qm], feats[~qm], lab[~qm], ks,
                                          block_rows=block_rows, progress=progress)
    else:
        if query_mask is not None:
            raise DataError(f"--query-mask only applies to inshop, not {protocol}")
        if on_device:
            result = _recall_on_device(device, feats, lab, ks, None, None, block_rows)
        else:
            result = recall_at_k(feats, lab, ks, block_rows=block_rows, progress=progress)
    if nmi:
        result.update(nmi_f1(feats, lab, seed=seed, n_init=n_init))
    return result

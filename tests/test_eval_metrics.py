"""Retrieval and re-id metrics on tiny hand-computed cases (exact values: every similarity here is
exactly representable, so equality is exact unless a tolerance is stated)."""
from __future__ import annotations

import numpy as np
import pytest

from rll_repro.errors import DataError
from rll_repro.eval import metrics
from rll_repro.eval.knn import first_hit_ranks, l2_normalize

# Four unit vectors whose similarities are exactly 0 or -1: query 0 sees items 1 and 2 at the same
# similarity 0; only MATLAB's stable order (lower index first) puts the other-class item 1 first.
TIES = np.array([[1, 0], [0, 1], [0, -1], [-1, 0]], dtype=np.float32)
TIE_LABELS = np.array([0, 1, 0, 1])


def test_recall_ties_keep_lower_index_first():
    # q0: order 1,2,3 -> first positive (2) at rank 1; q1: order 0,3,2 -> positive 3 at rank 1;
    # q2: order 0,3,1 -> positive 0 at rank 0; q3: order 1,2,0 -> positive 1 at rank 0.
    assert first_hit_ranks(TIES, TIE_LABELS).tolist() == [1, 1, 0, 0]
    r = metrics.recall_at_k(TIES, TIE_LABELS, (1, 2, 3))
    assert r == {"R@1": 50.0, "R@2": 100.0, "R@3": 100.0}


def test_recall_tie_with_positive_at_lower_index_is_a_hit():
    # swap items 1 and 2: q0's tied neighbours are now (positive 1, negative 2) -> rank 0
    feats, labels = TIES[[0, 2, 1, 3]], TIE_LABELS[[0, 2, 1, 3]]
    assert first_hit_ranks(feats, labels).tolist() == [0, 0, 1, 1]


def test_recall_excludes_the_query_itself():
    # item 1 duplicates item 0 but is of another class: with self excluded it is q0's nearest
    feats = np.array([[1, 0], [1, 0], [0.6, 0.8]], dtype=np.float32)
    labels = np.array([0, 1, 0])
    r = metrics.recall_at_k(feats, labels, (1, 2))
    # q0: order 1 (sim 1), 2 (0.6) -> miss@1, hit@2; q1: order 0, 2 -> no positive: never a hit
    # q2: order 0 (0.6), 1 (0.6, tie, higher index) -> hit@1
    assert r == {"R@1": pytest.approx(100 / 3), "R@2": pytest.approx(200 / 3)}


def test_recall_class_with_one_image_counts_as_miss():
    feats = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1]], dtype=np.float32)
    labels = np.array([7, 3, 3, 9])  # classes 7 and 9 have one image each
    r = metrics.recall_at_k(feats, labels, (1, 3))
    assert r == {"R@1": 50.0, "R@3": 50.0}  # only the two class-3 queries can ever hit


def test_recall_is_invariant_to_feature_scale():
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((50, 6)).astype(np.float32)
    labels = rng.integers(0, 10, 50)
    scale = rng.uniform(0.5, 4, (50, 1)).astype(np.float32)
    # L2 normalisation happens inside: scaled rows give the same similarities up to rounding
    assert metrics.recall_at_k(feats, labels, (1, 4)) == metrics.recall_at_k(feats * scale, labels, (1, 4))


def test_inshop_query_to_gallery():
    q = np.array([[1, 0], [0, 1]], dtype=np.float32)
    g = np.array([[0.8, 0.6], [1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    ql = np.array([5, 6])
    gl = np.array([6, 5, 1, 6])
    # q0 (label 5): order g1 (1.0), g0 (0.8), g3 (0.6), g2 -> hit@1
    # q1 (label 6): order g2 (1.0, label 1), g3 (0.8, label 6) -> miss@1, hit@2
    r = metrics.recall_query_gallery(q, ql, g, gl, (1, 2))
    assert r == {"R@1": 50.0, "R@2": 100.0}


def test_evaluate_retrieval_inshop_uses_the_query_mask():
    feats = np.array([[1, 0], [0, 1], [0.8, 0.6], [1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    labels = np.array([5, 6, 6, 5, 1, 6])
    mask = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    r = metrics.evaluate_retrieval("inshop", feats, labels, query_mask=mask)
    assert r == {"R@1": 50.0}  # K = 10.. exceed the 4-item gallery and are left out


def test_evaluate_retrieval_rejects_mismatched_labels():
    with pytest.raises(DataError, match="do not match"):
        metrics.evaluate_retrieval("sop", np.ones((3, 2), np.float32), np.arange(4))


def test_zero_feature_row_is_an_error_not_nan():
    with pytest.raises(DataError, match="row 1 has zero"):
        l2_normalize(np.array([[1, 0], [0, 0]], dtype=np.float32))


def test_l2_normalize_is_x_over_sqrt_sum_of_squares():
    y = l2_normalize(np.array([[3, 4], [0, -2]], dtype=np.float32))
    assert y.dtype == np.float32
    assert y.tolist() == [[np.float32(0.6), np.float32(0.8)], [0.0, -1.0]]


def test_pairwise_f1_by_hand():
    # same-cluster pairs: (0,1),(0,2),(1,2); same-class pairs: (0,1),(2,3); both: (0,1)
    # precision 1/3, recall 1/2 -> F1 = 2*(1/6)/(5/6) = 0.4
    assert metrics.pairwise_f1([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(0.4, abs=1e-15)


def test_nmi_f1_perfect_clusters():
    feats = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99], [-1, 0], [-0.99, -0.1]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])
    r = metrics.nmi_f1(feats, labels, seed=0, n_init=10)
    assert r == {"NMI": pytest.approx(100.0), "F1": pytest.approx(100.0)}


# ------------------------------------------------------------------------------------ re-id
def compute_ap_loop(good, junk, index):
    """Line-by-line transcription of the Market-1501 baseline's compute_AP.m (SPEC rll §5)."""
    cmc = np.zeros(len(index))
    ngood = len(good)
    old_recall, old_precision, ap, intersect_size, j, good_now, njunk = 0.0, 1.0, 0.0, 0, 0, 0, 0
    for n, item in enumerate(index, start=1):
        flag = 0
        if item in good:
            cmc[n - njunk - 1:] = 1
            flag = 1
            good_now += 1
        if item in junk:
            njunk += 1
            continue
        if flag:
            intersect_size += 1
        recall = intersect_size / ngood
        precision = intersect_size / (j + 1)
        ap += (recall - old_recall) * ((old_precision + precision) / 2)
        old_recall, old_precision = recall, precision
        j += 1
        if good_now == ngood:
            return ap, cmc
    return ap, cmc


def test_ap_trapezoid_by_hand():
    order = np.array([0, 1, 2, 3])
    good = np.array([True, False, True, False])
    # goods at positions 0 and 2: (1/2)(1 + 1)/2 + (1/2)(1/2 + 2/3)/2 = 0.5 + 0.291666...
    ap, cmc = metrics.ap_and_cmc(order, good, np.zeros(4, bool))
    assert ap == pytest.approx(0.5 + (0.5 + 2 / 3) / 4, abs=1e-15)
    assert cmc.tolist() == [1, 1, 1, 1]


def test_ap_skips_junk():
    order = np.array([0, 1, 2, 3])
    good = np.array([False, False, True, True])
    junk = np.array([True, False, False, False])
    # junk 0 removed: goods at kept positions 1, 2 -> (1/2)(0 + 1/2)/2 + (1/2)(1/2 + 2/3)/2
    ap, cmc = metrics.ap_and_cmc(order, good, junk)
    assert ap == pytest.approx(0.125 + (0.5 + 2 / 3) / 4, abs=1e-15)
    assert cmc[:3].tolist() == [0, 1, 1]


def test_ap_matches_compute_ap_transcription_on_random_rankings():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 30))
        order = rng.permutation(n)
        kind = rng.integers(0, 3, n)  # 0 other, 1 good, 2 junk
        good, junk = kind == 1, kind == 2
        if not good.any():
            continue
        ap, cmc = metrics.ap_and_cmc(order, good, junk)
        ref_ap, ref_cmc = compute_ap_loop(set(np.flatnonzero(good)), set(np.flatnonzero(junk)), order)
        assert ap == pytest.approx(ref_ap, abs=1e-12)  # float64 both; only summation order differs
        assert cmc.tolist() == ref_cmc.tolist()


def test_ap_without_good_items_is_zero():
    ap, cmc = metrics.ap_and_cmc(np.arange(3), np.zeros(3, bool), np.zeros(3, bool))
    assert ap == 0.0 and not cmc.any()


def _market_case():
    q = np.array([[1, 0], [0, 1]], dtype=np.float32)
    g = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1], [0.8, 0.6]], dtype=np.float32)
    g_ids = np.array([1, 1, -1, 2, 2])
    g_cams = np.array([1, 2, 1, 1, 2])
    return q, np.array([1, 2]), np.array([1, 1]), g, g_ids, g_cams


def test_market_single_query_good_and_junk():
    q, qid, qcam, g, gid, gcam = _market_case()
    r = metrics.market1501(q, qid, qcam, g, gid, gcam, ranks=(1, 2))
    # q0 (id 1, cam 1): g0 same id same cam -> junk; g2 id -1 -> junk; good = g1.
    #   order by distance: g0, g1/g4 tie (g1 first), g2, g3 -> kept g1, g4, g3: good at 0 -> AP 1
    # q1 (id 2, cam 1): g3 same cam -> junk; g2 junk; good = g4. order g3, g2, g1/g4 tie -> g1, g4, g0
    #   kept g1, g4, g0: good at kept position 1 -> AP (0 + 1/2)/2 = 0.25, R@1 miss
    assert r["single_query/mAP"] == pytest.approx(100 * (1 + 0.25) / 2)
    assert r["single_query/R@1"] == 50.0 and r["single_query/R@2"] == 100.0


def test_market_multi_query_pooling_and_rerank():
    q, qid, qcam, g, gid, gcam = _market_case()
    # one gt image equal to the query: max = avg = the query itself -> same as single query
    multi = [q[:1], q[1:]]
    r = metrics.market1501(q, qid, qcam, g, gid, gcam, multi_query=multi, ranks=(1,))
    for name in ("multi_query_avg", "multi_query_max"):
        assert r[f"{name}/mAP"] == r["single_query/mAP"]
    # re-ranking, q1: first non-junk of the max ranking is g1 -> score = cos(q1, g) + cos(g1, g)/2
    #   g4 = g1 -> 0.6 + 0.5 = 1.1 ties g1 (0.6 + 0.5); g1 first (lower index): good at 1 -> AP .25
    assert r["multi_query_max_rerank/mAP"] == pytest.approx(100 * (1 + 0.25) / 2)


def test_market_max_and_avg_pooling_differ():
    q, qid, qcam, g, gid, gcam = _market_case()
    multi = [np.array([[1, 0], [0, 1]], np.float32), np.array([[0, 1], [0.6, 0.8]], np.float32)]
    r = metrics.market1501(q, qid, qcam, g, gid, gcam, multi_query=multi, ranks=(1,))
    # q0 max-pooled = normalise([1, 1]) and avg-pooled = normalise([0.5, 0.5]): the same direction
    assert r["multi_query_avg/mAP"] == pytest.approx(r["multi_query_max/mAP"])


def test_mars_query_itself_and_label_zero_are_junk():
    feats = np.array([[1, 0], [0.8, 0.6], [0.9, 0.1], [0, 1]], dtype=np.float32)
    ids = np.array([4, 4, 0, 5])
    cams = np.array([1, 2, 1, 1])
    r = metrics.mars(feats, ids, cams, [0], ranks=(1, 2))
    # query 0: itself junk (same id, same cam), tracklet 2 (label 0) junk: first kept is tracklet 1
    assert r == {"mAP": 100.0, "R@1": 100.0, "R@2": 100.0}


def test_lpw_probe_gallery_split_and_cmc():
    feats = np.array([[1, 0], [0, 1], [0, 1], [1, 0], [0.6, 0.8]], dtype=np.float32)
    ids = np.array([1, 2, 2, 1, 9])
    # probe 0 (id 1): gallery 2 (0.0), 3 (1.0), 4 (0.6) -> 3 first: hit@1
    # probe 1 (id 2): gallery 2 (1.0) -> hit@1
    assert metrics.lpw(feats, ids, n_probe=2, ranks=(1, 2)) == {"R@1": 100.0, "R@2": 100.0}
    ids2 = np.array([1, 2, 2, 3, 1])  # probe 0's match is now tracklet 4 at rank 2
    assert metrics.lpw(feats, ids2, n_probe=2, ranks=(1, 2)) == {"R@1": 50.0, "R@2": 100.0}


def test_tracklet_features_are_unnormalised_means():
    frames = np.array([[1, 0], [3, 0], [0, 2]], dtype=np.float32)
    assert metrics.tracklet_features(frames, [0, 0, 1]).tolist() == [[2, 0], [0, 2]]


def test_market_query_without_multi_query_images_is_an_error():
    q, qid, qcam, g, gid, gcam = _market_case()
    with pytest.raises(DataError, match="query 1 has no multi-query"):
        metrics.market1501(q, qid, qcam, g, gid, gcam, multi_query=[q[:1], np.zeros((0, 2), np.float32)])

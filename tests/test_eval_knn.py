"""Blocked kNN / first-hit ranks against a brute-force MATLAB-order reference.

The reference is the full similarity matrix sorted with a stable sort (MATLAB's ``sort`` keeps
ties in index order). The features make every similarity exact (:func:`_tied_features`), so the
comparison is exact on any BLAS: a matmul's summation order depends on the block shape and the CPU
(MKL's AVX2 path computes a 1-, 7- or 64-row block and the full matrix differently in the last bit,
which reorders near-ties), and exact ties are everywhere.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rll_repro.errors import DataError
from rll_repro.eval.knn import first_hit_ranks, knn, l2_normalize


def _tied_features(n=300, d=6, seed=0):
    """Rows with four entries +-0.5 and zeros elsewhere: unit norm exactly (l2_normalize keeps them),
    every similarity a multiple of 0.25 with exact partial sums, so the same float32 number whatever
    kernel, block, summation order or thread count computes it; 9 possible values: ties everywhere."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, d), np.float32)
    cols = np.argsort(rng.random((n, d)), axis=1)[:, :4]
    np.put_along_axis(x, cols, rng.choice(np.float32([-0.5, 0.5]), (n, 4)), axis=1)
    x[5] = x[17]  # exact duplicates
    x[40] = x[41] = x[42]
    return x, rng.integers(0, n // 4, n)


def _reference_order(x, exclude_self=True):
    xn = l2_normalize(x)
    s = torch.mm(torch.from_numpy(xn), torch.from_numpy(xn).T).numpy()
    if exclude_self:
        np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1, kind="stable"), s


@pytest.mark.parametrize("block_rows", [1, 7, 64, 1000])
def test_first_hit_ranks_equal_stable_sort_for_any_block_size(count_kernels, block_rows):
    x, labels = _tied_features()
    order, _ = _reference_order(x)
    hits = labels[order] == labels[:, None]  # self sits last and is same-class
    expected = hits.argmax(axis=1)
    assert first_hit_ranks(x, labels, block_rows=block_rows).tolist() == expected.tolist()


def test_first_hit_ranks_query_gallery_without_positive_is_gallery_size():
    q = np.array([[1, 0]], np.float32)
    g = np.array([[1, 0], [0, 1]], np.float32)
    assert first_hit_ranks(q, [3], g, [1, 2]).tolist() == [2]


@pytest.mark.parametrize("k", [1, 5, 37])
def test_knn_matches_stable_sort_including_boundary_ties(k):
    x, _ = _tied_features(seed=1)
    order, s = _reference_order(x)
    v, i = knn(x, k, block_rows=50)
    assert i.tolist() == order[:, :k].tolist()
    assert np.array_equal(v, np.take_along_axis(s, order[:, :k], axis=1))


def test_knn_query_gallery_keeps_self_matches():
    g = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    v, i = knn(g[:1], 2, g)
    assert i.tolist() == [[0, 2]]  # itself (no exclusion across sets), then its duplicate


def test_knn_rejects_k_outside_gallery():
    with pytest.raises(DataError, match="outside"):
        knn(np.eye(3, dtype=np.float32), 4, np.eye(3, dtype=np.float32))


def test_dimension_mismatch_is_an_error():
    with pytest.raises(DataError, match="dims"):
        first_hit_ranks(np.eye(2, dtype=np.float32), [0, 1], np.eye(3, dtype=np.float32), [0, 1, 2])


def test_large_classes_take_the_dense_path_with_the_same_ranks(monkeypatch):
    from rll_repro.eval import knn as knn_mod

    x, _ = _tied_features(n=200, seed=2)
    labels = np.arange(200) % 3  # ~67 items per class
    sparse = first_hit_ranks(x, labels, block_rows=33)
    monkeypatch.setattr(knn_mod, "SPARSE_POSITIVES_MAX", 8)
    dense = first_hit_ranks(x, labels, block_rows=33)
    order, _ = _reference_order(x)
    expected = (labels[order] == labels[:, None]).argmax(axis=1)
    assert sparse.tolist() == dense.tolist() == expected.tolist()


@pytest.mark.parametrize("threads", [1, 3])
def test_first_hit_ranks_do_not_depend_on_worker_threads(threads):
    x, labels = _tied_features(n=260, seed=4)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = first_hit_ranks(x, labels, block_rows=40)
    finally:
        torch.set_num_threads(before)
    order, _ = _reference_order(x)
    assert got.tolist() == (labels[order] == labels[:, None]).argmax(axis=1).tolist()


@pytest.mark.parametrize("n,block_rows,seed", [(300, 64, 0), (1000, 100, 1), (700, 2048, 2), (513, 70, 3)])
def test_symmetric_path_equals_plain_path_on_data_with_ties(count_kernels, n, block_rows, seed):
    """Self-retrieval computes each block of X·Xᵀ once for its rows and its columns (in label order);
    the plain path computes every row's similarities itself. Integer features with normalized=True
    make every similarity an exact small integer, so the two agree on any BLAS, ties everywhere
    (stable order by original index), shuffled labels, classes of 1 to ~10 items and some singletons."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (n, 5)).astype(np.float32)
    labels = rng.integers(0, n // 4, n)
    labels[:7] = n  # a class of 7 at the start
    labels[-1] = n + 1  # a singleton: no positive
    sym = first_hit_ranks(x, labels, block_rows=block_rows, normalized=True)
    plain = first_hit_ranks(x, labels, block_rows=block_rows, normalized=True, symmetric=False)
    assert sym.tolist() == plain.tolist()
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")
    assert sym.tolist() == (labels[order] == labels[:, None]).argmax(axis=1).tolist()


def test_symmetric_path_equals_plain_path_through_l2_normalisation():
    """The same through recall's own normalisation (exact unit rows, see _tied_features)."""
    x, labels = _tied_features(n=900, d=8, seed=5)
    assert (first_hit_ranks(x, labels, block_rows=128).tolist()
            == first_hit_ranks(x, labels, block_rows=128, symmetric=False).tolist())


def test_symmetric_path_on_labels_already_in_order_uses_the_features_in_place():
    """Test lists are sorted by class: the symmetric path then skips its permuted copy; the ranks are
    still the plain path's (integer features: exact similarities, ties everywhere)."""
    rng = np.random.default_rng(7)
    x = rng.integers(-2, 3, (400, 5)).astype(np.float32)
    labels = np.sort(rng.integers(0, 90, 400))
    sym = first_hit_ranks(x, labels, block_rows=64, normalized=True)
    assert sym.tolist() == first_hit_ranks(x, labels, block_rows=64, normalized=True, symmetric=False).tolist()


class _Counter:
    def __init__(self):
        self.total = 0
        self.calls = 0

    def update(self, k: int) -> None:
        self.total += k
        self.calls += 1


@pytest.mark.parametrize("symmetric", [True, False])
def test_progress_reports_every_query_row_once(symmetric):
    """Both paths report progress in query rows, summing to the number of rows (the symmetric path
    in proportion to the pairs its worker threads have counted)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((700, 6)).astype(np.float32)
    labels = rng.integers(0, 150, 700)
    progress = _Counter()
    first_hit_ranks(x, labels, block_rows=64, symmetric=symmetric, progress=progress)
    assert progress.total == 700 and progress.calls > 1

"""Word-wise mask counting (rll_repro.eval.counts) and the tile workers (rll_repro.eval.workers):
exact integer counts against numpy's own, whatever the width (padding, groups of 255 words) and
whatever an earlier, wider compare left in the buffer."""
import numpy as np
import pytest
import torch

from rll_repro.eval import counts, workers


@pytest.mark.parametrize("cols", [1, 7, 8, 9, 2040, 2041, 4100, 12612])
def test_row_and_column_counts_equal_numpys(cols):
    rng = np.random.default_rng(cols)
    values = rng.integers(-3, 4, (37, cols)).astype(np.float32)  # many exact ties with the thresholds
    thr_rows = rng.integers(-3, 4, (37, 1)).astype(np.float32)
    thr_cols = rng.integers(-3, 4, (1, cols)).astype(np.float32)
    mask = counts.mask_buffer(64, 12612)
    mask[:] = True  # stale bits from an earlier, wider compare must not be counted
    for strict in (True, False):
        ref_rows = (values > thr_rows) if strict else (values >= thr_rows)
        assert counts.row_counts(counts.compare(values, thr_rows, mask, strict)).tolist() == ref_rows.sum(1).tolist()
        ref_cols = (values > thr_cols) if strict else (values >= thr_cols)
        got = counts.column_counts(counts.compare(values, thr_cols, mask, strict), cols)
        assert got.tolist() == ref_cols.sum(0).tolist()


def test_column_counts_refuse_more_rows_than_a_byte_lane_holds():
    mask = counts.mask_buffer(300, 16)
    words = counts.compare(np.ones((256, 16), np.float32), np.zeros((1, 16), np.float32), mask, True)
    with pytest.raises(ValueError, match="at most 255 rows"):
        counts.column_counts(words, 16)
    assert counts.row_counts(words).tolist() == [16] * 256  # rows are fine


def test_run_tasks_gives_every_task_to_one_worker_and_restores_torch_threads():
    before = torch.get_num_threads()

    def work(state, task):
        state.append(task)
        assert torch.get_num_threads() == 1  # workers run single-threaded products

    done = []
    states = workers.run_tasks(range(50), list, work, 2, done.append)
    assert sorted(t for s in states for t in s) == list(range(50))
    assert sorted(done) == list(range(50)) and len(states) == 2
    assert torch.get_num_threads() == before
    assert workers.run_tasks(range(3), list, lambda s, t: s.append(t), 1) == [[0, 1, 2]]


def test_run_tasks_sets_one_thread_in_each_worker_thread(monkeypatch):
    """OpenMP's thread count is a per-thread setting: a worker thread that did not set its own ran
    each product on a team of the default size beside the other workers' (oversubscribed cores,
    spinning threads: the bimodal SOP rounds of bench_eval.py)."""
    import threading

    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda k: (calls.append((threading.get_ident(), k)), real(k))[1])
    seen = set()
    workers.run_tasks(range(20), list, lambda s, t: seen.add(threading.get_ident()), 2)
    assert seen and all((ident, 1) in calls for ident in seen)
    assert threading.get_ident() not in seen


def test_run_tasks_restores_threads_after_an_error():
    before = torch.get_num_threads()

    def work(state, task):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        workers.run_tasks(range(4), list, work, 2)
    assert torch.get_num_threads() == before


def test_rows_and_columns_above_give_both_counts():
    rng = np.random.default_rng(5)
    values = rng.integers(-2, 3, (40, 3000)).astype(np.float32)
    thr_rows, thr_cols = values[:, :1].copy(), values[:1, :].copy()  # ties in every row and column
    mask = counts.mask_buffer(64, 3000)
    g, a = counts.rows_above(values, thr_rows, mask)
    assert g.tolist() == (values > thr_rows).sum(1).tolist() and a.tolist() == (values >= thr_rows).sum(1).tolist()
    g, a = counts.columns_above(values, thr_cols, mask)
    assert g.tolist() == (values > thr_cols).sum(0).tolist() and a.tolist() == (values >= thr_cols).sum(0).tolist()


@pytest.mark.parametrize("cols", [1, 9, 2041, 12612])
def test_rows_above_and_tile_counts_are_numpys_exact_counts(count_kernels, cols):
    """Exact integers on either path: ties with the thresholds, -inf (masked self and positives), NaN
    (compares false), a strided view of a wider buffer, columns counted from an offset."""
    rng = np.random.default_rng(cols)
    wide = rng.integers(-3, 4, (300, cols + 5)).astype(np.float32)
    wide[0, 0], wide[1, -6] = -np.inf, np.nan
    values = wide[:, :cols]  # row stride cols + 5
    t_rows = rng.integers(-3, 4, 300).astype(np.float32)
    off = cols // 3
    t_cols = rng.integers(-3, 4, cols - off).astype(np.float32)
    mask = counts.mask_buffer(64, cols)
    above, at_or_above = counts.rows_above(values[:40], t_rows[:40, None], mask)
    assert above.tolist() == (values[:40] > t_rows[:40, None]).sum(1).tolist()
    assert at_or_above.tolist() == (values[:40] >= t_rows[:40, None]).sum(1).tolist()
    acc = [np.full(300, 7, np.int64), np.full(300, 7, np.int64), np.full(cols - off, 7, np.int64),
           np.full(cols - off, 7, np.int64)]
    counts.tile_counts(values, t_rows, off, t_cols, mask, *acc)  # 300 rows: beyond one byte lane
    assert acc[0].tolist() == (7 + (values > t_rows[:, None]).sum(1)).tolist()
    assert acc[1].tolist() == (7 + (values >= t_rows[:, None]).sum(1)).tolist()
    assert acc[2].tolist() == (7 + (values[:, off:] > t_cols[None, :]).sum(0)).tolist()
    assert acc[3].tolist() == (7 + (values[:, off:] >= t_cols[None, :]).sum(0)).tolist()


def test_best_positive_is_numpys_max_and_lowest_tied_index():
    """The C gather of each row's best candidate (knn's same-label items) against numpy's formula:
    ties (lowest index wins, all counted), -inf entries, a NaN, rows without candidates."""
    if counts._kernels() is None:
        pytest.skip("count kernels not built here")
    rng = np.random.default_rng(5)
    values = rng.integers(-2, 3, (50, 40)).astype(np.float32)
    values[3, :] = -np.inf
    values[7, 11] = np.nan
    cand = rng.integers(-1, 40, (50, 6))
    cand[9] = -1
    cand[7, 0] = 11  # the NaN is a candidate of row 7
    best, first, tied = counts.best_positive(values, cand, threads=2)
    valid = cand >= 0
    sims = np.where(valid, values[np.arange(50)[:, None], np.maximum(cand, 0)], -np.inf)
    ref_best = sims.max(axis=1)
    at_best = valid & (sims == ref_best[:, None])
    big = np.iinfo(np.int64).max
    assert np.array_equal(best, ref_best.astype(np.float32), equal_nan=True)
    assert first.tolist() == np.where(at_best, cand, big).min(axis=1).tolist()
    assert tied.tolist() == at_best.sum(axis=1).tolist()

"""``rll-repro eval-features`` end to end on small data."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from rll_repro.cli import main
from rll_repro.eval import metrics


@pytest.fixture
def small(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(40), 3)
    feats = (rng.standard_normal((40, 16))[labels] + 0.9 * rng.standard_normal((120, 16))).astype(np.float32)
    np.save(tmp_path / "f.npy", feats)
    np.save(tmp_path / "l.npy", labels)
    return tmp_path, feats, labels


def test_eval_features_cub_writes_percentages(small, capsys):
    tmp, feats, labels = small
    out = tmp / "r.json"
    assert main(["eval-features", str(tmp / "f.npy"), str(tmp / "l.npy"), "--protocol", "cub", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    expected = metrics.recall_at_k(feats, labels, (1, 2, 4, 8, 16, 32))
    assert {k: v for k, v in res.items() if not k.startswith("_")} == expected
    assert res["_meta"]["protocol"] == "cub" and res["_meta"]["items"] == 120
    assert "R@1" in capsys.readouterr().out


def test_eval_features_nmi_records_kmeans_settings(small):
    tmp, feats, labels = small
    out = tmp / "r.json"
    assert main(["eval-features", str(tmp / "f.npy"), str(tmp / "l.npy"), "--protocol", "cars", "--nmi",
                 "--seed", "3", "--n-init", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert 0 <= res["NMI"] <= 100 and 0 <= res["F1"] <= 100
    assert res["_meta"]["kmeans"] == {"seed": 3, "n_init": 2, "library": "scikit-learn"}


def test_eval_features_sop_leaves_out_k_beyond_gallery(small, capsys):
    tmp, _, _ = small
    out = tmp / "r.json"
    assert main(["eval-features", str(tmp / "f.npy"), str(tmp / "l.npy"), "--protocol", "sop", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(k for k in res if not k.startswith("_")) == {"R@1", "R@10", "R@100"}
    assert res["_meta"]["skipped_recall_k"] == [1000]
    assert "Recall@1000 left out" in capsys.readouterr().err


def test_eval_features_inshop_with_query_mask_and_h5(small):
    tmp, feats, labels = small
    with h5py.File(tmp / "f.h5", "w") as f:
        f["features"] = feats
        f["labels"] = labels
    mask = np.arange(120) % 3 == 0
    np.save(tmp / "q.npy", mask)
    out = tmp / "r.json"
    assert main(["eval-features", str(tmp / "f.h5"), str(tmp / "f.h5"), "--protocol", "inshop",
                 "--query-mask", str(tmp / "q.npy"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    expected = metrics.recall_query_gallery(feats[mask], labels[mask], feats[~mask], labels[~mask], (1, 10, 20, 30, 40, 50))
    assert {k: v for k, v in res.items() if not k.startswith("_")} == expected
    assert res["_meta"]["queries"] == 40 and res["_meta"]["gallery"] == 80


@pytest.mark.parametrize("extra, message", [
    (["--protocol", "inshop"], "needs --query-mask"),
    (["--protocol", "sop", "--labels-wrong"], None),
])
def test_eval_features_bad_input(small, extra, message, capsys):
    tmp, _, _ = small
    argv = ["eval-features", str(tmp / "f.npy"), str(tmp / "l.npy"), *extra, "--out", str(tmp / "r.json")]
    if message is None:
        with pytest.raises(SystemExit):
            main(argv)
        return
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_eval_features_label_count_mismatch(small, capsys):
    tmp, _, labels = small
    np.save(tmp / "short.npy", labels[:-1])
    assert main(["eval-features", str(tmp / "f.npy"), str(tmp / "short.npy"), "--protocol", "cub",
                 "--out", str(tmp / "r.json")]) == 2
    assert "119 labels for 120 feature rows" in capsys.readouterr().err


def test_eval_features_then_diff_roundtrip(small):
    tmp, _, _ = small
    a, b = tmp / "a.json", tmp / "b.json"
    for out in (a, b):
        assert main(["eval-features", str(tmp / "f.npy"), str(tmp / "l.npy"), "--protocol", "cub", "--out", str(out)]) == 0
    assert main(["diff", str(a), str(b), "--tolerance", "0"]) == 0

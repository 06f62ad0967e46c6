"""Parser of the original result files: synthetic files always, the originals in place (skipped
visibly when ../shared is absent)."""
from __future__ import annotations

import pytest

from conftest import SHARED
from rll_repro.errors import FormatError
from rll_repro.eval import published
from rll_repro.eval.resultfiles import at_iter, parse_result_file, parse_text

ORIGINALS = sorted(p.relative_to(SHARED) for p in SHARED.glob("reference/*/original/**/*.txt")) if SHARED.exists() else []


def test_recall_lines_to_percent(tmp_path):
    f = tmp_path / "Recall.txt"
    f.write_text("iter: 1000, rank1: 0.558, rank2: 0.687\n\niter: 1250, rank1: 0.624, rank2: 0.744\n")
    records = parse_result_file(f)
    assert [r.iter for r in records] == [1000, 1250]
    assert records[0].metrics == {"R@1": 55.8, "R@2": 68.7}
    assert records[1].line == 3  # blank line skipped, line numbers kept


def test_lpw_split_index_is_metadata():
    (r,) = parse_text("split_index:1,iter:55000, rank1:0.716931,rank5:0.898148\n")
    assert r.iter == 55000 and r.extra == {"split_index": 1}
    assert r.metrics == {"R@1": pytest.approx(71.6931), "R@5": pytest.approx(89.8148)}


def test_market_record_blocks():
    text = ("iter: 3000, \n"
            "    single query: mAP = 0.663719, r1 precision = 0.853029\n"
            "     multiple queries with avg pooling: mAP = 0.748014, r1 precision = 0.903504\n"
            "     multiple queries with max pooling: mAP = 0.746461, r1 precision = 0.904988\n"
            "     multiple queries with max pooling + re-ranking: mAP = 0.771110, r1 precision = 0.904988\n")
    (r,) = parse_text(text)
    assert r.iter == 3000
    assert r.metrics["single_query/mAP"] == pytest.approx(66.3719)
    assert r.metrics["multi_query_max_rerank/R@1"] == pytest.approx(90.4988)
    assert len(r.metrics) == 8


def test_at_iter_takes_the_last_record_of_a_duplicated_run():
    records = parse_text("iter: 24000, rank1: 0.757, rank2: 0.806\niter: 24000, rank1: 0.757, rank10: 0.887\n")
    assert at_iter(records, 24000) == {"R@1": 75.7, "R@10": 88.7}
    assert at_iter(records, 24000, {"R@2"}) == {"R@1": 75.7, "R@2": 80.6}
    with pytest.raises(FormatError, match="iteration 1"):
        at_iter(records, 1)


@pytest.mark.parametrize("text, match", [
    ("iter: 10, rank1: abc\n", "x.txt:1"),
    ("rank1: 0.5\n", "no 'iter'"),
    ("single query: mAP = 0.1, r1 precision = 0.2\n", "unexpected Market-1501 line"),
    ("hello world\n", "cannot read"),
])
def test_malformed_lines_name_file_and_line(text, match):
    with pytest.raises(FormatError, match=match):
        parse_text(text, "x.txt")


def test_binary_file_is_a_format_error(tmp_path):
    f = tmp_path / "r.txt"
    f.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FormatError):
        parse_result_file(f)


@pytest.mark.parametrize("relpath", ORIGINALS or ["<absent>"], ids=str)
def test_every_original_result_file_parses(shared, relpath):
    path = shared(str(relpath)) if relpath != "<absent>" else shared("reference", "rll", "original")
    records = parse_result_file(path)
    assert records and all(r.iter is not None and r.metrics for r in records)
    assert all(0 < v <= 100 for r in records for v in r.metrics.values())


@pytest.mark.parametrize("relfile, iteration, key", [
    ("rll/original/SOP_Simp_25042020/train_150_T10_pn04_v50/Recall_concat_d64.txt", 30000,
     "rll/SOP/repo_SOP_Simp_25042020_b150_d64_iter30000/(H,L,M)"),
    ("rll/original/InshopClothes_Simp_21042020/train_60_T10_pn04_v63/Recall_concat_d128.txt", 26000,
     "rll/InShop/repo_InshopClothes_Simp_21042020_b66_d128/(H,L,M)_iter26000"),
    ("rll/original/Market1501_GooLeNetV2_V02_11042020/train_180_pn04_tp0_tn10_onlyRLLv02/Record_concat.txt", 6000,
     "rll/Market1501/repo_Market1501_GooLeNetV2_V02_11042020_b180_d512/iter6000"),
    ("osm_caa/original/CARS196_V01/train_M_WIDE_ASiamese_V62_e1/Recall.txt", 7000,
     "osm_caa/CARS196/OSM+CAA repo snapshot iter 7000 [raw images]"),
    ("osm_caa/original/MARS_V01/train_M_WIDE_WF_WIDE_ASiamese_V20_e2/without_minus1_AVG.txt", 60000,
     "osm_caa/MARS/OSM+CAA repo iter 60000"),
    ("osm_caa/original/LPW_V01/train_M_WIDE_WF_WIDE_ASiamese_V20_e5/LPW_TEST_AF.txt", 55000,
     "osm_caa/LPW/OSM+CAA repo iter 55000"),
])
def test_parsed_files_agree_with_the_registry(shared, relfile, iteration, key):
    parsed = at_iter(parse_result_file(shared("reference", *relfile.split("/"))), iteration)
    entry = published.get(key)
    entry.pop("source")
    assert parsed == pytest.approx(entry, abs=1e-9)  # both are the file's decimals x 100

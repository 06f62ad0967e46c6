"""The original result-file layouts and published-entry choice of `rll-repro reproduce`."""
from __future__ import annotations

from rll_repro import recipes
from rll_repro.eval.resultfiles import at_iter, parse_text
from rll_repro.reproduce import eval_iterations, published_key, result_file_name, result_lines


def test_result_file_names_are_the_originals():
    sop, inshop, market = recipes.get("rll-sop"), recipes.get("rll-inshop"), recipes.get("rll-market")
    assert result_file_name(sop, sop.deploy("concat")) == "Recall_concat_d64.txt"
    assert result_file_name(sop, sop.deploy("LH")) == "Recall_LH_d64.txt"
    assert result_file_name(inshop, inshop.deploy("concatHM")) == "Recall_concatHM_d128.txt"
    assert result_file_name(market, market.deploy("concat")) == "Record_concat.txt"
    cars, cub = recipes.get("osm-cars"), recipes.get("osm-cub")
    assert result_file_name(cars, cars.deploys[0]) == "Recall.txt"
    assert result_file_name(cub, cub.deploys[0]) == "CUB_Recall.txt"


def test_recall_line_is_the_scripts_fprintf_in_fractions():
    """SPEC rll §5: ``iter: %d, rank1: %.3f, rank10: %.3f, rank100: %.3f`` (fractions)."""
    sop = recipes.get("rll-sop")
    line = result_lines(sop, 30000, {"R@1": 78.64, "R@10": 90.5, "R@100": 95.9449})
    assert line == "iter: 30000, rank1: 0.786, rank10: 0.905, rank100: 0.959\n"
    assert at_iter(parse_text(line), 30000) == {"R@1": 78.6, "R@10": 90.5, "R@100": 95.9}


def test_market_record_block_reads_back():
    """Record_concat.txt: an ``iter: N,`` line, then one indented line per query mode (%f fractions)."""
    market = recipes.get("rll-market")
    metrics = {}
    for i, mode in enumerate(("single_query", "multi_query_avg", "multi_query_max", "multi_query_max_rerank")):
        metrics[f"{mode}/mAP"] = 70.0 + i
        metrics[f"{mode}/R@1"] = 88.0 + i
        metrics[f"{mode}/R@5"] = 95.0
    text = result_lines(market, 6000, metrics)
    assert text.splitlines()[:2] == ["iter: 6000, ", "    single query: mAP = 0.700000, r1 precision = 0.880000"]
    back = at_iter(parse_text(text + text.replace("6000", "5000")), 6000)
    assert back == {k: v for k, v in metrics.items() if not k.endswith("R@5")}


def test_published_entry_of_the_evaluated_iteration_is_preferred():
    inshop = recipes.get("rll-inshop")
    concat = inshop.deploy("concat")
    assert published_key(concat, 30000).endswith("(H,L,M)_iter30000")
    assert published_key(concat, 26000).endswith("(H,L,M)_iter26000")
    assert published_key(concat, 4000) == concat.published[0]


def test_checkpoints_are_the_scripts_unless_asked():
    sop = recipes.get("rll-sop")
    concat = sop.deploy("concat")
    assert eval_iterations(sop, concat, 30000) == list(range(14000, 30001, 2000))
    assert eval_iterations(sop, concat, 15000) == [14000]
    assert eval_iterations(sop, concat, 20) == [20]  # a short run evaluates its last iteration
    assert eval_iterations(sop, concat, 20, eval_every=5) == [5, 10, 15, 20]
    assert eval_iterations(sop, concat, 20, checkpoints=[10, 30, 10]) == [10]


def test_osm_published_entry_of_the_repo_snapshot():
    cars = recipes.get("osm-cars")
    m = cars.deploys[0]
    assert published_key(m, 7000) == "osm_caa/CARS196/OSM+CAA repo snapshot iter 7000 [raw images]"
    assert published_key(m, 10000) == "osm_caa/CARS196/OSM+CAA (Ours) [raw images]"
    market = recipes.get("rll-market")
    assert published_key(market.deploy("concat"), 5000).endswith("/iter5000")


def test_video_result_files_are_the_originals_and_read_back():
    mars, lpw = recipes.get("osm-mars"), recipes.get("osm-lpw")
    assert result_file_name(mars, mars.deploys[0]) == "without_minus1_AVG.txt"
    assert result_file_name(lpw, lpw.deploys[0]) == "LPW_TEST_AF.txt"
    scores = {"R@1": 84.7475, "R@5": 93.0, "R@10": 95.0, "R@20": 96.5}
    line = result_lines(mars, 60000, {**scores, "mAP": 72.3538})
    assert line == "iter: 60000, rank1: 0.847475, rank5: 0.930000, rank10: 0.950000, rank20: 0.965000, mAP: 0.723538\n"
    line = result_lines(lpw, 55000, scores)
    assert line.startswith("split_index:1,iter:55000, rank1:0.847475,rank5:0.930000")
    record = parse_text(line)[0]
    assert record.iter == 55000 and record.extra == {"split_index": 1} and record.metrics == scores

"""Loaders of the original .mat lists: shapes, quirks, remapping and one-line errors."""
from __future__ import annotations

import numpy as np
import pytest

from rll_repro.data import lists
from rll_repro.errors import DataError, FormatError
from rll_repro.matfile import savemat


def nx2(paths, boxes):
    cell = np.empty((len(paths), 2), dtype=object)
    for i, (p, b) in enumerate(zip(paths, boxes)):
        cell[i, 0], cell[i, 1] = p, np.asarray(b, dtype=np.float64).reshape(1, 4)
    return cell


@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_nx1_and_nx2_cells_read_alike(tmp_path, version):
    ids = np.array([[1.0], [1.0], [2.0]])
    savemat(tmp_path / "a.mat", {"TrainImagePathBoxCell": ["x/1.jpg", "x/2.jpg", "y/3.jpg"], "class_ids": ids}, version=version)
    savemat(tmp_path / "b.mat", {"TrainImagePathBoxCell": nx2(["x/1.jpg", "x/2.jpg", "y/3.jpg"], [[1, 2, 3, 4]] * 3),
                                 "class_ids": ids}, version=version)
    a, b = lists.load_sop_train(tmp_path / "a.mat"), lists.load_sop_train(tmp_path / "b.mat")
    assert a.paths == b.paths and np.array_equal(a.class_ids, b.class_ids)
    assert a.boxes is None and b.boxes.shape == (3, 4) and b.boxes[0].tolist() == [1, 2, 3, 4]
    assert a.labels.tolist() == [0.0, 0.0, 1.0]


def test_row_vector_cell_and_class_ids_are_accepted(tmp_path):
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = "a.jpg", "b.jpg"
    savemat(tmp_path / "r.mat", {"ImagePathBoxCell": cell, "class_ids": np.array([[3.0, 4.0]])})
    lst = lists.load_market_train(tmp_path / "r.mat")
    assert lst.paths == ["a.jpg", "b.jpg"] and lst.class_ids.tolist() == [3, 4]


def test_missing_variable_lists_the_present_ones(tmp_path):
    savemat(tmp_path / "m.mat", {"paths": ["a"], "labels": np.ones((1, 1))})
    with pytest.raises(DataError, match=r"TrainImagePathBoxCell.*variables present: labels, paths"):
        lists.load_sop_train(tmp_path / "m.mat")


def test_missing_class_ids_is_named(tmp_path):
    savemat(tmp_path / "m.mat", {"TrainImagePathBoxCell": ["a"]})
    with pytest.raises(DataError, match="missing variable 'class_ids'; variables present: TrainImagePathBoxCell"):
        lists.load_sop_train(tmp_path / "m.mat")


def test_lengths_that_disagree(tmp_path):
    savemat(tmp_path / "m.mat", {"TrainImagePathBoxCell": ["a", "b"], "class_ids": np.ones((3, 1))})
    with pytest.raises(DataError, match="class_ids has 3 entries but the image list has 2"):
        lists.load_sop_train(tmp_path / "m.mat")


def test_wrong_type_and_shape(tmp_path):
    savemat(tmp_path / "t.mat", {"TrainImagePathBoxCell": np.zeros((3, 1)), "class_ids": np.ones((3, 1))})
    with pytest.raises(DataError, match="must be a cell array"):
        lists.load_sop_train(tmp_path / "t.mat")
    savemat(tmp_path / "s.mat", {"TrainImagePathBoxCell": ["a", "b", "c", "d"], "class_ids": np.ones((2, 2))})
    with pytest.raises(DataError, match="N x 1 or 1 x N, got 2 x 2"):
        lists.load_sop_train(tmp_path / "s.mat")
    bad = np.empty((2, 2), dtype=object)
    bad[0, 0], bad[0, 1], bad[1, 0], bad[1, 1] = "a", np.zeros((1, 3)), "b", np.zeros((1, 3))
    savemat(tmp_path / "b.mat", {"TrainImagePathBoxCell": bad, "class_ids": np.ones((2, 1))})
    with pytest.raises(DataError, match=r"1x4 box"):
        lists.load_sop_train(tmp_path / "b.mat")
    savemat(tmp_path / "f.mat", {"TrainImagePathBoxCell": ["a"], "class_ids": np.array([[1.5]])})
    with pytest.raises(DataError, match="whole numbers"):
        lists.load_sop_train(tmp_path / "f.mat")


def test_not_a_mat_file(tmp_path):
    (tmp_path / "Ebay_train.mat").write_text("image_id class_id super_class_id path\n")
    with pytest.raises(FormatError, match="not a MATLAB .mat file"):
        lists.load_sop_train(tmp_path / "Ebay_train.mat")


def test_missing_images_are_counted_and_the_first_named(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(b"")
    paths = ["ok.jpg"] + [f"gone{i}.jpg" for i in range(7)]
    savemat(tmp_path / "l.mat", {"TrainImagePathBoxCell": paths, "class_ids": np.ones((8, 1))})
    with pytest.raises(DataError, match=r"7 of 8 images are missing: .*gone0.jpg, .*gone4.jpg, \.\.\.$"):
        lists.load_sop_train(tmp_path / "l.mat", data_root=tmp_path, check=True)


def test_absolute_original_paths_are_remapped_under_data_root(tmp_path):
    """The authors' absolute paths lose their leading directories: no symlink trick needed."""
    root = tmp_path / "SOP"
    (root / "bicycle_final").mkdir(parents=True)
    (root / "bicycle_final" / "1_0.JPG").write_bytes(b"")
    (root / "bicycle_final" / "2_0.JPG").write_bytes(b"")
    orig = ["/home/xinshao/Datasets/Stanford_Online_Products/bicycle_final/1_0.JPG",
            "/home/xinshao/Datasets/Stanford_Online_Products/bicycle_final/2_0.JPG"]
    savemat(tmp_path / "l.mat", {"TrainImagePathBoxCell": orig, "class_ids": np.ones((2, 1))}, version="v7.3")
    lst = lists.load_sop_train(tmp_path / "l.mat", data_root=root, check=True)
    assert lst.paths == [str(root / "bicycle_final" / "1_0.JPG"), str(root / "bicycle_final" / "2_0.JPG")]
    explicit = lists.load_sop_train(tmp_path / "l.mat", data_root=root,
                                    strip_prefix="/home/xinshao/Datasets/Stanford_Online_Products")
    assert explicit.paths == lst.paths


def test_unplaceable_absolute_path_says_so(tmp_path):
    savemat(tmp_path / "l.mat", {"TrainImagePathBoxCell": ["/x/y/z.jpg"], "class_ids": np.ones((1, 1))})
    with pytest.raises(DataError, match="cannot place '/x/y/z.jpg' under data root"):
        lists.load_sop_train(tmp_path / "l.mat", data_root=tmp_path)


def test_windows_paths_are_split_on_backslashes(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"")
    assert lists.remap_paths(["D:\\data\\InShop\\img\\a.jpg"], tmp_path) == [str(tmp_path / "img" / "a.jpg")]


def test_inshop_eval_without_query_num_uses_the_standard_split(tmp_path):
    n = lists.INSHOP_N_QUERY + 12612
    savemat(tmp_path / "e.mat", {"TestImagePathBoxCell": [f"{i}.jpg" for i in range(n)],
                                 "class_ids": np.ones((n, 1))})
    lst = lists.load_inshop_eval(tmp_path / "e.mat")
    q, g = lst.query_gallery()
    assert len(q) == 14218 and len(g) == 12612


@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_osm_data_cells_hold_whxbgr_images(tmp_path, version):
    """CARS/CUB OSM lists are cells of preprocessed W x H x 3 single images (SPEC osm §7)."""
    from rll_repro.data.transforms import osm_cell_to_chw

    imgs = [np.random.default_rng(i).normal(size=(6, 5, 3)).astype(np.float32) for i in range(3)]
    savemat(tmp_path / "d.mat", {"train_data_cell": imgs, "class_ids": np.array([[1.0], [1.0], [2.0]])}, version=version)
    lst = lists.load_osm_data_cell(tmp_path / "d.mat")
    assert lst.paths is None and lst.variable == "train_data_cell"
    chw = osm_cell_to_chw(lst.images[0])
    assert chw.shape == (3, 5, 6) and chw[2, 1, 4] == imgs[0][4, 1, 2]


def test_market_evaluation_missing_variables_listed(tmp_path):
    savemat(tmp_path / "e.mat", {"testID": np.ones((1, 1))})
    with pytest.raises(DataError, match="missing variable\\(s\\) testCAM, testImagesCell"):
        lists.load_market_evaluation(tmp_path / "e.mat")


def test_tracklets_and_query_idx(tmp_path):
    savemat(tmp_path / "t.mat", {"test_tracklets": [["a/1.jpg", "a/2.jpg"], ["b/1.jpg"]],
                                 "test_labels": np.array([[3.0], [0.0]]), "test_cameras": np.array([[1.0], [2.0]])},
            version="v7.3")
    tr = lists.load_tracklets(tmp_path / "t.mat")
    assert tr.frames == [["a/1.jpg", "a/2.jpg"], ["b/1.jpg"]] and tr.labels.tolist() == [3, 0]
    assert tr.cameras.tolist() == [1, 2]
    savemat(tmp_path / "q.mat", {"query_IDX": np.array([[1.0, 5.0]])})
    assert lists.load_query_idx(tmp_path / "q.mat").tolist() == [0, 4]


def test_tracklet_frames_flatten_with_mars_and_lpw_label_rules():
    """MARS feeds stored labels as-is, LPW feeds label - 1 (SPEC osm §9)."""
    tr = lists.Tracklets(frames=[["a1", "a2"], ["b1"]], labels=np.array([5, 0]))
    mars, lpw = tr.frame_list(feed_stored_labels=True), tr.frame_list(feed_stored_labels=False)
    assert mars.paths == ["a1", "a2", "b1"] and mars.labels.tolist() == [5, 5, 0]
    assert lpw.labels.tolist() == [4, 4, -1]

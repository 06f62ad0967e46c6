"""make-lists: the original .mat lists from tiny fake dataset folders; write-then-read round trips."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rll_repro.cli import main
from rll_repro.data import lists, writers
from rll_repro.errors import DataError
from rll_repro.matfile import loadmat, savemat


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def fake_sop(root: Path) -> Path:
    for split, classes in (("train", (1, 2, 3)), ("test", (4, 5))):
        lines = ["image_id class_id super_class_id path"]
        k = 0
        for c in classes:
            for j in range(2 + c % 2):
                k += 1
                rel = f"bicycle_final/{c:04d}_{j}.JPG"
                touch(root / rel)
                lines.append(f"{k} {c} 1 {rel}")
        (root / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def fake_inshop(root: Path) -> Path:
    rows = [("id_00000007", "train"), ("id_00000002", "train"), ("id_00000007", "train"),
            ("id_00000009", "query"), ("id_00000003", "gallery"), ("id_00000009", "gallery"),
            ("id_00000003", "query")]
    lines = [str(len(rows)), "image_name item_id evaluation_status"]
    for i, (item, status) in enumerate(rows):
        rel = f"img/WOMEN/Dresses/{item}/{i:02d}_1_front.jpg"
        touch(root / rel)
        lines.append(f"{rel}   {item}   {status}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def fake_market(root: Path) -> Path:
    for name in ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c3s1_000551_01.jpg", "Thumbs.db"]:
        touch(root / "bounding_box_train" / name)
    for name in ["-1_c1s1_000401_03.jpg", "0000_c1s1_000151_01.jpg", "0001_c2s1_000301_01.jpg", "0001_c1s1_000001_01.jpg"]:
        touch(root / "bounding_box_test" / name)
    for name in ["0001_c1s1_001051_00.jpg", "0003_c3s1_000051_00.jpg"]:
        touch(root / "query" / name)
    for name in ["0001_c1s1_001051_00.jpg", "0001_c1s1_001101_00.jpg", "0001_c2s1_000076_00.jpg"]:
        touch(root / "gt_bbox" / name)
    return root


def fake_cub(root: Path) -> Path:
    images, labels, boxes = [], [], []
    for k, cls in enumerate([1, 1, 100, 101, 200], start=1):
        rel = f"{cls:03d}.Bird/Bird_{k}.jpg"
        touch(root / "images" / rel)
        images.append(f"{k} {rel}")
        labels.append(f"{k} {cls}")
        boxes.append(f"{k} {10.0 + k} 20.0 30.0 40.0")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    return root


def fake_cars(root: Path) -> Path:
    annotations = []
    for k, cls in enumerate([1, 98, 99, 196, 5], start=1):
        rel = f"car_ims/{k:06d}.jpg"
        touch(root / rel)
        annotations.append({"relative_im_path": rel, "bbox_x1": np.array([[3.0]]), "bbox_y1": np.array([[4.0]]),
                            "bbox_x2": np.array([[50.0 + k]]), "bbox_y2": np.array([[60.0]]),
                            "class": np.array([[float(cls)]]), "test": np.array([[0.0]])})
    cell = np.empty((1, len(annotations)), dtype=object)
    for i, a in enumerate(annotations):
        cell[0, i] = a
    # a struct array, as in the real cars_annos.mat: written through scipy's record arrays
    import scipy.io

    rec = np.empty((1, len(annotations)), dtype=[(k, object) for k in annotations[0]])
    for i, a in enumerate(annotations):
        for k, v in a.items():
            rec[0, i][k] = v
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": rec})
    return root


@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_sop_lists_relabel_and_round_trip(tmp_path, version):
    root = fake_sop(tmp_path / "SOP")
    out = tmp_path / "SOP_TestImagePathBoxCell.mat"
    written = writers.write_lists("sop", root, out, "test", version=version)
    back = loadmat(out)
    assert back["TestImagePathBoxCell"] == written["TestImagePathBoxCell"]
    assert np.array_equal(back["class_ids"], written["class_ids"]) and back["class_ids"].shape == (5, 1)
    lst = lists.load_sop_test(out, data_root=root, check=True)
    assert lst.class_ids.tolist() == [1, 1, 2, 2, 2] and lst.labels.dtype == np.float32


def test_inshop_eval_is_query_then_gallery_with_joint_relabel(tmp_path):
    root = fake_inshop(tmp_path / "InShop")
    out = tmp_path / "eval.mat"
    writers.write_lists("inshop", root, out, "eval")
    lst = lists.load_inshop_eval(out, data_root=root)
    assert lst.variable == "TestImagePathBoxCell" and lst.n_query == 2
    # query rows (ids 9, 3) then gallery rows (3, 9); sorted ids 3 -> 1, 9 -> 2
    assert lst.class_ids.tolist() == [2, 1, 1, 2]
    query, gallery = lst.query_gallery()
    assert len(query) == 2 and len(gallery) == 2 and query.paths[0].endswith("03_1_front.jpg")


def test_inshop_train_relabels_by_sorted_item_id(tmp_path):
    root = fake_inshop(tmp_path / "InShop")
    variables = writers.build_lists("inshop", root, "train")
    assert variables["class_ids"].ravel().tolist() == [2.0, 1.0, 2.0]


def test_inshop_eva_variable_name_quirk_is_accepted(tmp_path):
    """The original converter saved 'EvaImagePathBoxCell'; the test script loads 'TestImagePathBoxCell'."""
    out = tmp_path / "InshopClothes_EvaImagePathBoxCell.mat"
    savemat(out, {"EvaImagePathBoxCell": ["q.jpg", "g.jpg"], "class_ids": np.array([[1.0], [1.0]])})
    lst = lists.load_inshop_eval(out)
    assert lst.variable == "EvaImagePathBoxCell" and lst.paths == ["q.jpg", "g.jpg"]


def test_market_train_and_evaluation(tmp_path):
    root = fake_market(tmp_path / "Market-1501")
    train = writers.build_lists("market", root, "train")
    assert train["ImagePathBoxCell"][0] == "bounding_box_train/0002_c1s1_000451_03.jpg"
    assert train["class_ids"].ravel().tolist() == [1.0, 1.0, 2.0]
    out = tmp_path / "Market1501_evaluation.mat"
    writers.write_lists("market", root, out, "evaluation", version="v7.3")
    ev = lists.load_market_evaluation(out, data_root=root, check=True)
    assert ev.test_ids.tolist() == [-1, 0, 1, 1]  # MATLAB dir order: '-' < '0'
    assert ev.test_cams.tolist() == [1, 1, 1, 2]
    assert ev.query_ids.tolist() == [1, 3] and ev.query_cams.tolist() == [1, 3]
    assert [len(m) for m in ev.multi_query_paths] == [2, 0]  # same id AND same camera only


def test_cub_split_100_100_with_boxes(tmp_path):
    root = fake_cub(tmp_path / "CUB_200_2011")
    out = tmp_path / "cub_train.mat"
    writers.write_lists("cub", root, out, "train", boxes=True)
    lst = lists.load_image_list(out, data_root=root, check=True)
    assert lst.class_ids.tolist() == [1, 1, 100]
    assert lst.boxes.tolist()[0] == [12.0, 21.0, 41.0, 60.0]  # x y w h -> [x+1 y+1 x+w y+h]
    test = writers.build_lists("cub", root, "test")
    assert test["class_ids"].ravel().tolist() == [101.0, 200.0]


def test_cars_split_98_98_from_cars_annos(tmp_path):
    root = fake_cars(tmp_path / "cars196")
    train = writers.build_lists("cars", root, "train", boxes=True)
    cell = train["TrainImagePathBoxCell"]
    assert cell.shape == (3, 2) and [cell[i, 0] for i in range(3)] == ["car_ims/000001.jpg", "car_ims/000002.jpg", "car_ims/000005.jpg"]
    test = writers.build_lists("cars", root, "test")
    assert test["class_ids"].ravel().tolist() == [99.0, 196.0]


def test_cars_from_the_real_devkit_annotations(shared, tmp_path):
    """The official devkit's cars_train_annos.mat (read in place) gives the 98-class train split."""
    annos = shared("realdata", "mat", "stanford_cars_devkit", "cars_train_annos.mat")
    root = tmp_path / "cars"
    root.mkdir()
    train = writers.build_lists("cars", root, "train", annotations=annos)
    assert set(np.unique(train["class_ids"])) <= set(range(1, 99))
    assert train["TrainImagePathBoxCell"][0].endswith(".jpg") and len(train["TrainImagePathBoxCell"]) > 3000


def test_cli_make_lists_writes_v73(tmp_path, capsys):
    root = fake_sop(tmp_path / "SOP")
    out = tmp_path / "SOP_TrainImagePathBoxCell.mat"
    assert main(["make-lists", "sop", str(root), str(out), "--v7.3"]) == 0
    assert "TrainImagePathBoxCell 8 x 1" in capsys.readouterr().out
    assert out.read_bytes()[:10] == b"MATLAB 7.3"
    assert len(lists.load_sop_train(out)) == 8


def test_cli_make_lists_bad_root_is_one_line(tmp_path, capsys):
    assert main(["make-lists", "sop", str(tmp_path / "nope"), str(tmp_path / "o.mat")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_unknown_split_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="splits train and eval"):
        writers.build_lists("inshop", fake_inshop(tmp_path / "i"), "test")


def test_check_images_counts_missing(tmp_path):
    root = fake_sop(tmp_path / "SOP")
    (root / "bicycle_final/0001_0.JPG").unlink()
    with pytest.raises(DataError, match="1 of 8 images are missing"):
        writers.write_lists("sop", root, tmp_path / "o.mat", check_images=True)


def test_shipped_example_matfiles_load():
    """matfiles/ holds small examples made by these writers; they load with the list loaders."""
    folder = Path(__file__).resolve().parents[1] / "matfiles"
    files = sorted(folder.glob("*.mat"))
    assert files, "matfiles/*.mat missing"
    for path in files:
        if "evaluation" in path.name:
            assert len(lists.load_market_evaluation(path).query_paths) > 0
        else:
            assert len(lists.load_image_list(path)) > 0


def test_osm_data_cells_hold_the_offline_224_pipeline_output(tmp_path):
    """--osm-data: each entry is osm_offline_transform(image, box) stored as MATLAB W x H x BGR single."""
    import warnings

    import torch

    from rll_repro.data.loader import read_image_rgb
    from rll_repro.data.transforms import osm_cell_to_chw, osm_offline_transform

    root = fake_cub(tmp_path / "CUB_200_2011")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import encode_jpeg
        for k, path in enumerate(sorted((root / "images").rglob("*.jpg"))):
            img = torch.from_numpy(np.random.default_rng(k).integers(0, 256, (3, 70, 90)).astype(np.uint8))
            path.write_bytes(encode_jpeg(img).numpy().tobytes())
    out = tmp_path / "Box_CUB_200_2011_TrainImageDataCell.mat"
    writers.write_lists("cub", root, out, "train", boxes=True, osm_data=True, version="v7.3")
    lst = lists.load_osm_data_cell(out)
    assert lst.variable == "CUB_200_2011_TrainImageDataCell" and len(lst) == 3
    assert lst.images[0].shape == (224, 224, 3) and lst.images[0].dtype == np.float32
    first = sorted((root / "images").rglob("*.jpg"))[0]
    expect = osm_offline_transform(read_image_rgb(str(first)), box=[12, 21, 41, 60])
    assert np.array_equal(osm_cell_to_chw(lst.images[0]), expect)

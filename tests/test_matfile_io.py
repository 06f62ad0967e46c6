"""rll_repro.matfile: real MATLAB-written v5 and v7.3 files read into the same plain structures."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from rll_repro.errors import FormatError
from rll_repro.matfile import MatlabObject, loadmat, mat_version, savemat

MAT = ("realdata", "mat")


def assert_same(a, b, where="value"):
    """Deep equality of loadmat structures (types, dtypes, shapes, values; NaN == NaN)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif scipy.sparse.issparse(a):
        assert scipy.sparse.issparse(b) and a.shape == b.shape and (a != b).nnz == 0, where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where
    else:
        assert type(a) is type(b) and a == b, where


def test_v5_numeric_keeps_matlab_shape_and_class(shared):
    d = loadmat(shared(*MAT, "market1501_rll", "testID.mat"))
    assert d["testID"].shape == (19732, 1) and d["testID"].dtype == np.int16
    g = loadmat(shared(*MAT, "market1501_rll", "gt_0001_c1s1_001051_00_good.mat"))
    assert g["good_index"].shape == (1, 51) and g["good_index"].dtype == np.uint16


def test_v5_struct_is_a_dict_and_struct_array_a_list(shared):
    par = loadmat(shared(*MAT, "market1501_rll", "params_350.mat"))["par"]
    assert isinstance(par, dict) and list(par)[:3] == ["maxK_knn", "step", "ystep"]
    ann = loadmat(shared(*MAT, "stanford_cars_devkit", "cars_train_annos.mat"))["annotations"]
    assert isinstance(ann, list) and len(ann) == 8144
    assert ann[0]["fname"] == "00001.jpg" and int(ann[0]["class"][0, 0]) == 14


def test_v5_cells_are_flat_lists_and_nested_cells_nested_lists(shared):
    names = loadmat(shared(*MAT, "stanford_cars_devkit", "cars_meta.mat"))["class_names"]
    assert len(names) == 196 and names[0] == "AM General Hummer SUV 2000"
    nest = loadmat(shared(*MAT, "scipy_testdata", "testcellnest_7.4_GLNX86.mat"))["testcellnest"]
    assert int(nest[0][0, 0]) == 1 and int(nest[1][2][1][0, 0]) == 5


def test_v5_char_matrix_is_a_list_of_rows(shared):
    rows = loadmat(shared(*MAT, "scipy_testdata", "teststringarray_7.4_GLNX86.mat"))["teststringarray"]
    assert rows == ["one  ", "two  ", "three"]


def test_v73_cell_refs_are_resolved(shared):
    foo = loadmat(shared(*MAT, "mat73_skjerns", "testfile11.mat"))["foo"]
    assert isinstance(foo, list) and [float(x[0, 0]) for x in foo] == [1.0, 2.0]


def test_v73_mixed_cell_2d_cell_and_struct(shared):
    data = loadmat(shared(*MAT, "mat73_skjerns", "testfile1.mat"))["data"]
    assert data["cell_"][5] == "test" and data["cell_"][6][0] == "subcell"
    assert data["cell_char_"] == [["Smith", "Chung", "Morales"], ["Sanchez", "Peterson", "Adams"]]
    assert data["arr_two_three"].shape == (3, 2)  # MATLAB shape, h5 stores (2, 3)
    assert data["struct_"] == {"test": data["struct_"]["test"]} and data["struct_"]["test"].shape == (1, 4)
    assert [s["f2"] for s in data["structarr_"]] == ["v1", "v2", "v3"]
    assert data["complex_"][0, 0] == 2 + 3j
    assert isinstance(data["missing_"], MatlabObject)
    assert scipy.sparse.issparse(data["sparse_"])


def test_v73_empty_cell_is_an_empty_list(shared):
    d = loadmat(shared(*MAT, "mat73_skjerns", "testfile6.mat"))
    assert d["A"] == [] and d["B"].shape == (1, 3)


def test_v73_utf16_chars_decode(shared):
    d = loadmat(shared(*MAT, "mat73_skjerns", "testfile16.mat"))
    assert d["char_arr_1d"] == "abcd"
    assert len(d["char_arr_2d"]) == 6 and d["char_arr_2d"][0].startswith("PSTH tensor")
    assert "ö" in "".join(d["char_arr_3d"].ravel())
    assert loadmat(shared(*MAT, "mat73_skjerns", "testfile8.mat"))["char_string"] == "hello world"


def test_v73_struct_array_of_cells(shared):
    raw = loadmat(shared(*MAT, "mat73_skjerns", "testfile2.mat"))["raw1"]
    assert len(raw) == 5 and raw[0]["speakerType"] == "main" and raw[0]["label"] == ""


REAL_FILES = [
    ("market1501_rll", "params_350.mat"), ("market1501_rll", "queryID.mat"),
    ("stanford_cars_devkit", "cars_meta.mat"), ("stanford_cars_devkit", "cars_train_annos.mat"),
    ("scipy_testdata", "testcell_7.4_GLNX86.mat"), ("scipy_testdata", "testcellnest_7.4_GLNX86.mat"),
    ("scipy_testdata", "teststructarr_7.4_GLNX86.mat"), ("scipy_testdata", "teststringarray_7.4_GLNX86.mat"),
    ("mat73_skjerns", "testfile1.mat"), ("mat73_skjerns", "testfile2.mat"), ("mat73_skjerns", "testfile6.mat"),
    ("mat73_skjerns", "testfile11.mat"), ("mat73_skjerns", "testfile16.mat"),
]


@pytest.mark.parametrize("folder,name", REAL_FILES)
@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_real_file_content_is_the_same_in_v5_and_v73(shared, tmp_path, folder, name, version):
    """Real MATLAB content re-written by our writer in the other (and the same) version reads back
    equal: the v5 (scipy) and v7.3 (h5py) readers agree on the same MATLAB content."""
    original = loadmat(shared(*MAT, folder, name))
    if "annotations" in original:
        original["annotations"] = original["annotations"][:200]  # a struct array; 8144 is slow in v7.3
    if "data" in original and isinstance(original["data"], dict):
        original["data"].pop("missing_")  # a MATLAB 'missing' object: read, not written
    out = tmp_path / f"x_{version}.mat"
    savemat(out, original, version=version)
    assert mat_version(out) == version
    assert_same(original, loadmat(out))


def test_v5_char_nul_becomes_space_known_scipy_limit(shared, tmp_path):
    """scipy's v5 writer turns NUL chars into spaces; v7.3 keeps them (documented, not used by lists)."""
    d = loadmat(shared(*MAT, "mat73_skjerns", "testfile8.mat"))
    savemat(tmp_path / "a.mat", d, version="v7.3")
    assert loadmat(tmp_path / "a.mat")["char_array"] == d["char_array"]


def test_v73_writer_uses_matlabs_layout(tmp_path):
    """MATLAB header in the 512-byte user block, MATLAB_class attributes, cell refs into #refs#."""
    import h5py

    out = tmp_path / "l.mat"
    savemat(out, {"TrainImagePathBoxCell": ["a/1.jpg", "b/2.jpg"], "class_ids": np.array([[1.0], [2.0]])},
            version="v7.3")
    head = out.read_bytes()[:128]
    assert head.startswith(b"MATLAB 7.3 MAT-file") and head[124:128] == b"\x00\x02IM"
    with h5py.File(out, "r") as h5:
        cell = h5["TrainImagePathBoxCell"]
        assert cell.attrs["MATLAB_class"] == b"cell" and cell.shape == (1, 2)  # MATLAB 2 x 1
        first = h5[cell[0, 0]]
        assert first.name.startswith("/#refs#/") and first.attrs["MATLAB_class"] == b"char"
        assert h5["class_ids"].attrs["MATLAB_class"] == b"double" and h5["class_ids"].shape == (1, 2)
        assert h5["#refs#/a"].attrs["MATLAB_class"] == b"canonical empty"


@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_round_trip_of_list_structures(tmp_path, version):
    """N x 2 {path, box} cell, unicode paths, empty values, nested cells, logical, ints, struct."""
    cell = np.empty((3, 2), dtype=object)
    for i, p in enumerate(["img/ä.jpg", "img/b.jpg", "x/𝄞.png"]):
        cell[i, 0], cell[i, 1] = p, np.array([[1.0, 2.0, 30.0 + i, 40.0]])
    values = {
        "cells": cell, "paths": ["a", "", "c"], "empty": [], "nested": [["q1", "q2"], ["q3"]],
        "ids": np.arange(1, 4, dtype=np.float64).reshape(3, 1), "flags": np.array([[True, False]]),
        "u16": np.array([[7, 9]], dtype=np.uint16), "s": {"name": "x", "v": np.zeros((2, 3), np.float32)},
    }
    out = tmp_path / "r.mat"
    savemat(out, values, version=version)
    back = loadmat(out)
    for i in range(3):
        assert back["cells"][i][0] == cell[i, 0] and np.array_equal(back["cells"][i][1], cell[i, 1])
    assert back["paths"] == ["a", "", "c"] and back["empty"] == [] and back["nested"] == [["q1", "q2"], ["q3"]]
    assert_same(back["ids"], values["ids"])
    assert back["flags"].dtype == np.uint8 and back["flags"].tolist() == [[1, 0]]
    assert_same(back["u16"], values["u16"])
    assert back["s"]["name"] == "x" and back["s"]["v"].shape == (2, 3) and back["s"]["v"].dtype == np.float32


def test_not_a_mat_file_is_a_format_error(tmp_path):
    bad = tmp_path / "list.mat"
    bad.write_text("image_id class_id path\n")
    with pytest.raises(FormatError, match="not a MATLAB .mat file"):
        loadmat(bad)


def test_plain_hdf5_without_matlab_header_is_a_format_error(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as h5:
        h5["a"] = np.zeros(3)
    with pytest.raises(FormatError, match="HDF5"):
        loadmat(tmp_path / "x.h5")


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        loadmat(tmp_path / "nope.mat")


def test_bad_variable_name_is_a_format_error(tmp_path):
    with pytest.raises(FormatError, match="variable name"):
        savemat(tmp_path / "x.mat", {"1bad": 1})


def test_independent_v73_reader_mat73_reads_our_files(tmp_path):
    """Second opinion on the v7.3 writer: the PyPI reader ``mat73`` (optional, test-only) decodes it."""
    mat73 = pytest.importorskip("mat73")
    cell = np.empty((2, 2), dtype=object)
    cell[0, 0], cell[0, 1], cell[1, 0], cell[1, 1] = "a/1.jpg", np.array([[1.0, 2, 3, 4]]), "b/2.jpg", np.array([[5.0, 6, 7, 8]])
    savemat(tmp_path / "m.mat", {"TrainImagePathBoxCell": cell, "class_ids": np.array([[1.0], [2.0]]),
                                 "s": {"name": "q"}, "e": []}, version="v7.3")
    d = mat73.loadmat(str(tmp_path / "m.mat"))
    assert d["TrainImagePathBoxCell"][1][0] == "b/2.jpg" and d["TrainImagePathBoxCell"][1][1].tolist() == [5, 6, 7, 8]
    assert d["class_ids"].tolist() == [1.0, 2.0] and d["s"] == {"name": "q"} and d["e"] == []

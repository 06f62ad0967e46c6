"""Readers and writers under damaged, hostile or oversized input, and faults while writing.

Each test builds the bad file itself (from numpy/scipy/h5py/protobuf output with one defect) and
asserts the promise: a one-line rll_repro error naming the file, no allocation a header asks for,
no crash, and outputs that are written atomically with the umask's mode.
"""
from __future__ import annotations

import errno
import io
import os
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from rll_repro import cli, fileio, limits
from rll_repro.caffe import caffe_pb2
from rll_repro.caffe.weights import _blob_bytes, _varint, blob_to_array
from rll_repro.errors import DataError, FormatError, RLLReproError


def _npy_bytes(header: str, payload: bytes = b"") -> bytes:
    head = header.encode("latin-1")
    head += b" " * (-(len(head) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head + payload


def _cli(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


# -- the allocation limit ----------------------------------------------------------------------


def test_check_allocation_refuses_over_the_limit_and_the_env_var_moves_it(monkeypatch):
    assert limits.check_allocation((3, 4), 4, "x") == 12
    with pytest.raises(FormatError, match=r"big.npy: shape \(1099511627776, 4\) needs 16 TiB.*RLL_REPRO_MAX_BLOB_BYTES"):
        limits.check_allocation((1 << 40, 4), 4, "big.npy")
    monkeypatch.setenv("RLL_REPRO_MAX_BLOB_BYTES", "1K")
    with pytest.raises(FormatError, match="over the 1 KiB limit"):
        limits.check_allocation((300,), 4, "x")
    monkeypatch.setenv("RLL_REPRO_MAX_BLOB_BYTES", "20T")
    assert limits.check_allocation((1 << 40, 4), 4, "x") == 1 << 42
    monkeypatch.setenv("RLL_REPRO_MAX_BLOB_BYTES", "lots")
    with pytest.raises(RLLReproError, match="RLL_REPRO_MAX_BLOB_BYTES"):
        limits.max_blob_bytes()


@pytest.mark.parametrize("shape, what", [(range(33), "33 axes"), ((2, -1), "negative"), ((2.5,), "non-integer")])
def test_check_shape_applies_caffes_blob_rules(shape, what):
    with pytest.raises(FormatError, match=what):
        limits.check_shape(shape, "b")


# -- .npy / .npz ---------------------------------------------------------------------------------


def test_npy_header_claiming_terabytes_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.npy"
    path.write_bytes(_npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }", bytes(64)))
    with pytest.raises(FormatError, match=r"huge.npy: shape \(1000000, 1000000\) needs 3.64 TiB"):
        fileio.read_npy(path)
    # under the limit but more than the file holds: refused too (numpy would allocate, then fail)
    path.write_bytes(_npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (100000000,), }", bytes(64)))
    with pytest.raises(FormatError, match="truncated .npy data: .* needs 800000000 bytes, the file holds 64"):
        fileio.read_npy(path)


@pytest.mark.parametrize("header, what", [
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (3,", "not a Python literal"),  # numpy: TokenError
    ("{'descr': 'x9', 'fortran_order': False, 'shape': (3,), }", "is not a NumPy dtype"),
    ("{'descr': '|O', 'fortran_order': False, 'shape': (3,), }", "Python objects"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (-3,), }", "negative"),
    ("{'descr': '<f4', 'fortran_order': 2, 'shape': (3,), }", "fortran_order"),
    ("{'descr': 'f4,(', 'fortran_order': False, 'shape': (3,), }", "is not a NumPy dtype"),  # numpy: SyntaxError
])
def test_damaged_npy_header_is_one_format_error(tmp_path, header, what):
    path = tmp_path / "bad.npy"
    path.write_bytes(_npy_bytes(header, bytes(12)))
    with pytest.raises(FormatError, match=f"bad.npy: .*{what}"):
        fileio.read_npy(path)


def test_npy_round_trip_keeps_dtype_shape_and_fortran_order(tmp_path):
    a = np.arange(24, dtype=">i2").reshape(2, 3, 4)
    for name, array in (("c.npy", a), ("f.npy", np.asfortranarray(a)), ("s.npy", np.float64(3.5))):
        np.save(tmp_path / name, array)
        got = fileio.read_npy(tmp_path / name)
        assert got.dtype == np.asarray(array).dtype and np.array_equal(got, array)
    assert fileio.read_npy(tmp_path / "f.npy").flags.f_contiguous


def test_npz_with_a_corrupt_member_is_one_format_error_naming_the_file(tmp_path):
    good = tmp_path / "good.npz"
    np.savez_compressed(good, features=np.arange(4000, dtype=np.float32))
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the deflate stream of the data: zlib.error or a CRC mismatch
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"bad.npz: damaged .npz archive of arrays \(member 'features.npy'\)"):
        fileio.read_npz(bad)
    bad.write_bytes(good.read_bytes()[:-30])  # central directory cut: BadZipFile
    with pytest.raises(FormatError, match="bad.npz: damaged .npz archive"):
        fileio.read_npz(bad)


def test_npz_member_claiming_more_than_its_size_is_refused(tmp_path):
    path = tmp_path / "claim.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", _npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (50000000,), }", bytes(8)))
    with pytest.raises(FormatError, match=r"claim.npz: array 'x': truncated .npy data"):
        fileio.read_npz(path)


def test_load_array_reads_npy_npz_h5_and_refuses_damaged_ones(tmp_path):
    from rll_repro.eval.extract import load_array, save_features

    features = np.random.default_rng(0).random((5, 3), dtype=np.float32)
    for suffix in (".npy", ".npz", ".h5"):
        save_features(tmp_path / f"f{suffix}", features, np.arange(5))
        assert np.array_equal(load_array(tmp_path / f"f{suffix}"), features)
    (tmp_path / "t.npy").write_bytes((tmp_path / "f.npy").read_bytes()[:-7])
    with pytest.raises(FormatError, match="t.npy: truncated .npy data"):
        load_array(tmp_path / "t.npy")
    (tmp_path / "t.npz").write_bytes((tmp_path / "f.npz").read_bytes()[:-40])
    with pytest.raises(FormatError, match="t.npz: damaged .npz"):
        load_array(tmp_path / "t.npz")


# -- caffemodel blobs ------------------------------------------------------------------------------


@pytest.mark.parametrize("dims, what", [
    ([1] * 33, "33 axes"),
    ([4, -2], "negative dimension"),
    ([1 << 62, 1 << 62, 8], "has 2 values but its shape"),  # a wrapping int64 product would be 0
])
def test_blob_dims_are_checked_like_caffes_blob_reshape(dims, what):
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(dims)
    blob.data.extend([1.0, 2.0])
    with pytest.raises(FormatError, match=f"m.caffemodel: layer 'fc' blob 0: .*{what}"):
        blob_to_array(blob, "m.caffemodel: layer 'fc' blob 0")


def test_blob_with_unpacked_data_is_read():
    raw = b"".join(_varint((5 << 3) | 5) + np.float32(v).tobytes() for v in (1.5, 2.5, 3.5))
    blob = caffe_pb2.BlobProto()
    blob.ParseFromString(raw)
    blob.shape.dim.append(3)
    assert blob_to_array(blob).tolist() == [1.5, 2.5, 3.5]


@pytest.mark.parametrize("array", [np.array(["a", "b"]), np.array([1 + 2j]), np.array([b"x"])])
def test_non_numeric_array_cannot_become_a_blob(array):
    with pytest.raises(FormatError, match="w.npz: conv1/0: a .* array cannot be a Caffe blob"):
        _blob_bytes(array, where="w.npz: conv1/0")


def test_convert_refuses_non_numeric_arrays_naming_the_key(tmp_path, capsys):
    np.savez(tmp_path / "w.npz", **{"fc/0": np.array([["a", "b"]]), "fc/1": np.zeros(2)})
    code, err = _cli(["convert", str(tmp_path / "w.npz"), str(tmp_path / "w.pt")], capsys)
    assert code == 2 and "\n" not in err
    assert f"{tmp_path / 'w.npz'}: key 'fc/0' holds a <U1 array" in err


# -- MATLAB files ----------------------------------------------------------------------------------


def _v5_cell_bytes() -> bytes:
    import scipy.io

    cell = np.empty((2, 1), dtype=object)
    cell[0, 0], cell[1, 0] = "ab", np.arange(3.0)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"c": cell}, do_compression=False)
    return buffer.getvalue()


def test_v5_file_that_segfaults_scipy_is_a_format_error(tmp_path):
    """The char element's dimensions tag says 0 bytes: scipy 1.17's C reader crashes on it
    (SIGSEGV). Run in a child so that a crash fails this test instead of killing pytest."""
    data = _v5_cell_bytes()
    dims_1x2 = struct.pack("<4I", 5, 8, 1, 2)  # miINT32, 8 bytes, 1 x 2 (the 'ab' element)
    assert data.count(dims_1x2) == 1
    bad = tmp_path / "crash.mat"
    bad.write_bytes(data.replace(dims_1x2, struct.pack("<4I", 5, 0, 1, 2)))
    code = textwrap.dedent(f"""
        from rll_repro.errors import FormatError
        from rll_repro.matfile import loadmat
        try:
            loadmat({str(bad)!r})
        except FormatError as exc:
            print(exc)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"child died (signal {-run.returncode}): {run.stderr[-500:]}"
    assert "crash.mat: damaged MATLAB v5 file at byte" in run.stdout
    assert "dimensions element of 0 bytes" in run.stdout


def test_v5_structure_check_accepts_and_keeps_what_scipy_writes(tmp_path):
    from rll_repro.matfile import loadmat, savemat

    values = {"s": "text", "m": np.arange(6.0).reshape(2, 3), "c": ["a", np.ones((1, 2), np.float32)],
              "st": {"f": np.int32(3), "g": "x"}, "b": np.array([[True, False]]),
              "z": np.array([[1 + 2j]]), "e": np.zeros((0, 3))}
    import scipy.sparse

    values["sp"] = scipy.sparse.csc_matrix(np.array([[0, 1.0], [2.0, 0]]))
    savemat(tmp_path / "v.mat", values)
    got = loadmat(tmp_path / "v.mat")
    assert got["s"] == "text" and got["c"][0] == "a" and got["st"]["g"] == "x"
    assert np.array_equal(got["m"], values["m"]) and got["z"][0, 0] == 1 + 2j and got["e"].shape == (0, 3)
    assert (got["sp"] != values["sp"]).nnz == 0


def test_v5_compressed_element_stating_a_huge_size_is_refused(tmp_path):
    import zlib

    inner = struct.pack("<II", 14, 0x7FFFFFF8)  # a miMATRIX of 2 GiB ...
    payload = zlib.compress(inner + bytes(64))  # ... holding 64 bytes
    data = bytes(_v5_cell_bytes()[:128]) + struct.pack("<II", 15, len(payload)) + payload
    path = tmp_path / "bomb.mat"
    path.write_bytes(data)
    from rll_repro.matfile import loadmat

    with pytest.raises(FormatError, match="bomb.mat: damaged MATLAB v5 file at byte 128: compressed element inflates to"):
        loadmat(path)


def test_v73_attribute_stating_a_huge_size_is_refused(tmp_path):
    h5py = pytest.importorskip("h5py")
    from rll_repro.matfile import loadmat, savemat

    path = tmp_path / "a.mat"
    savemat(path, {"x": np.arange(3.0)}, version="v7.3")
    with h5py.File(path, "r+", libver="latest") as f:  # a new-style object header holds big attributes
        dataset = f.create_dataset("y", data=np.arange(3.0))
        dataset.attrs.create("MATLAB_class", np.zeros(200_000, dtype="S1"))
    with pytest.raises(FormatError, match=r"a.mat: variable 'y': attribute MATLAB_class states 200000 values"):
        loadmat(path)


def test_v73_damaged_group_index_is_a_format_error(tmp_path):
    pytest.importorskip("h5py")
    from rll_repro.matfile import loadmat, savemat

    path = tmp_path / "g.mat"
    savemat(path, {f"v{i}": np.full((2, 2), float(i)) for i in range(8)}, version="v7.3")
    data = bytearray(path.read_bytes())
    # overwrite the root group's symbol-table B-tree / local heap signatures: listing fails in h5py
    for signature in (b"TREE", b"HEAP", b"SNOD"):
        start = data.find(signature, 512)
        while start != -1:
            data[start:start + 4] = b"XXXX"
            start = data.find(signature, start + 4)
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="g.mat: "):
        loadmat(path)


@pytest.mark.parametrize("query_num, what", [
    (np.array([[np.nan]]), "query_num = nan"), (np.array([[-1.0]]), "between 0 and 3"),
    (np.array([[7.0]]), "between 0 and 3"), (np.array([[1.5]]), "whole number"),
    (np.zeros((0, 0)), "must be one number"), ("two", "must be one number"),
])
def test_image_list_checks_query_num(tmp_path, query_num, what):
    from rll_repro.data.lists import load_image_list
    from rll_repro.matfile import savemat

    path = tmp_path / "list.mat"
    savemat(path, {"TestImagePathBoxCell": ["a.jpg", "b.jpg", "c.jpg"], "class_ids": np.array([1.0, 1.0, 2.0]),
                   "query_num": query_num})
    with pytest.raises(DataError, match=f"list.mat: .*{what}"):
        load_image_list(path, "TestImagePathBoxCell")



# -- commands ----------------------------------------------------------------------------------


def test_inspect_shows_a_non_utf8_layer_name_as_escaped_text(tmp_path, capsys):
    net = caffe_pb2.NetParameter()
    layer = net.layer.add(name="ab", type="ReLU", bottom=["x"], top=["x"])
    del layer
    path = tmp_path / "m.caffemodel"
    path.write_bytes(net.SerializeToString().replace(b"ab", b"\xff\xfe"))
    assert cli.main(["inspect", str(path)]) == 0
    assert "\\xff\\xfe  ReLU" in capsys.readouterr().out
    assert cli.main(["inspect", "--json", str(path)]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["layers"][0]["name"] == "\\xff\\xfe"


FORWARD_NET = """name: "t"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
"""


@pytest.mark.parametrize("arrays, what", [
    ({"data": np.zeros((2, 5), np.float32)}, r"input 'data' has shape \(2, 5\), the net's input blob has shape \(2, 3\)"),
    ({"data": np.zeros((2, 3, 1, 1), np.float32)}, r"input 'data' has shape \(2, 3, 1, 1\)"),
    ({"data": np.array([["a", "b", "c"]] * 2)}, "data: a <U1 array"),
    ({"data": np.zeros((2, 3), np.float32), "topdiff/nope": np.zeros(1)}, "'topdiff/nope' names no blob"),
    ({"data": np.zeros((2, 3), np.float32), "topdiff/fc": np.zeros((3, 4))}, r"topdiff/fc has shape \(3, 4\)"),
])
def test_forward_checks_inputs_and_top_diffs_against_the_net(tmp_path, capsys, arrays, what):
    (tmp_path / "net.prototxt").write_text(FORWARD_NET)
    np.savez(tmp_path / "in.npz", **arrays)
    code, err = _cli(["forward", str(tmp_path / "net.prototxt"), "--inputs", str(tmp_path / "in.npz"),
                      "--backward", "--out", str(tmp_path / "out.npz")], capsys)
    assert code == 2 and "\n" not in err, err
    assert f"{tmp_path / 'in.npz'}: " in err
    import re

    assert re.search(what, err), err


def test_forward_accepts_another_batch_size(tmp_path, capsys):
    (tmp_path / "net.prototxt").write_text(FORWARD_NET)
    np.savez(tmp_path / "in.npz", data=np.ones((5, 3), np.float32))
    assert cli.main(["forward", str(tmp_path / "net.prototxt"), "--inputs", str(tmp_path / "in.npz"),
                     "--out", str(tmp_path / "out.npz")]) == 0
    assert fileio.read_npz(tmp_path / "out.npz")["blob/fc"].shape == (5, 4)


def test_prototxt_parse_error_does_not_echo_a_long_line(tmp_path, capsys):
    path = tmp_path / "long.prototxt"
    path.write_text('name: "x"\nlayer { name: ' + "a" * 8000 + " }\n")
    code, err = _cli(["inspect", str(path)], capsys)
    assert code == 2 and f"{path}:2:" in err and len(err) < 500


@pytest.mark.parametrize("policy", ['lr_policy: "poly" power: -1e30', 'lr_policy: "exp" gamma: 1e30',
                                    'lr_policy: "inv" gamma: -1 power: 0.5', 'lr_policy: "poly" power: -1'])
def test_inspect_lr_schedule_of_overflowing_or_undefined_rates(tmp_path, capsys, policy):
    """Caffe's float arithmetic gives inf or nan there; inspect shows that instead of an
    OverflowError/ZeroDivisionError traceback or a complex number."""
    path = tmp_path / "solver.prototxt"
    path.write_text(f'net: "n.prototxt"\nbase_lr: 0.1\nmax_iter: 1000\n{policy}\n')
    assert cli.main(["inspect", "--json", str(path)]) == 0
    import json

    rates = [rate for _, rate in json.loads(capsys.readouterr().out)["lr_schedule"]]
    assert rates[0] == pytest.approx(0.1) or np.isinf(rates[0])
    assert all(isinstance(r, float) for r in rates) and not all(np.isfinite(rates))


def test_eval_features_errors_name_the_feature_file(tmp_path, capsys):
    features = np.random.default_rng(1).random((6, 3), dtype=np.float32)
    features[2] = 0
    np.save(tmp_path / "f.npy", features)
    np.save(tmp_path / "l.npy", np.array([0, 0, 1, 1, 2, 2]))
    np.save(tmp_path / "s.npy", np.array([["x"] * 3] * 6))
    code, err = _cli(["eval-features", str(tmp_path / "f.npy"), str(tmp_path / "l.npy"), "--protocol", "cub",
                      "--out", str(tmp_path / "r.json")], capsys)
    assert code == 2 and err.endswith(f"{tmp_path / 'f.npy'}: row 2 has zero or non-finite norm (1 such rows); "
                                      "cannot L2-normalise without epsilon")
    code, err = _cli(["eval-features", str(tmp_path / "s.npy"), str(tmp_path / "l.npy"), "--protocol", "cub",
                      "--out", str(tmp_path / "r.json")], capsys)
    assert code == 2 and f"{tmp_path / 's.npy'}: features must be numbers" in err


# -- writing: faults, umask, temporaries, odd names --------------------------------------------------


@pytest.mark.parametrize("err_no", [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_write_faults_are_one_line_naming_the_output_and_exit_2(tmp_path, capsys, monkeypatch, err_no):
    np.savez(tmp_path / "w.npz", **{"fc/0": np.ones((2, 2), np.float32)})

    def failing_fsync(fd):
        raise OSError(err_no, os.strerror(err_no))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    out = tmp_path / "w.pt"
    code, err = _cli(["convert", str(tmp_path / "w.npz"), str(out)], capsys)
    assert code == 2 and err == f"rll-repro convert: error: {out}: {os.strerror(err_no)}"
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_write_fault_creating_the_temporary_names_the_output_not_the_temporary(tmp_path, capsys, monkeypatch):
    import tempfile

    def read_only(prefix, suffix, dir):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(dir, prefix + b"abcdefgh" + suffix))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    np.savez(tmp_path / "w.npz", **{"fc/0": np.ones(2, np.float32)})
    out = tmp_path / "out.npz"
    code, err = _cli(["convert", str(tmp_path / "w.npz"), str(out)], capsys)
    assert code == 2 and err == f"rll-repro convert: error: {out}: Read-only file system"


def test_an_error_about_another_file_inside_atomic_write_is_left_alone(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        with fileio.atomic_write(tmp_path / "out.bin") as handle:
            handle.write((tmp_path / "missing.txt").read_bytes())
    assert caught.value.filename == str(tmp_path / "missing.txt")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        assert fileio.current_umask() == umask
        fileio.atomic_write_bytes(tmp_path / "a.bin", b"x")
        fileio.atomic_write_text(tmp_path / "b.txt", "x")
        fileio.atomic_save_npy(tmp_path / "c.npy", np.zeros(2))
    finally:
        os.umask(old)
    for name in ("a.bin", "b.txt", "c.npy"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    host = fileio._HOST
    stale = tmp_path / f".model.caffemodel.{host}-{dead_pid}.abcd1234.tmp"
    alive = tmp_path / f".model.caffemodel.{host}-{os.getppid()}.abcd1234.tmp"
    other_host = tmp_path / f".model.caffemodel.otherhost{host}-{dead_pid}.abcd1234.tmp"
    unrelated = tmp_path / ".notes.tmp"
    for p in (stale, alive, other_host, unrelated):
        p.write_bytes(b"partial")
    fileio._swept_dirs.discard(os.fsencode(tmp_path))
    fileio.atomic_write_bytes(tmp_path / "new.bin", b"x")
    assert not stale.exists()
    assert alive.exists() and other_host.exists() and unrelated.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(
        p.name for p in (alive, other_host, unrelated))


def test_temporary_names_carry_host_and_pid(tmp_path):
    with fileio.atomic_write(tmp_path / "x.bin") as handle:
        names = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
        handle.write(b"1")
    assert len(names) == 1 and fileio._TMP_PATTERN.match(names[0])
    assert f"-{os.getpid()}." in names[0]


def test_atomic_write_takes_a_non_utf8_file_name(tmp_path):
    name = os.fsdecode(b"snap\xff\xfe")  # as argv holds it: surrogate escapes
    fileio.atomic_write_bytes(tmp_path / name / "model.caffemodel", b"abc")
    assert os.listdir(os.fsencode(tmp_path)) == [b"snap\xff\xfe"]
    assert (tmp_path / name / "model.caffemodel").read_bytes() == b"abc"


def test_cli_prints_a_non_utf8_output_name_without_crashing(tmp_path):
    np.savez(tmp_path / "w.npz", **{"fc/0": np.ones(2, np.float32)})
    out = os.fsencode(tmp_path) + b"/w\xff.pt"
    run = subprocess.run([sys.executable, "-m", "rll_repro", "convert", os.fsencode(tmp_path / "w.npz"), out],
                         capture_output=True, timeout=120, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert run.returncode == 0, run.stderr[-800:]
    assert b"wrote " + out in run.stdout and os.path.exists(out)


def test_digits_full_disk_leaves_no_half_written_test_features(tmp_path, monkeypatch):
    """A disk that fills up while test_features.npy is written leaves no such file (nor a
    temporary), and the error names it. np.save is made to write 10 bytes, then fail."""
    from rll_repro.recipes import digits

    real_save = np.save

    def full_disk_save(file, arr, *args, **kwargs):
        name = os.fspath(file) if isinstance(file, (str, os.PathLike)) else getattr(file, "name", "")
        target = os.readlink(f"/proc/self/fd/{name}") if isinstance(name, int) else str(name)
        if "test_features" not in target:
            return real_save(file, arr, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)):
            with open(file, "wb") as handle:
                handle.write(b"\x93NUMPY\x01\x00v\x00")
        else:
            file.write(b"\x93NUMPY\x01\x00v\x00")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", full_disk_save)
    with pytest.raises(OSError) as caught:
        digits.run(tmp_path, max_iter=1, progress=False)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "test_features.npy")
    assert not (tmp_path / "test_features.npy").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]

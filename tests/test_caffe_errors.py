"""Bad input gives one line naming the file (and line:column for text) and what is wrong; CLI exit 2."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from rll_repro.caffe import caffe_pb2
from rll_repro.caffe import io as caffe_io
from rll_repro.caffe.weights import array_to_blob
from rll_repro.errors import FormatError

READERS = {
    "net_prototxt": caffe_io.read_net_prototxt,
    "solver_prototxt": caffe_io.read_solver_prototxt,
    "caffemodel": caffe_io.read_caffemodel,
    "solverstate": caffe_io.read_solverstate,
    "binaryproto": caffe_io.read_binaryproto,
}


def _small_caffemodel() -> bytes:
    net = caffe_pb2.NetParameter(name="tiny")
    layer = net.layer.add(name="fc", type="InnerProduct", bottom=["data"], top=["fc"])
    layer.blobs.add().CopyFrom(array_to_blob(np.arange(40, dtype=np.float32).reshape(4, 10)))
    layer.blobs.add().CopyFrom(array_to_blob(np.zeros(4, np.float32)))
    return net.SerializeToString()


def _solverstate() -> bytes:
    state = caffe_pb2.SolverState(iter=3, learned_net="x.caffemodel", current_step=0)
    state.history.add().CopyFrom(array_to_blob(np.ones(3)))
    return state.SerializeToString()


def _one_line_error(reader, path, match):
    with pytest.raises(FormatError) as info:
        reader(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert match in message, message
    return message


@pytest.mark.parametrize("kind", sorted(READERS))
def test_empty_file(kind, tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    _one_line_error(READERS[kind], path, "empty file")


def test_truncated_caffemodel(tmp_path):
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(_small_caffemodel()[:-37])
    _one_line_error(caffe_io.read_caffemodel, path, "truncated")


def test_truncated_real_caffemodel(shared, tmp_path):
    data = shared("oracle", "rll", "train_run_digits", "init.caffemodel").read_bytes()
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(data[: len(data) // 2])
    _one_line_error(caffe_io.read_caffemodel, path, "truncated")


@pytest.mark.parametrize("content,what", [
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "a PNG image"),
    (b"\x89HDF\r\n\x1a\n" + b"\0" * 100, "an HDF5 file"),
    (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "not a Caffe"),
])
def test_non_caffe_binary(content, what, tmp_path):
    path = tmp_path / "model.caffemodel"
    path.write_bytes(content)
    _one_line_error(caffe_io.read_caffemodel, path, what)


def test_solverstate_given_as_caffemodel(tmp_path):
    path = tmp_path / "snap.caffemodel"
    path.write_bytes(_solverstate())
    _one_line_error(caffe_io.read_caffemodel, path, "this is a solverstate, not a caffemodel")


def test_caffemodel_given_as_solverstate(tmp_path):
    path = tmp_path / "m.solverstate"
    path.write_bytes(_small_caffemodel())
    _one_line_error(caffe_io.read_solverstate, path, "this is a caffemodel, not a solverstate")


def test_caffemodel_given_as_net_prototxt(tmp_path):
    path = tmp_path / "m.prototxt"
    path.write_bytes(_small_caffemodel())
    _one_line_error(caffe_io.read_net_prototxt, path, "this is a binary caffemodel, not a text net prototxt")


def test_prototxt_given_as_caffemodel(tmp_path):
    path = tmp_path / "net.caffemodel"
    path.write_text('name: "n"\nlayer { name: "r" type: "ReLU" bottom: "x" top: "x" }\n')
    _one_line_error(caffe_io.read_caffemodel, path, "text file (a prototxt?), not a binary caffemodel")


def test_solver_prototxt_given_as_net(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "train.prototxt"\nbase_lr: 0.01\n')
    _one_line_error(caffe_io.read_net_prototxt, path, "this is a solver prototxt, not a net prototxt")


def test_net_prototxt_given_as_solver(tmp_path):
    path = tmp_path / "train.prototxt"
    path.write_text('layer { name: "r" type: "ReLU" }\n')
    _one_line_error(caffe_io.read_solver_prototxt, path, "this is a net prototxt, not a solver prototxt")


def test_unknown_field_names_line_and_column(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text('name: "n"\nlayer {\n  name: "r"\n  type: "ReLU"\n  relu_parm { negative_slope: 0.1 }\n}\n')
    message = _one_line_error(caffe_io.read_net_prototxt, path, 'no field named "relu_parm"')
    assert message.startswith(f"{path}:5:3: ")


def test_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text('name: "n"\nlayer {\n  name: "r"\n  type: "ReLU"\n')
    message = _one_line_error(caffe_io.read_net_prototxt, path, "")
    assert message.startswith(f"{path}:") and "Expected" in message


def test_cpp_comment_gets_a_hint(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('base_lr: 0.01  // the learning rate\n')
    message = _one_line_error(caffe_io.read_solver_prototxt, path, "comments start with '#', not '//'")
    assert message.startswith(f"{path}:1:")


def test_non_utf8_text_names_line_and_column(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_bytes('name: "n"\n# 注释\n'.encode("gbk"))  # 注 = d7 a2 happens to be valid UTF-8; 释 = ca cd is not
    _one_line_error(caffe_io.read_net_prototxt, path, f"{path}:2:5: not UTF-8 text (byte 0xca)")


def test_text_with_no_fields(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text("# nothing here\n\n")
    _one_line_error(caffe_io.read_net_prototxt, path, "contains no fields")


def test_hash_comments_and_a_bom_are_accepted(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_bytes('\ufeff# a comment\nname: "n"  # trailing\n'.encode("utf-8"))
    assert caffe_io.read_net_prototxt(path).name == "n"


# -- CLI -----------------------------------------------------------------------------------------


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "rll_repro", *map(str, args)], capture_output=True, text=True)


def test_cli_inspect_bad_file_exits_2_with_one_line(tmp_path):
    path = tmp_path / "model.caffemodel"
    path.write_bytes(_small_caffemodel()[:-20])
    result = _cli("inspect", path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"rll-repro inspect: error: {path}: ")


def test_cli_inspect_missing_file_exits_2(tmp_path):
    result = _cli("inspect", tmp_path / "nope.caffemodel")
    assert result.returncode == 2 and "No such file" in result.stderr and "Traceback" not in result.stderr


def test_cli_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "empty.caffemodel"
    path.write_bytes(b"")
    result = _cli("inspect", "--debug", path)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_cli_convert_unknown_extension_exits_2(tmp_path):
    path = tmp_path / "m.caffemodel"
    path.write_bytes(_small_caffemodel())
    result = _cli("convert", path, tmp_path / "m.h5")
    assert result.returncode == 2 and "cannot convert to '.h5'" in result.stderr


def test_cli_convert_npz_to_caffemodel_needs_net(tmp_path):
    np.savez(tmp_path / "w.npz", **{"fc/0": np.zeros((2, 2))})
    result = _cli("convert", tmp_path / "w.npz", tmp_path / "m.caffemodel")
    assert result.returncode == 2 and "needs --net" in result.stderr


def test_cli_convert_rejects_bad_npz_keys(tmp_path):
    np.savez(tmp_path / "w.npz", fc=np.zeros((2, 2)))
    net = tmp_path / "net.prototxt"
    net.write_text('layer { name: "fc" type: "InnerProduct" }\n')
    result = _cli("convert", tmp_path / "w.npz", tmp_path / "m.caffemodel", "--net", net)
    assert result.returncode == 2 and "is not '<layer name>/<blob index>'" in result.stderr


def test_cli_convert_rejects_keys_for_layers_the_net_lacks(tmp_path):
    np.savez(tmp_path / "w.npz", **{"fc2/0": np.zeros((2, 2))})
    net = tmp_path / "net.prototxt"
    net.write_text('layer { name: "fc" type: "InnerProduct" }\n')
    result = _cli("convert", tmp_path / "w.npz", tmp_path / "m.caffemodel", "--net", net)
    assert result.returncode == 2 and "has no layer named 'fc2'" in result.stderr


def test_caffemodel_starting_with_many_text_like_layers_is_still_binary(tmp_path):
    """Kind detection looks at NUL bytes / UTF-8 validity of the whole file, not at its first bytes."""
    net = caffe_pb2.NetParameter(name="n")
    for i in range(300):
        net.layer.add(name=f"relu_layer_number_{i}", type="ReLU", bottom=[f"blob_{i}"], top=[f"blob_{i + 1}"])
    net.layer.add(name="fc", type="InnerProduct").blobs.add().CopyFrom(array_to_blob(np.ones((3, 3))))
    path = tmp_path / "m.caffemodel"
    path.write_bytes(net.SerializeToString())
    assert caffe_io.detect_kind(path) == "caffemodel"
    assert len(caffe_io.read_caffemodel(path).layer) == 301


def test_cli_debug_before_the_verb_shows_the_traceback_too(tmp_path):
    path = tmp_path / "empty.caffemodel"
    path.write_bytes(b"")
    result = _cli("--debug", "inspect", path)
    assert result.returncode != 0 and "Traceback" in result.stderr and "FormatError" in result.stderr

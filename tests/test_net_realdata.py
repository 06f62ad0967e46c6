"""Third-party Caffe files (../shared/realdata, read in place) through the net: an old V1 LeNet
(V1 prototxt, legacy 4-D blobs) and a current one; values are checked exactly where no arithmetic
is involved (weights), else for the rules a forward pass must keep (probabilities sum to 1)."""
from __future__ import annotations

import numpy as np

from rll_repro.caffe.io import read_caffemodel
from rll_repro.caffe.weights import blob_to_array
from rll_repro.net import Net


def test_v1_lenet_with_legacy_4d_blobs_loads_and_runs(shared, tmp_path):
    folder = shared("realdata", "caffe", "lenet_v1_pl8787")
    net = Net(folder / "lenet.prototxt", weights=folder / "lenet_iter_10000.caffemodel", phase="test")
    assert net.inputs == ["data"] and net.blobs["data"].shape == (64, 1, 28, 28)
    source = {layer.name: layer for layer in read_caffemodel(folder / "lenet_iter_10000.caffemodel").layer}
    assert net.params["ip1"][0].shape == (500, 800)  # stored as 1x1x500x800
    for name, blobs in net.params.items():
        for blob, stored in zip(blobs, source[name].blobs):
            np.testing.assert_array_equal(blob.data.ravel(), blob_to_array(stored).ravel())
    x = np.random.default_rng(0).uniform(0, 1, (64, 1, 28, 28)).astype(np.float32)
    out = net.forward(data=x)
    prob = out[net.outputs[0]]
    assert prob.shape == (64, 10)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)
    path = tmp_path / "lenet.caffemodel"
    net.save(path)
    again = Net(folder / "lenet.prototxt", weights=path, phase="test")
    np.testing.assert_array_equal(again.forward(data=x)[net.outputs[0]], prob)


def test_current_format_lenet_deploy_runs(shared):
    folder = shared("realdata", "caffe", "lenet_v2_ahmdtaha")
    net = Net(folder / "mnist_deploy.prototxt", weights=folder / "lenet_iter_10000.caffemodel", phase="test")
    x = np.zeros((3, 1, 28, 28), np.float32)
    out = net.forward(data=x)
    (name,) = net.outputs
    assert out[name].shape[0] == 3

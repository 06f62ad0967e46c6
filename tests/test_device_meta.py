"""Device plumbing without a GPU: the ``meta`` device stands in for one.

A meta tensor has no data: an op mixing it with a CPU tensor raises ("... is not on the expected
device meta"), and any host read (``.item()``, ``bool(t)``, ``.cpu()``) raises. So a forward +
backward of the original nets, a solver step of every type and the losses on ``device='meta'``
prove that every tensor the engine, the layers and the solver make lives on the net's device and
that a training step reads nothing back to the host. Fake ``cuda`` tensors
(``FakeTensorMode``) run the code paths taken only for ``cuda`` devices (forward only: the fake
backward needs a CUDA context).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rll_repro
from rll_repro.caffe import caffe_pb2
from rll_repro.device import DeviceError, resolve_device
from rll_repro.net import Net

ROOT = Path(__file__).resolve().parents[1]
SOP_TRAIN = ROOT / "prototxt/rll/sop/train.prototxt"
OSM_CUB_TRAIN = ROOT / "prototxt/osm_caa/cub/train.prototxt"
DIGITS_SOLVER = ROOT / "prototxt/digits/solver.prototxt"
META = torch.device("meta")


def _batch(net, device):
    """Inputs of the net's declared shapes on ``device`` (values do not exist on meta/fake devices)."""
    return {name: torch.empty(net.blob_shapes[name], device=device) for name in net.inputs}


@pytest.fixture(scope="module")
def sop_meta():
    return Net(str(SOP_TRAIN), phase="train", device="meta")


@pytest.fixture(scope="module")
def osm_meta():
    return Net(str(OSM_CUB_TRAIN), phase="train", device="meta")


def test_meta_device_is_strict_about_mixing_and_host_reads():
    """The premise of this file: meta tensors refuse CPU partners and host reads."""
    m = torch.zeros(3, device=META)
    with pytest.raises(RuntimeError, match="expected device"):
        torch.zeros(3) + m
    with pytest.raises(RuntimeError):
        m.sum().item()
    with pytest.raises(RuntimeError):
        bool(m.sum() > 0)


@pytest.mark.parametrize("which", ["sop", "osm_cub"])
def test_original_train_net_runs_forward_and_backward_on_meta(which, sop_meta, osm_meta):
    net = sop_meta if which == "sop" else osm_meta
    assert net.device == META
    assert all(p.device == META for p in net.learnable_params)
    assert all(p.grad is None or p.grad.device == META for p in net.learnable_params)
    net.clear_param_diffs()
    out = net(**_batch(net, META))
    assert set(net.loss_tops) <= set(out)
    assert all(t.device == META for t in out.values())
    net.backward_losses()
    trained = [p for p in net.learnable_params if p.requires_grad]
    assert trained and all(p.grad is not None and p.grad.device == META for p in trained)
    assert net.loss_tensor.device == META


def test_buffers_and_generators_live_on_the_net_device(sop_meta):
    for layer in sop_meta.layers:
        for name, buf in layer.named_buffers():
            assert buf.device == META, f"{layer.layer_name}.{name}"
        for p in layer.parameters():
            assert p.device == META


def _digits_solver(solver_type: str):
    param = caffe_pb2.SolverParameter()
    from rll_repro.caffe import io as caffe_io

    param.CopyFrom(caffe_io.read_solver_prototxt(str(DIGITS_SOLVER)))
    param.net = str(DIGITS_SOLVER.parent / Path(param.net).name)
    param.type = solver_type
    param.display = 0
    param.snapshot = 0
    param.ClearField("test_iter")
    if solver_type in ("AdaGrad", "RMSProp"):
        param.momentum = 0.0
    if solver_type == "Adam":
        param.momentum, param.momentum2 = 0.9, 0.999
    param.clip_gradients = 10.0  # the clipping path runs on the device too
    return rll_repro.get_solver(param, device="meta")


@pytest.mark.parametrize("solver_type", ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_one_solver_step_on_meta_reads_nothing_back_to_the_host(solver_type):
    """On meta any host read raises: a step completing proves Solver.step has no host sync."""
    solver = _digits_solver(solver_type)
    assert solver.net.device == META and solver.check_finite == "display"
    batch = {name: torch.empty(solver.net.blob_shapes[name], device=META) for name in solver.net.inputs}
    solver.step(2, batches=lambda it: batch)
    assert solver.iter == 2
    assert all(h.device == META for h in solver.history)
    with pytest.raises(RuntimeError):  # the logged loss is the one host read, outside the step
        solver.last_loss


def test_standalone_losses_run_on_meta():
    from rll_repro.losses import OSMCAALoss, RankedListLoss

    emb = torch.empty(12, 8, device=META, requires_grad=True)
    labels = torch.empty(12, device=META)
    RankedListLoss()(emb, labels).backward()
    assert emb.grad.device == META
    emb.grad = None
    OSMCAALoss()(emb, labels, torch.empty(12, device=META)).backward()
    assert emb.grad.device == META


@pytest.mark.parametrize("prototxt", [SOP_TRAIN, OSM_CUB_TRAIN], ids=["sop", "osm_cub"])
def test_forward_on_fake_cuda_tensors(prototxt):
    """Code paths taken only for cuda devices (pinned, non-blocking input copies; no label checks;
    the device-side SoftmaxWithLoss count) run on fake cuda tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        net = Net(str(prototxt), phase="train", device="cuda")
        assert net.device.type == "cuda"
        with torch.no_grad():
            out = net(**_batch(net, torch.device("cuda")))
        assert all(t.device.type == "cuda" for t in out.values())


def test_unknown_or_missing_devices_are_one_line_errors():
    with pytest.raises(DeviceError, match="unknown device 'gpu7'"):
        resolve_device("gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda")
        assert resolve_device(None) == torch.device("cpu")


def test_solver_mode_and_device_id_pick_the_device_when_none_is_given():
    from rll_repro.device import solver_device

    p = caffe_pb2.SolverParameter()
    p.solver_mode = caffe_pb2.SolverParameter.CPU
    assert solver_device(p) == torch.device("cpu")
    p.solver_mode = caffe_pb2.SolverParameter.GPU
    p.device_id = 0
    expected = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    assert solver_device(p) == expected
    assert solver_device(p, "meta") == META  # an explicit device wins

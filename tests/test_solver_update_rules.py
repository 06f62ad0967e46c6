"""Caffe's update rules (SGDSolver::ApplyUpdate and subclasses) on a tiny fake net.

The reference is a slow numpy float32 transcription of Caffe's CPU code (cblas scal/axpy order of
operations). cblas_saxpy is a fused multiply-add (OpenBLAS's AVX2 kernels, and torch's ``add(x, alpha=a)``), so
the transcription uses FMA for every axpy. Tolerance rtol 1e-6 (a few ulp): the fake gradient
cos(k*w) feeds rounding differences back, and sqrt/div may differ in the last bit; a learning rate
outside the history, decay after the rate, or normalisation after clipping move results by far more.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from rll_repro.caffe import caffe_pb2
from rll_repro.errors import TrainingError
from rll_repro.solver import get_solver

f32 = np.float32


class FakeNet:
    """Two params with lr/decay multipliers; gradient = cos(k*w) + 0.1*k (deterministic, non-trivial)."""

    def __init__(self, lr=(1.0, 10.0), decay=(1.0, 0.5), shapes=((3, 4), (5,))):
        g = torch.Generator().manual_seed(0)
        self.learnable_params = [nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
        for p in self.learnable_params:
            p.grad = torch.zeros_like(p.data)
        self.params_lr = list(lr)
        self.params_weight_decay = list(decay)
        self.learnable_param_names = [f"layer{i}/0" for i in range(len(shapes))]
        self.layers = []
        self.calls = 0
        self.loss_value = 0.5

    def clear_param_diffs(self):
        for p in self.learnable_params:
            p.grad.zero_()

    def forward_backward(self):
        self.calls += 1
        ws = [p.detach().numpy() for p in self.learnable_params]
        for p, g in zip(self.learnable_params, fake_grads(ws, self.calls)):
            p.grad.add_(torch.from_numpy(g))
        return self.loss_value


def axpy(a, x, y):
    """cblas_saxpy y += a*x as OpenBLAS's AVX2 kernel computes it: one fused multiply-add (the exact
    product of two floats fits a double, so rounding the double sum to float is the FMA result)."""
    y[...] = (y.astype(np.float64) + np.float64(f32(a)) * x.astype(np.float64)).astype(f32)


def fake_grads(ws, k):
    return [(np.cos(f32(k) * w).astype(f32) + f32(0.1 * k)).astype(f32) for w in ws]


def solver_param(**kw):
    p = caffe_pb2.SolverParameter()
    p.base_lr = 0.1
    p.lr_policy = "fixed"
    p.max_iter = 10
    for k, v in kw.items():
        if isinstance(v, list):
            getattr(p, k).extend(v)
        else:
            setattr(p, k, v)
    return p


def reference_run(param, net_lr, net_decay, w0, steps):
    """Caffe's SGD-family update, transcribed op by op in float32 numpy."""
    from rll_repro.lr_policy import learning_rate

    ws = [w.copy() for w in w0]
    n = len(ws)
    kind = param.type
    hist = [np.zeros_like(w) for w in ws] * (2 if kind in ("Adam", "AdaDelta") else 1)
    hist = [h.copy() for h in hist]
    calls, cs = 0, 0
    for it in range(steps):
        diffs = [np.zeros_like(w) for w in ws]
        for _ in range(param.iter_size):
            calls += 1
            for d, g in zip(diffs, fake_grads(ws, calls)):
                d += g
        rate, cs = learning_rate(param, it, cs)
        rate = f32(rate)
        if param.clip_gradients >= 0:
            sumsq = f32(0)
            for d in diffs:
                sumsq = f32(sumsq + f32(np.dot(d.ravel(), d.ravel())))
            l2 = f32(np.sqrt(sumsq))
            if l2 > f32(param.clip_gradients):
                for d in diffs:
                    d *= f32(f32(param.clip_gradients) / l2)
        m = f32(param.momentum)
        for i in range(n):
            d, w = diffs[i], ws[i]
            if param.iter_size != 1:
                d *= f32(f32(1) / f32(param.iter_size))
            decay = f32(f32(param.weight_decay) * f32(net_decay[i]))
            if decay:
                axpy(decay, np.sign(w).astype(f32) if param.regularization_type == "L1" else w, d)
            lr = f32(rate * f32(net_lr[i]))
            if kind == "SGD":
                hist[i] *= m
                axpy(lr, d, hist[i])
                d[...] = hist[i]
            elif kind == "Nesterov":
                u = hist[i].copy()
                hist[i] *= m
                axpy(lr, d, hist[i])
                u *= -m
                axpy(f32(1) + m, hist[i], u)
                d[...] = u
            elif kind == "AdaGrad":
                hist[i] += d * d
                u = (np.sqrt(hist[i]) + f32(param.delta)).astype(f32)
                d[...] = lr * (d / u)
            elif kind == "RMSProp":
                rd = f32(param.rms_decay)
                hist[i] *= rd
                axpy(f32(1) - rd, d * d, hist[i])
                u = (np.sqrt(hist[i]) + f32(param.delta)).astype(f32)
                d[...] = lr * (d / u)
            elif kind == "AdaDelta":
                hg, hu = hist[i], hist[n + i]
                hg *= m
                axpy(f32(1) - m, d * d, hg)
                u = np.sqrt((hu + f32(param.delta)) / (hg + f32(param.delta))).astype(f32)
                d *= u
                hu *= m
                axpy(f32(1) - m, d * d, hu)
                d *= lr
            elif kind == "Adam":
                b1, b2 = m, f32(param.momentum2)
                mm, vv = hist[i], hist[n + i]
                t = it + 1
                corr = f32(math.sqrt(1 - float(b2) ** t) / (1 - float(b1) ** t))
                mm *= b1
                axpy(f32(1) - b1, d, mm)
                vv *= b2
                axpy(f32(1) - b2, d * d, vv)
                u = (mm / (np.sqrt(vv) + f32(param.delta))).astype(f32)
                d[...] = f32(lr * corr) * u
            w -= d
    return ws, hist


def run_ours(param, steps, **net_kw):
    net = FakeNet(**net_kw)
    w0 = [p.detach().numpy().copy() for p in net.learnable_params]
    solver = get_solver(param, net=net)
    solver.step(steps)
    return net, solver, w0


CASES = {
    "sgd_l2": dict(type="SGD", momentum=0.9, weight_decay=0.01),
    "sgd_l1": dict(type="SGD", momentum=0.9, weight_decay=0.01, regularization_type="L1"),
    "sgd_itersize3": dict(type="SGD", momentum=0.8, weight_decay=0.001, iter_size=3),
    "sgd_clip": dict(type="SGD", momentum=0.9, weight_decay=0.0005, clip_gradients=0.5, iter_size=2),
    "nesterov_exp": dict(type="Nesterov", momentum=0.9, weight_decay=0.0002, lr_policy="exp", gamma=0.9),
    "adagrad": dict(type="AdaGrad", weight_decay=0.001),
    "rmsprop": dict(type="RMSProp", weight_decay=0.001, rms_decay=0.95),
    "adadelta": dict(type="AdaDelta", momentum=0.95, delta=1e-6, weight_decay=0.001, base_lr=1.0),
    "adam": dict(type="Adam", momentum=0.9, momentum2=0.999, weight_decay=0.0001, base_lr=0.01),
    "sgd_multistep": dict(type="SGD", momentum=0.9, lr_policy="multistep", gamma=0.2, stepvalue=[2, 4]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_update_matches_caffe_transcription(case):
    param = solver_param(**CASES[case])
    net, solver, w0 = run_ours(param, 6)
    ref_w, ref_h = reference_run(param, net.params_lr, net.params_weight_decay, w0, 6)
    for ours, ref in zip(net.learnable_params, ref_w):
        np.testing.assert_allclose(ours.detach().numpy(), ref, rtol=1e-6, atol=1e-6)  # O(1) params: a few ulp
    for ours, ref in zip(solver.history, ref_h):
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=1e-7)
    assert solver.iter == 6


def test_learning_rate_is_inside_the_momentum_history():
    # after 2 steps with a rate change, h = m*(lr0*g0) + lr1*g1 (Caffe), not lr1*(m*g0 + g1) (torch.optim)
    param = solver_param(type="SGD", momentum=0.9, lr_policy="multistep", gamma=0.1, stepvalue=[1])
    net, solver, w0 = run_ours(param, 2, decay=(0.0, 0.0))
    g = [fake_grads(w0, 1)[0]]
    w1 = w0[0] - f32(0.1) * g[0]
    g1 = fake_grads([w1, w0[1]], 2)[0]
    h = f32(0.9) * (f32(0.1) * g[0]) + f32(f32(0.1) * f32(0.1)) * g1
    np.testing.assert_allclose(solver.history[0].numpy(), h, rtol=1e-5)


def test_weight_decay_is_added_before_the_rate_and_uses_decay_mult():
    param = solver_param(type="SGD", momentum=0.0, weight_decay=0.5)
    net, solver, w0 = run_ours(param, 1, decay=(0.0, 2.0))
    g = fake_grads(w0, 1)
    np.testing.assert_allclose(net.learnable_params[0].detach().numpy(), w0[0] - f32(0.1) * g[0], rtol=1e-6)
    expected = w0[1] - f32(1.0) * (g[1] + f32(1.0) * w0[1])  # lr_mult 10 -> 1.0; decay 0.5*2
    np.testing.assert_allclose(net.learnable_params[1].detach().numpy(), expected, rtol=1e-6, atol=1e-7)


def test_l1_uses_sign_of_weights_with_sign_zero_zero():
    net = FakeNet(decay=(1.0, 1.0))
    with torch.no_grad():
        net.learnable_params[1][:] = torch.tensor([0.0, 2.0, -3.0, 0.0, 1.0])
    param = solver_param(type="SGD", momentum=0.0, weight_decay=0.25, regularization_type="L1", base_lr=1.0)
    net.params_lr = [1.0, 1.0]
    solver = get_solver(param, net=net)
    w0 = net.learnable_params[1].detach().numpy().copy()
    solver.step(1)
    g = fake_grads([w0], 1)[0]
    np.testing.assert_allclose(net.learnable_params[1].detach().numpy(),
                               w0 - (g + f32(0.25) * np.sign(w0)), rtol=1e-6)


def test_clip_uses_global_norm_before_iter_size_normalisation():
    param = solver_param(type="SGD", momentum=0.0, clip_gradients=1.0, iter_size=2, base_lr=1.0)
    net, solver, w0 = run_ours(param, 1, lr=(1.0, 1.0), decay=(0.0, 0.0))
    g = [a + b for a, b in zip(fake_grads(w0, 1), fake_grads(w0, 2))]
    norm = math.sqrt(sum(float((x.astype(np.float64) ** 2).sum()) for x in g))
    assert norm > 1.0
    for p, w, x in zip(net.learnable_params, w0, g):
        np.testing.assert_allclose(p.detach().numpy(), w - x / norm / 2, rtol=1e-5, atol=1e-7)


def test_iter_size_runs_forward_backward_per_sub_iteration_and_averages_loss():
    param = solver_param(type="SGD", momentum=0.9, iter_size=3)
    net, solver, _ = run_ours(param, 2)
    assert net.calls == 6 and solver.iter == 2 and solver.last_loss == pytest.approx(0.5)


def test_adagrad_refuses_momentum_like_caffe():
    with pytest.raises(TrainingError, match="AdaGrad needs momentum 0"):
        get_solver(solver_param(type="AdaGrad", momentum=0.9), net=FakeNet())


def test_unknown_solver_type_is_a_one_line_training_error():
    with pytest.raises(TrainingError, match="unknown type 'LBFGS'"):
        get_solver(solver_param(type="LBFGS"), net=FakeNet())


def test_deprecated_solver_type_enum_selects_the_solver():
    p = solver_param(momentum=0.9)
    p.ClearField("type")
    p.solver_type = caffe_pb2.SolverParameter.NESTEROV
    assert type(get_solver(p, net=FakeNet())).__name__ == "NesterovSolver"


def test_smoothed_loss_window_restarts_each_step_call():
    param = solver_param(type="SGD", average_loss=5)
    net = FakeNet()
    solver = get_solver(param, net=net)
    net.loss_value = 1.0
    solver.step(2)
    net.loss_value = 3.0
    solver.step(1)
    assert solver.smoothed_loss == 3.0  # Caffe clears losses_ at every Step() call


@pytest.mark.parametrize("case", ["sgd_l2", "sgd_l1", "sgd_itersize3", "nesterov_exp", "adam"])
def test_sgd_family_is_bitwise_equal_to_the_fma_transcription(case):
    param = solver_param(**CASES[case])
    net, solver, w0 = run_ours(param, 6)
    ref_w, _ = reference_run(param, net.params_lr, net.params_weight_decay, w0, 6)
    for ours, ref in zip(net.learnable_params, ref_w):
        np.testing.assert_array_equal(ours.detach().numpy(), ref)
